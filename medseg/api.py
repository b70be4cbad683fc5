"""The medseg Python API: what the CLI, `medseg run` and any other front end call.

    import medseg
    volume = medseg.read("scan.nii.gz")                       # Volume: (X, Y, Z) array, RAS mm affine
    predictor = medseg.load_model("work/models/unet3d")        # the folds of one training, loaded once
    segmentation = predictor.segment(volume)                   # labels on the scan's own grid
    medseg.write(segmentation, "mask.nii.gz")                  # or format="dicom-seg" / "rtstruct"

Every function imports its heavy dependencies (torch, highdicom, ...) when called, so `import medseg`
stays instant. See docs/api.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from medseg.batch import infer  # many scans in, every format out (medseg/batch.py imports this module lazily)
from medseg.errors import ConfigError, OutputError
from medseg.inference.segmentation import Scan, Segmentation, read_scan

if TYPE_CHECKING:
    from medseg.evaluation import EvaluationReport
    from medseg.inference.predictor import Predictor
    from medseg.preprocess.run import PreprocessConfig, RunSummary
    from medseg.training.config import TrainConfig
    from medseg.training.loop import TrainResult
    from medseg.volume import Volume

__all__ = ["FORMATS", "Scan", "Segmentation", "evaluate", "infer", "load_model", "mask_to_dicom", "plan_and_preprocess", "read", "read_scan",
           "train", "write"]

FORMATS = {"nifti": ".nii.gz", "dicom-seg": ".dcm", "rtstruct": ".dcm",  # format -> default file suffix
           "instances": ".nii.gz", "panoptic": ".nii.gz",  # object maps + a JSON beside (medseg/instances.py)
           "dicom-seg-instances": ".dcm"}  # a SEG with one segment per object


def read(path_or_datasets: str | os.PathLike | Any, series: str | None = None, resample_irregular: bool = False,
         volume: int | None = None) -> "Volume":
    """A scan as a `Volume`: array (X, Y, Z) (or (C, X, Y, Z) for a 4D file), affine voxel -> RAS+ mm.

    path_or_datasets: a NIfTI/NRRD/MetaImage file, a DICOM folder or file, or in-memory pydicom
        Datasets (one, or a list of one series' slices, read with their pixel data).
    series: DICOM, the SeriesInstanceUID or index of the series when there are several.
    resample_irregular: DICOM, resample tilted or unevenly spaced series instead of refusing them.
    volume: DICOM, the 3D volume (0-based) of a 4D series.
    """
    from medseg.io import read_volume

    return read_volume(path_or_datasets, series=series, resample_irregular=resample_irregular, volume=volume)


def load_model(
    ref: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    workdir: str | os.PathLike | None = None,
    folds: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    overlap: float = 0.5,
    batch_size: int | None = None,
    fp16_buffer: bool = False,
    postprocess: bool = True,
    instances: bool = False,
    crf: bool | dict = False,
    runtime: str = "auto",
    resample_irregular: bool = False,
    volume: int | None = None,
    threads: int | None = None,
) -> "Predictor":
    """A `Predictor` for a trained model; call `.segment(...)` on it for each case.

    ref: a bundle folder (holds bundle.json); a folder of fold_* bundles (its cross-validation folds
        are ensembled; fold_none only when it is the only one); an MLflow run id, `runs:/` URI or
        registered model name (looked up in `workdir`'s store, else MLFLOW_TRACKING_URI's); or a
        list of these to ensemble.
    folds: keep only these folds, e.g. "0,1", "none" (fold_none) or "0,none".
    device: "auto" | "cpu" | "cuda"; precision: "auto" | "fp32" | "bf16" | "fp16".
    tta: average over mirrorings of every spatial axis; overlap: sliding-window overlap in [0, 1).
    batch_size: windows per forward pass (default 1 on the CPU, min(plan batch, 4) on CUDA).
    fp16_buffer: sum the windows' logits in float16 (half the buffer, for huge volumes on a GPU).
    postprocess: run the bundle's post-processing steps; instances: then label connected
        components (instance ids instead of classes); crf: refine with a mean-field CRF (True, or
        keyword arguments of `medseg.postprocess.crf.crf_refine`).
    runtime: for an export folder (`medseg export`): "onnxruntime" | "openvino" | "torch" (TorchScript) |
        "auto" (the fastest measured for that export on this CPU); a bundle runs in torch.
    resample_irregular, volume: how `segment` reads DICOM paths and Datasets (`read_scan`): a tilted
        or gapped series onto a regular grid (its SEG/RTSTRUCT go back onto the source slices), the
        volume (0-based) of a 4D series.
    threads: torch CPU threads (default: `medseg.threads.default_threads`, or OMP_NUM_THREADS when set).
    """
    import torch

    from medseg.threads import set_threads

    set_threads(threads)

    from medseg.bundle import resolve_model_reference, select_fold_bundles
    from medseg.inference.predictor import Predictor

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {device!r} is invalid; use auto, cpu or cuda")
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap {overlap} is out of range; expected a value in [0, 1) (0.5 is the default), e.g. 0.5")
    refs = [ref] if isinstance(ref, (str, os.PathLike)) else list(ref)
    bundles = select_fold_bundles([resolve_model_reference(r, workdir=workdir) for r in refs], folds)
    predictor = Predictor(
        bundles, device=device, precision=getattr(precision, "value", precision), tta=tta, overlap=overlap,
        batch_size=batch_size, accumulate_dtype=torch.float16 if fp16_buffer else torch.float32,
        postprocess=postprocess, extra_steps=[{"name": "instances", "params": {}}] if instances else [],
        crf=(crf if isinstance(crf, dict) else {}) if crf else None, runtime=runtime,
    )
    predictor.read_options = {"resample_irregular": resample_irregular, "volume": volume}
    return predictor


def probabilities_path(path: str | os.PathLike) -> Path:
    """Where `write` puts the probability maps of the mask written to `path`: <stem>_probabilities.nii.gz."""
    from medseg.io.atomic import full_suffix

    path = Path(path)
    stem = path.name[: len(path.name) - len(full_suffix(path))]
    return path.with_name(f"{stem}_probabilities.nii.gz")


def write(segmentation: Segmentation, path: str | os.PathLike | None = None, format: str = "nifti", *,
          probabilities: bool = True) -> Any:
    """Write a `Segmentation`, atomically (temporary name, then rename); return the path written.

    format: "nifti" (any suffix `medseg.io.write_volume` knows: .nii.gz, .nii, .nrrd, .mha),
        "dicom-seg", "dicom-seg-instances" (one segment per object) or "rtstruct" (these need `segmentation.datasets`, i.e. a DICOM input; the mask
        is checked to lie on that series' grid), "instances" (uint16 object ids of the thing
        classes + <stem>.json: each object's class, volume in ml, centroid in mm, bounding box, mean
        probability) or "panoptic" (value * 1000 + instance number + the same JSON); see `medseg.instances`.
    path None: for "dicom-seg"/"rtstruct", the pydicom Dataset is returned and nothing is written.
    probabilities: when the segmentation holds probabilities and a path is given, also write them
        to <stem>_probabilities.nii.gz beside the mask ((K, X, Y, Z) float32).
    """
    from medseg.io import write_volume

    if format not in FORMATS:
        raise ConfigError(f"format {format!r} is unknown; use one of {', '.join(FORMATS)}")
    if format == "nifti":
        if path is None:
            raise OutputError("format nifti needs a path to write to; give one, e.g. write(segmentation, 'mask.nii.gz')")
        written = write_volume(segmentation.labels, path)
    elif format in ("instances", "panoptic"):
        from medseg.instances import write_instance_outputs

        if path is None:
            raise OutputError(f"format {format} needs a path to write to; give one, e.g. write(segmentation, 'objects.nii.gz', format={format!r})")
        written = write_instance_outputs(segmentation, path, panoptic=format == "panoptic")
    else:
        if segmentation.datasets is None:
            raise OutputError(
                f"format {format} needs the source DICOM series to reference, but this segmentation was made from a "
                "non-DICOM input; use format nifti or segment the DICOM series"
            )
        from medseg.io import dicom

        build, save = (dicom.build_dicom_seg, dicom.write_dicom_seg) if format != "rtstruct" else (dicom.build_rtstruct, dicom.write_rtstruct)
        args = (segmentation.label_names, segmentation.label_codes)
        source = segmentation.labels
        if format == "dicom-seg-instances":  # each object its own segment, named and coded as its class
            from medseg.instances import instance_segments

            source, names, codes = instance_segments(segmentation)
            args = (names, codes)
        labels = dicom.to_source_slices(source, segmentation.datasets)  # a resampled tilted/gapped series: back onto its slices
        if path is None:
            return build(labels, segmentation.datasets, *args, model_name=segmentation.model_name)
        written = save(labels, segmentation.datasets, path, *args, model_name=segmentation.model_name)
    if probabilities and segmentation.probabilities is not None:
        write_volume(segmentation.probabilities, probabilities_path(written))
    return Path(written)


def mask_to_dicom(mask: "str | os.PathLike | Volume", reference: str | os.PathLike | Any, path: str | os.PathLike | None = None, *,
                  format: str = "dicom-seg", label_names: dict[int, str] | None = None, series: str | None = None) -> Any:
    """An existing label map (file or Volume, on the DICOM series' grid) as a DICOM SEG or RTSTRUCT
    referencing `reference` (the series' folder, file or Datasets), without rerunning inference;
    written atomically to `path` (returned), or with path None returned as a pydicom Dataset.
    label_names: {value: name} (default 'label <value>'). A mask off the series' grid is refused
    (GeometryError). See `medseg.io.dicom.export.mask_to_dicom`."""
    from medseg.io.dicom.export import mask_to_dicom as export

    return export(mask, reference, path, format=format, label_names=label_names, series=series)


def plan_and_preprocess(
    dataset: str | os.PathLike,
    workdir: str | os.PathLike,
    config: "str | os.PathLike | PreprocessConfig | None" = None,
    *,
    workers: int = 1,
    skip_invalid: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    resample_irregular: bool = False,
) -> "RunSummary":
    """Validate a dataset, plan it and write the preprocessed cache into `workdir`.

    dataset: an MSD/nnU-Net folder (dataset.json + imagesTr/), or a .csv/.json manifest.
    workdir: receives manifest.json, fingerprint.json, plan.json and preprocessed/<case>/ (each case
        resampled to the plan's target spacing, normalised, in the plan's (C, X, Y, Z) layout).
    config: a preprocess YAML (configs/preprocess.yaml) or a `PreprocessConfig`; None: defaults.
    resample_irregular: read gantry-tilted or gapped DICOM series onto a regular grid (as the
        config's `resample_irregular: true`), instead of refusing them.
    Returns a `RunSummary` (plan, processed and unchanged case ids, invalid cases left out).
    Raises `ValidationFailed` listing every invalid case, unless `skip_invalid`.
    """
    from medseg.preprocess.run import PreprocessConfig, load_preprocess_config, run_preprocess

    if not isinstance(config, PreprocessConfig):
        config = load_preprocess_config(config)
    if resample_irregular:
        config = config.model_copy(update={"resample_irregular": True})
    return run_preprocess(dataset, workdir, config, workers=workers, skip_invalid=skip_invalid, progress=progress)


def train(
    workdir: str | os.PathLike,
    config: "str | os.PathLike | TrainConfig",
    fold: int | None = 0,
    *,
    preset_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    epochs: int | None = None,
    precision: str | None = None,
    max_minutes: float | None = None,
    echo: Callable[[str], None] = lambda s: None,
    progress: Callable[[int, int, float], None] | None = None,
    time_budget: float | str | None = None,
    overwrite: bool = False,
) -> "TrainResult":
    """Train one fold on a preprocessed `workdir`; the bundle goes to WORKDIR/models/<preset>/fold_<k>/.

    config: a YAML preset (configs/unet3d.yaml, ...; its stem names the preset) or a `TrainConfig`
        (then give `preset_name`). overrides: top-level config keys that win over the file
        (e.g. {"seed": 1, "iterations_per_epoch": 10}).
    fold: 0-4 (validated on that fold of WORKDIR/splits.json), or None (every case, no
        validation: fold_none). epochs / precision: override the config's.
    time_budget: minutes, or "90s" / "60m" / "1.5h": the whole run, final validation and bundle
        included, ends within it, its schedule complete (overrides the config's `time_budget`;
        excludes `epochs` and `max_minutes`; a resumed budgeted run keeps the budget it has left).
    overwrite: replace a model already trained in the fold's folder (refused otherwise, before any
        work; `epochs` on an existing run extends it, as `resume` does).
    echo: receives one-line messages (epoch summaries); progress(iteration, total, loss) per step.
    Returns a `TrainResult` (bundle_dir, epochs_done, per-epoch losses, last validation Dice).
    """
    from medseg.training.config import TrainConfig, load_train_config
    from medseg.training.loop import train as train_fold

    if isinstance(config, TrainConfig):
        if overrides:
            config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if preset_name is None:
            raise ConfigError("train: a TrainConfig object needs preset_name= (the models/<preset>/ folder name)")
    else:
        preset_name = preset_name or Path(config).stem
        config = load_train_config(config, overrides)
    return train_fold(workdir, config, preset_name=preset_name, fold=fold, resume=resume, epochs=epochs,
                      precision=getattr(precision, "value", precision), max_minutes=max_minutes, echo=echo, progress=progress,
                      time_budget=time_budget, overwrite=overwrite)


def evaluate(
    pred: "str | os.PathLike | Volume | Segmentation",
    ref: "str | os.PathLike | Volume",
    *,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1.0,
    ignore_index: int | None = 255,
    label_names: dict[int, str] | None = None,
    count_empty: bool = False,
    distance_penalty_mm: float | None = None,
) -> "EvaluationReport":
    """Dice, IoU, precision, recall, HD95, ASSD, NSD and boundary F1 of predictions against references.

    pred, ref: label-map files or folders of them (cases matched by file name), or in memory a
        `Segmentation`/`Volume` against a `Volume` (one case, id "case"). Label maps are compared by
        their raw values on the reference grid (same shape and affine, else a GeometryError);
        distances are in mm.
    labels: which label values to score (default every non-zero value present, and every
        foreground label of `label_names`).
    count_empty: count labels absent from both in the means (default: left out, as nnU-Net does).
    distance_penalty_mm: HD95/ASSD of a missed or false structure (default: the image diagonal, mm).
    Returns an `EvaluationReport` (`.rows` one per case and label, `.summary`, `.flat_metrics()`).
    """
    from medseg.evaluation import EvaluationReport
    from medseg.evaluation import evaluate as evaluate_files
    from medseg.volume import Volume

    if isinstance(pred, Segmentation):
        label_names = label_names or pred.label_names
        pred = pred.labels
    if not isinstance(pred, Volume) and not isinstance(ref, Volume):
        return evaluate_files(pred, ref, labels=labels, tolerance_mm=tolerance_mm, ignore_index=ignore_index, label_names=label_names,
                              count_empty=count_empty, distance_penalty_mm=distance_penalty_mm)
    if not (isinstance(pred, Volume) and isinstance(ref, Volume)):
        raise ConfigError("evaluate: give two paths, or two in-memory label maps (Segmentation or Volume); not one of each")
    import numpy as np

    from medseg.evaluation import summary_of
    from medseg.metrics.case import case_metrics

    if labels is None:
        found = {int(v) for v in np.union1d(np.unique(pred.array), np.unique(ref.array))} | set(label_names or {})
        labels = sorted(v for v in found if v != 0 and v != ignore_index)
    rows = [{"case_id": "case", **row} for row in case_metrics(pred, ref, labels, tolerance_mm, ignore_index, distance_penalty_mm)]
    return EvaluationReport(
        rows=rows, summary=summary_of(rows, count_empty), tolerance_mm=tolerance_mm, pairs={},
        label_names=dict(label_names or {}), count_empty=count_empty, distance_penalty_mm=distance_penalty_mm,
    )
