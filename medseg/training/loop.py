"""`train()`: one fold of training, the public call (CLI, `medseg.api`, pipelines, tests).

This module resolves the run's config (the plan, a resumed state's own config, --epochs and
--precision) and hands it to `medseg.training.trainer.Trainer` (set-up, epochs, validation);
checkpoints and tracking are `medseg.training.artifacts`, validation `medseg.training.validation`
(the predictor's own network-grid prediction), plots `medseg.training.plots`.

Exact resume: see `medseg.training.trainer` and `medseg.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from medseg.errors import ConfigError, InputError, first_validation_problem
from medseg.precision import Precision
from medseg.training.config import TrainConfig

@dataclass
class TrainResult:
    bundle_dir: Path
    epochs_done: int
    train_losses: list[float]  # mean loss per epoch, from epoch 0
    val_dice: dict[str, float] = field(default_factory=dict)  # last validation, per class name and "mean"
    best_ema: float | None = None
    run_id: str | None = None
    precision: str = ""
    weights_sha256: str = ""
    stopped_early: bool = False
    budget: dict | None = None  # with a time budget: minutes budgeted and used, epochs, every plan made


def default_workers(device_type: str) -> int:
    """Loader workers: on CPU one (single-threaded) worker, so augmentation overlaps compute
    without taking the compute cores; on GPU up to 8."""
    cpus = os.cpu_count() or 1
    if device_type == "cuda":
        return min(8, max(1, cpus - 1))
    return 1 if cpus >= 2 else 0


def effective_plan(plan, config: TrainConfig):
    """The plan with this run's configuration as trained (patch, batch, features; strides cut to the
    number of stages), so the bundle's plan rebuilds exactly the trained network."""
    name = config.model.configuration
    conf = plan.configurations[name]
    n = len(config.model.features_per_stage)
    if n > len(conf.strides):
        raise ConfigError(
            f"model.features_per_stage has {n} stages but the plan's {name} configuration has {len(conf.strides)}; "
            "use at most that many or set it to null"
        )
    new_conf = conf.model_copy(
        update={
            "patch_size": list(config.patch_size),
            "batch_size": int(config.batch_size),
            "features_per_stage": list(config.model.features_per_stage),
            "strides": [list(s) for s in conf.strides[:n]],
            "kernel_sizes": [list(k) for k in conf.kernel_sizes[:n]],
        }
    )
    update = {"configurations": {**plan.configurations, name: new_conf}}
    if config.interactive is not None:  # class-agnostic: one object against the rest, prompts as extra inputs
        from medseg.interactive.prompts import PROMPT_CHANNELS

        update.update(labels={0: "background", 1: "object"}, label_codes={}, things=None, border_of={},
                      prompt_channels=PROMPT_CHANNELS)
    return plan.model_copy(update=update)


