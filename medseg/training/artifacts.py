"""What a training run leaves behind: the bundle and `training_state.pt` after every epoch
(`CheckpointWriter`), the run's record in `medseg.tracking` (`open_run_tracker`), and at the end the
config, plan, splits, bundle files and plots logged to it (`log_artifacts`). Main rank only.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from medseg.errors import InputError
from medseg.training import checkpoint as ckpt

log = logging.getLogger(__name__)


class CheckpointWriter:
    """Writes one epoch's checkpoint: the bundle (`model_last.pt`, `model_best.pt` when there is a
    new best, bundle.json, config, plan) with `training_state.pt` as its commit point (tensors and
    plain containers only: it loads with weights_only=True). best_sha: the sha256 of the best
    weights on disk (from a resumed state), kept in the state so a kill between files is repaired."""

    def __init__(self, out_dir: Path, *, model, optimizer, scheduler, scaler, config, run_plan, labels: dict[int, str],
                 fold: int | None, precision, world_size: int, averaged=None, best_sha: str | None = None):
        self.out_dir = Path(out_dir)
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config, self.run_plan, self.labels, self.fold = config, run_plan, labels, fold
        self.precision, self.world_size, self.best_sha = precision, world_size, best_sha
        self.averaged = averaged  # the weights' moving average (`weight_ema`): the bundle's weights, else the live ones
        self.budget = None  # a time budget's planner (`medseg.training.budget`): its state is saved too
        self.resume_at = None  # a preemption's stop inside an epoch (`medseg.training.preempt`)

    def write(self, epoch: int, best_state: dict | None, rng_per_rank: list, *, history: dict, best_ema: float,
              ema: float | None, run_id: str | None) -> None:
        """best_state: the new best weights (CPU tensors) or None (model_best.pt stays as it is;
        before the first validation it is the last weights)."""
        from medseg.bundle import write_bundle

        from medseg.training import weight_average

        config, out_dir = self.config, self.out_dir
        live = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        averaged = weight_average.state_of(self.averaged) if self.averaged is not None else None
        last = averaged["weights"] if averaged is not None else live  # model_last.pt
        if best_state is None and not (out_dir / "model_best.pt").is_file():
            best_state = last  # until the first validation
        if best_state is not None:
            self.best_sha = ckpt.tensors_sha256(best_state)
        training_state = {
            "format": ckpt.STATE_FORMAT,
            "model": live,
            "averaged": averaged,
            "best_sha256": self.best_sha,
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng_per_rank,
            "loader": {"seed": config.seed, "epoch": epoch + 1, "world_size": self.world_size},
            "history": history,
            "best_ema": None if best_ema == -math.inf else best_ema,
            "ema": ema,
            "run_id": run_id,
            "config": config.model_dump(mode="json"),
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "resume_at": self.resume_at,
        }
        write_bundle(
            out_dir,
            model_name=config.model.name,
            configuration=config.model.configuration,
            fold="none" if self.fold is None else self.fold,
            model_options=config.model.options,
            plan=self.run_plan,
            config=config.model_dump(mode="json"),
            labels=self.labels,
            label_codes={k: c.as_json() for k, c in self.run_plan.label_codes.items()},
            precision=self.precision.resolved.value,
            mlflow_run_id=run_id,
            state_dict_best=best_state,  # None: model_best.pt stays as it is
            state_dict_last=last,
            training_state=training_state,
        )


def open_run_tracker(workdir, plan, run_plan, config, precision, *, preset_name: str, fold: int | None,
                     run_id: str | None, resumed: bool):
    """The run's tracker (`medseg.tracking.open_tracker`): the resumed run's own run when its store
    has it, else a new run; a new run gets the config, plan and resolved precision as params."""
    from medseg.tracking import flatten_params, open_tracker

    tags = {"dataset": plan.dataset_name, "model": config.model.name, "preset": preset_name,
            "fold": "none" if fold is None else str(fold), "precision": precision.resolved.value}
    run_name = f"{preset_name}-fold{'none' if fold is None else fold}"
    try:
        tracker = open_tracker(workdir, plan.dataset_name, run_name=run_name, run_id=run_id, tags=tags)
    except InputError:  # the earlier run lives in another store: record the continuation as a new run
        tracker = open_tracker(workdir, plan.dataset_name, run_name=run_name, tags=tags)
    if not resumed:
        params = flatten_params({"config": config.model_dump(mode="json"), "plan": run_plan.model_dump(mode="json")})
        params["precision_resolved"] = precision.describe()
        tracker.log_params(params)
    return tracker


def log_artifacts(tracker, workdir, out_dir, history, model, val_ids, plan, config, precision, device) -> None:
    """Config, plan, splits, the bundle (artifact path "bundle"), learning curves and overlays."""
    if not getattr(tracker, "active", True):  # nothing records them (no or unreachable store): no plotting either
        return
    for name in ("config.yaml", "plan.json"):
        tracker.log_artifact(out_dir / name)
    if (Path(workdir) / "splits.json").is_file():
        tracker.log_artifact(Path(workdir) / "splits.json")
    for path in sorted(out_dir.iterdir()):  # the bundle; never a temporary file of an interrupted write
        if path.is_file() and not ckpt.is_temporary(path):
            tracker.log_artifact(path, artifact_path="bundle")
    from medseg.extras import available, missing_message

    if not available("matplotlib"):  # the `plots` extra: everything else is recorded, training goes on
        log.warning("%s; no learning curves or overlays logged", missing_message("matplotlib"))
        return
    from medseg.training.plots import plot_curves, plot_overlay

    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp)
        plot_curves(history, plots / "learning_curves.png")
        for case_id in (val_ids[:2] if not plan.prompt_channels else []):  # a promptable model needs prompts
            plot_overlay(model, workdir, case_id, plan, config, precision, device, plots / f"overlay_{case_id}.png")
        tracker.log_artifacts(plots, artifact_path="plots")
