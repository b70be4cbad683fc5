"""`medseg evaluate --pred PRED --ref REF`: metrics per case and class, reports, plots, MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    pred: Annotated[Path, typer.Option("--pred", help="Predicted label map, or a folder of them (one file per case).")],
    ref: Annotated[Path, typer.Option("--ref", help="Reference label map, or a folder of them; cases matched by file name.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV to write; the JSON summary and plots go beside it.")] = Path("metrics.csv"),
    tolerance_mm: Annotated[float, typer.Option("--tolerance-mm", help="Tolerance of surface Dice and boundary F1, in mm.")] = 1.0,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Labels to score, e.g. '1,2' (default: every label present).")] = None,
    count_empty: Annotated[bool, typer.Option("--count-empty", help="Count labels absent from both prediction and reference (Dice 1, HD95 0) in the means; by default they are left out, as in nnU-Net.")] = False,
    distance_penalty_mm: Annotated[Optional[float], typer.Option("--distance-penalty-mm", min=0.0, help="HD95/ASSD of a missed or false structure, in mm (default: the image's diagonal; BraTS uses 374).")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of scans (ID.nii.gz or ID_0000.nii.gz) to draw the overlays on.")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Log into this existing MLflow run: a run id, or a model bundle folder (its training run).")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment of the new run (default: the dataset's name, else medseg-evaluate).")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Workdir whose tracking store to use (default: MLFLOW_TRACKING_URI, else the workdir of a --run bundle; otherwise nothing is logged).")] = None,
    instances: Annotated[bool, typer.Option("--instances", help="Score objects instead of voxels: PQ, RQ, SQ, lesion-wise Dice/HD95, detection precision/recall, FP/FN volume (see --protocol).")] = False,
    protocol: Annotated[str, typer.Option("--protocol", help="With --instances: panoptic, brats2023 (lesion-wise, the challenge's rules) or autopet (FP/FN volume).")] = "panoptic",
    things: Annotated[Optional[str], typer.Option("--things", help="With --instances: the countable label values, e.g. '1,2' (default: every label).")] = None,
    matching: Annotated[str, typer.Option("--matching", help="With --instances: threshold (IoU above --iou-threshold, greedy) or hungarian.")] = "threshold",
    iou_threshold: Annotated[float, typer.Option("--iou-threshold", help="With --instances: IoU a match must exceed.")] = 0.5,
    connectivity: Annotated[int, typer.Option("--connectivity", help="With --instances: 6, 18 or 26, for objects of semantic label maps.")] = 26,
    regions: Annotated[Optional[str], typer.Option("--regions", help="With --protocol brats2023: unions of labels, e.g. WT=1+2+3,TC=1+3,ET=3.")] = None,
    brats_challenge: Annotated[str, typer.Option("--brats-challenge", help="With --protocol brats2023: GLI, SSA, PED (dilation 3, 50 mm3), MEN (1, 50) or MET (1, 2).")] = "GLI",
) -> None:
    """Score predictions against references: Dice, IoU, precision, recall, HD95, ASSD, NSD, boundary F1.

    Writes the CSV (one row per case and label), a JSON summary and PNG plots (a box plot per
    class, overlays of the five worst cases), prints a table and logs all of it to MLflow.

    A structure missed entirely, or predicted where the reference has none, scores Dice 0 and
    HD95 = ASSD = the diagonal of the image's extent in mm (--distance-penalty-mm to set it), so no
    mean drops it. A label absent from both is left out of the means (--count-empty counts it).
    """
    from medseg.commands import evaluate_command

    if instances:
        from medseg.instance_evaluation import instance_evaluation_command

        instance_evaluation_command(pred=pred, ref=ref, output=output if output != Path("metrics.csv") else Path("instances.csv"),
                                    things=things, protocol=protocol, connectivity=connectivity, iou_threshold=iou_threshold,
                                    matching=matching, penalty_mm=distance_penalty_mm, regions=regions,
                                    brats_challenge=brats_challenge, experiment=experiment, workdir=workdir, echo=typer.echo)
        return
    evaluate_command(pred=pred, ref=ref, output=output, tolerance_mm=tolerance_mm, labels=labels, count_empty=count_empty,
                     distance_penalty_mm=distance_penalty_mm, images=images, run=run, experiment=experiment, workdir=workdir,
                     echo=typer.echo)