def state_checksum(model) -> str:
    """sha256 over the model's parameters and buffers, in state_dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _keep_existing(out_dir: Path, state_path: Path, overwrite: bool, epochs: int | None, echo) -> bool:
    """Before any work: True when `--epochs` extends the run already in `out_dir` (a resume); an
    existing bundle or run without --overwrite, --resume or --epochs is a ConfigError (one line)."""
    from medseg.bundle import BUNDLE_JSON

    found = [p.name for p in (out_dir / BUNDLE_JSON, state_path) if p.is_file()]
    if not found or overwrite:
        return False
    if epochs is not None and state_path.is_file():
        echo(f"{out_dir}: extending the existing run to {epochs} epochs (--overwrite starts a new one)")
        return True
    raise ConfigError(
        f"{out_dir}: a trained model is already there ({', '.join(found)}); a new run would overwrite it; "
        "continue it with --resume (--epochs N to extend it), replace it with --overwrite, or train another preset"
    )


def train(
    workdir: str | os.PathLike,
    config: TrainConfig,
    *,
    preset_name: str,
    fold: int | None,
    resume: bool = False,
    epochs: int | None = None,
    precision: str | None = None,
    max_minutes: float | None = None,
    echo: Callable[[str], None] = lambda s: None,
    progress: Callable[[int, int, float], None] | None = None,
    time_budget: float | str | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train one fold (`fold=None`: every case, no validation); return where the bundle went.

    config: resolved or not (plan values are filled here); on `resume` the run's saved config is
    used instead. `epochs` and `precision` override either (more epochs extend a finished run). The bundle goes to
    WORKDIR/models/<preset_name>/fold_<k>/ (fold_none when fold is None).
    echo: receives one-line messages (epoch summaries); progress(iteration, total, loss) per step.
    time_budget: minutes (or "90s", "60m", "1.5h") for the whole run; it overrides the config's
        `time_budget` and sizes the epochs (`medseg.training.budget`), so it excludes `epochs` and
        `max_minutes`, and a resumed budgeted run continues with the budget it has left.
    overwrite: replace an existing bundle or run in the fold's folder; without it a new run there is
        refused before any work (`--epochs` alone on an existing run extends it, as `--resume` does).
    """
    import time

    from medseg.preprocess.plan import Plan
    from medseg.training import budget as budget_mod
    from medseg.training import checkpoint as ckpt
    from medseg.training import preempt
    from medseg.training.trainer import Trainer

    t_start = time.monotonic()  # a time budget counts set-up too
    workdir = Path(workdir)
    if not (workdir / "plan.json").is_file():
        raise InputError(f"{workdir}: no plan.json; run `medseg preprocess` with this folder as output first")
    plan = Plan.load(workdir / "plan.json")
    if config.model.configuration not in plan.configurations:
        raise ConfigError(f"the config wants the '{config.model.configuration}' configuration; the plan has {sorted(plan.configurations)}")
    out_dir = workdir / "models" / preset_name / ("fold_none" if fold is None else f"fold_{fold}")
    state_path = out_dir / ckpt.STATE_FILE
    why = None if resume or overwrite else preempt.auto_resume(state_path)  # a preemption's or torchrun restart's checkpoint
    if why:
        resume, time_budget = True, None  # a resumed run continues with the budget it has left
        echo(why)
    resume = resume or _keep_existing(out_dir, state_path, overwrite, epochs, echo)
    saved = None
    if resume:
        if not state_path.is_file():
            raise InputError(f"{state_path}: nothing to resume; train without --resume first")
        saved = ckpt.load_state(state_path)  # weights_only: a planted file is refused, never run
        # the run's own config wins; --epochs and --precision below may still override it
        try:
            config = TrainConfig.model_validate(saved["config"])
        except ValidationError as exc:
            raise ConfigError(f"{state_path}: its saved config is invalid ({first_validation_problem(exc)}); train without --resume") from None
    if time_budget is not None:
        if resume:
            raise ConfigError("--time-budget with --resume: a resumed run continues with the budget it has left; drop --time-budget")
        config = config.model_copy(update={"time_budget": budget_mod.parse_minutes(time_budget)})
    if config.time_budget is not None and (epochs is not None or max_minutes is not None):
        given = "--epochs" if epochs is not None else "--max-minutes"
        raise ConfigError(f"{given} with a time budget ({config.time_budget:g} min): the budget sizes the epochs and ends "
                          f"the schedule in time; drop {given}, or drop --time-budget / time_budget for a fixed schedule")
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    if precision is not None:
        config = config.model_copy(update={"precision": Precision(precision)})  # model_copy does not validate
    config = config.resolve_with_plan(plan)
    from medseg.threads import set_threads

    set_threads(config.threads)
    trainer = Trainer(workdir, plan, effective_plan(plan, config), config, out_dir, saved=saved, preset_name=preset_name,
                      fold=fold, echo=echo, progress=progress)
    planner = budget_mod.make_planner(config, saved, has_validation=trainer.validates, started_at=t_start,
                                      tracked=config.time_budget is not None and budget_mod.tracked(trainer))
    with preempt.handling_signals() as trainer.preempt_flag:  # SIGTERM / SIGUSR1: checkpoint and exit 75
        result = trainer.fit(max_minutes, budget=planner)
    if planner is not None:
        result.budget = getattr(trainer, "budget_summary", None)
    return result
