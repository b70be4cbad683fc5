"""`medseg evaluate-interactive BUNDLE --workdir WORKDIR`: the simulated user on held-out cases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    model: Annotated[str, typer.Argument(help="A promptable bundle (trained with configs/interactive3d.yaml), run id or registered name.")],
    workdir: Annotated[Path, typer.Option("--workdir", help="The workdir it was trained in: its fold's validation cases are clicked on.")],
    fold: Annotated[int, typer.Option("--fold", help="Whose validation cases to use.")] = 0,
    clicks: Annotated[int, typer.Option("--clicks", min=1, help="Clicks per object (the first at its interior, then corrections).")] = 5,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Label values to click on, e.g. '1,2' (default: every label of each case).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON report (summary and every object's curve); the Dice curve plot goes beside it.")] = Path("interactive.json"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the simulated user (ties between interior points).")] = 0,
    refine: Annotated[Optional[str], typer.Option("--refine", help="A semantic bundle whose masks seed each object; the clicks then correct them (item 4: a first pass, then refinement).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="For an export folder of the promptable model (`medseg export`): torch, onnxruntime, openvino or auto, as in `medseg infer`.")] = "auto",
) -> None:
    """Dice after each click, Dice AUC, NoC@85/NoC@90 and seconds per click; logged to MLflow."""
    from medseg.interactive.evaluate import run_evaluate_interactive

    run_evaluate_interactive(model, workdir, fold=fold, clicks=clicks, labels=labels, output=output, device=device,
                             seed=seed, refine=refine, runtime=runtime, echo=typer.echo)
