"""The training loop: patches -> model -> loss -> SGD, validation by sliding window, bundle out.

Exact resume: patches depend only on (seed, epoch, global sample index) (see `medseg.data.sampler`;
rank r of N takes its share of each global batch), and `training_state.pt` holds the weights,
optimizer, scheduler, grad scaler, epoch and every rank's RNG states, so training resumed at an
epoch boundary repeats an uninterrupted run step for step, whatever instant a kill came at
(`medseg.training.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pydantic import ValidationError

from medseg.errors import ConfigError, InputError, first_validation_problem
from medseg.precision import Precision
from medseg.training.config import TrainConfig, dump_config
from medseg.training.validation import predict_case, validate  # noqa: F401  (predict_case: importable here, as before)

log = logging.getLogger(__name__)


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
    return plan.model_copy(update={"configurations": {**plan.configurations, name: new_conf}})


def state_checksum(model) -> str:
    """sha256 over the model's parameters and buffers, in state_dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


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
) -> TrainResult:
    """Train one fold (`fold=None`: every case, no validation); return where the bundle went.

    config: resolved or not (plan values are filled here); on `resume` the run's saved config is
    used instead. `epochs` and `precision` override either (more epochs extend a finished run). The bundle goes to
    WORKDIR/models/<preset_name>/fold_<k>/ (fold_none when fold is None).
    echo: receives one-line messages (epoch summaries); progress(iteration, total, loss) per step.
    """
    import torch

    from medseg.bundle import write_bundle
    from medseg.data.augment import build_train_transforms
    from medseg.data.sampler import PatchDataset, plan_spacing_for_patch, seed_worker
    from medseg.data.splits import fold_cases, load_or_create_splits
    from medseg.losses import DeepSupervisionLoss, build_loss
    from medseg.models import build_model
    from medseg.precision import resolve_precision
    from medseg.preprocess.cache import list_cached_cases
    from medseg.preprocess.case import check_cached_labels
    from medseg.preprocess.plan import Plan
    from medseg.tracking import flatten_params, open_tracker
    from medseg.training import checkpoint as ckpt
    from medseg.training.distributed import any_rank, barrier, cleanup, gather_objects, init_distributed, mean_over_ranks
    from medseg.training.schedule import build_optimizer_and_scheduler

    workdir = Path(workdir)
    if not (workdir / "plan.json").is_file():
        raise InputError(f"{workdir}: no plan.json; run `medseg preprocess` with this folder as output first")
    plan = Plan.load(workdir / "plan.json")
    if config.model.configuration not in plan.configurations:
        raise ConfigError(f"the config wants the '{config.model.configuration}' configuration; the plan has {sorted(plan.configurations)}")
    out_dir = workdir / "models" / preset_name / ("fold_none" if fold is None else f"fold_{fold}")
    state_path = out_dir / ckpt.STATE_FILE
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
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    if precision is not None:
        config = config.model_copy(update={"precision": Precision(precision)})  # model_copy does not validate
    config = config.resolve_with_plan(plan)
    run_plan = effective_plan(plan, config)
    conf = run_plan.configurations[config.model.configuration]
    spatial_dims = conf.spatial_dims

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    dist = init_distributed(device_type)
    device = torch.device(device_type, dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    precision = resolve_precision(config.precision, device_type)  # from here on: the resolved plan
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    ckpt.seed_everything(config.seed + dist.rank)

    cases = list_cached_cases(workdir)
    if not cases:
        raise InputError(f"{workdir}/preprocessed holds no cases; run `medseg preprocess` first")
    check_cached_labels(workdir, cases, plan)  # a label the plan lacks is named with its case here, not mid-epoch
    splits = load_or_create_splits(workdir, cases, seed=config.seed) if dist.is_main else None
    if dist.enabled:
        import torch.distributed as tdist

        box = [splits]
        tdist.broadcast_object_list(box, src=0)
        splits = box[0]
    if fold is None:
        train_ids, val_ids = fold_cases([], None, cases)
    else:
        train_ids, val_ids = fold_cases(splits, fold, cases)

    num_classes = len(plan.labels)
    model = build_model(
        config.model.name,
        conf,
        in_channels=len(plan.channel_names),
        num_classes=num_classes,
        spacing=run_plan.target_spacing,
        **config.model.options,
    ).to(device)
    fmt = precision.memory_format(spatial_dims)
    model = model.to(memory_format=fmt)
    loss_fn = build_loss(config.loss.name, **config.loss.options)
    deep_sup = bool(config.model.options.get("deep_supervision", False))
    if deep_sup:
        loss_fn = DeepSupervisionLoss(loss_fn)  # nnU-Net's weights, one per output the model returns

    iters = config.iterations_per_epoch
    optimizer, scheduler, schedule = build_optimizer_and_scheduler(model.parameters(), config.optimizer, config.epochs * iters, iters)
    scaler = torch.amp.GradScaler(device_type, enabled=precision.use_grad_scaler)

    start_epoch, history, run_id = 0, {"train_loss": [], "val_mean": [], "ema": []}, None
    best_ema, ema, best_sha = -math.inf, None, None
    if saved is not None:
        try:  # the state's own weights: model_last.pt may be a kill away from them
            model.load_state_dict(saved["model"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{state_path}: its weights do not fit the {config.model.name} this plan builds ({first}); "
                             "train without --resume") from None
        best_sha = saved.get("best_sha256")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        schedule.total = config.epochs * iters  # --epochs on a finished run stretches the curve from here
        scheduler.lr_lambdas = [schedule]
        if saved.get("grad_scaler"):
            scaler.load_state_dict(saved["grad_scaler"])
        start_epoch = int(saved["epoch"]) + 1
        history = saved["history"]
        best_ema = saved["best_ema"] if saved["best_ema"] is not None else -math.inf
        ema = saved["ema"]
        run_id = saved.get("run_id")
        rngs = saved["rng"]  # one per rank
        if len(rngs) == dist.world_size:
            ckpt.set_rng_states(rngs[dist.rank])
        else:
            ckpt.seed_everything(config.seed + dist.rank + 7919 * start_epoch)
            echo(f"the checkpoint was written by {len(rngs)} process(es), this run has {dist.world_size}: "
                 "RNG states re-seeded, so dropout draws differ from an uninterrupted run")
        if dist.is_main:
            ckpt.repair_weights(out_dir, saved, "model_last.pt", "model_best.pt")
        if start_epoch >= config.epochs:
            echo(f"already trained {start_epoch} epochs; pass --epochs N (> {start_epoch}) to extend the run")

    if config.batch_size % dist.world_size:
        raise ConfigError(f"batch_size {config.batch_size} does not split over {dist.world_size} processes; "
                          f"set batch_size to a multiple of {dist.world_size} or change --nproc_per_node")
    per_rank_batch = config.batch_size // dist.world_size
    spacing = plan_spacing_for_patch(plan.target_spacing, conf.slice_axis, spatial_dims)
    transform = build_train_transforms(config.augment, config.patch_size, spacing)
    dataset = PatchDataset(
        workdir,
        train_ids,
        config.patch_size,
        iters * config.batch_size,  # global sample indices: the same patches at any world size
        foreground_prob=config.foreground_oversampling,
        slice_axis=conf.slice_axis,
        transform=transform,
        seed=config.seed,
        rank=0,
    )
    # rank r's share of global batch b: samples b*B + r*B/N ... b*B + (r+1)*B/N - 1
    my_samples = [it * config.batch_size + dist.rank * per_rank_batch + j for it in range(iters) for j in range(per_rank_batch)]
    workers = config.num_workers if config.num_workers is not None else default_workers(device_type)

    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters stays False: every parameter gets a gradient each step (side heads only with
        # deep supervision), which tests/training/test_distributed.py checks for every model and preset
        train_model = DistributedDataParallel(model, device_ids=[dist.local_rank] if device_type == "cuda" else None,
                                              find_unused_parameters=False)
    if config.compile:
        # fuses norms, activations and casts around the convolutions; validation and the saved weights use
        # `model` itself, so compiling changes neither the bundle nor the checkpoints
        train_model = torch.compile(train_model)

    tracker = None
    labels = {int(k): v for k, v in plan.labels.items()}
    if dist.is_main:
        tags = {"dataset": plan.dataset_name, "model": config.model.name, "preset": preset_name,
                "fold": "none" if fold is None else str(fold), "precision": precision.resolved.value}
        run_name = f"{preset_name}-fold{'none' if fold is None else fold}"
        try:
            tracker = open_tracker(workdir, plan.dataset_name, run_name=run_name, run_id=run_id, tags=tags)
        except InputError:  # the earlier run lives in another store: record the continuation as a new run
            tracker = open_tracker(workdir, plan.dataset_name, run_name=run_name, tags=tags)
        run_id = getattr(tracker, "run_id", None)
        if saved is None:
            params = flatten_params({"config": config.model_dump(mode="json"), "plan": run_plan.model_dump(mode="json")})
            params["precision_resolved"] = precision.describe()
            tracker.log_params(params)
        echo(f"precision: {precision.describe()}; {len(train_ids)} training / {len(val_ids)} validation cases; "
             f"batch {config.batch_size}, patch {config.patch_size}, {workers} loader worker(s)")

    def write(epoch: int, best_state: dict | None, rng_per_rank: list) -> None:
        nonlocal best_sha
        last = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if best_state is None and not (out_dir / "model_best.pt").is_file():
            best_state = last  # until the first validation
        if best_state is not None:
            best_sha = ckpt.tensors_sha256(best_state)
        # tensors and plain containers only (loads with weights_only=True); the last weights inside
        training_state = {
            "format": ckpt.STATE_FORMAT,
            "model": last,
            "best_sha256": best_sha,
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rng_per_rank,
            "loader": {"seed": config.seed, "epoch": epoch + 1, "world_size": dist.world_size},
            "history": history,
            "best_ema": None if best_ema == -math.inf else best_ema,
            "ema": ema,
            "run_id": run_id,
            "config": config.model_dump(mode="json"),
        }
        write_bundle(
            out_dir,
            model_name=config.model.name,
            configuration=config.model.configuration,
            fold="none" if fold is None else fold,
            model_options=config.model.options,
            plan=run_plan,
            config=config.model_dump(mode="json"),
            labels=labels,
            label_codes={k: c.as_json() for k, c in run_plan.label_codes.items()},
            precision=precision.resolved.value,
            mlflow_run_id=run_id,
            state_dict_best=best_state,  # None: model_best.pt stays as it is
            state_dict_last=last,
            training_state=training_state,
        )

    t_start = time.monotonic()
    val_dice: dict[str, float] = {}
    stopped = False
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.monotonic()
            dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=per_rank_batch, sampler=my_samples, num_workers=workers,
                worker_init_fn=seed_worker if workers else None, pin_memory=device_type == "cuda", drop_last=True,
            )
            train_model.train()
            losses = []
            for it, batch in enumerate(loader):
                image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
                target = batch["label"].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    out = train_model(image)
                # the loss in float32, outside autocast
                out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
                loss = loss_fn(out, target)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(float(loss.detach()))
                if progress is not None and dist.is_main:
                    progress(it + 1, iters, losses[-1])
            train_loss = mean_over_ranks(dist, float(np.mean(losses)))
            history["train_loss"].append(train_loss)
            epoch_time = time.monotonic() - t0
            metrics = {"train_loss": train_loss, "lr": _lr(optimizer), "epoch_time_s": epoch_time,
                       "samples_per_s": iters * config.batch_size / max(epoch_time, 1e-9)}
            best_state = None
            last_epoch = epoch == config.epochs - 1
            over_time = max_minutes is not None and (time.monotonic() - t_start) / 60 >= max_minutes
            stop = any_rank(dist, over_time)  # stopping early still validates, so the checkpoint has a score
            if val_ids and ((epoch + 1) % config.validate_every == 0 or last_epoch or stop):
                # every rank validates its share of the cases (no rank idles in a collective meanwhile)
                val_dice = validate(model, workdir, val_ids, run_plan, config, precision, device, labels, dist)
                mean = val_dice["mean"]
                ema = mean if ema is None else config.ema_alpha * ema + (1 - config.ema_alpha) * mean
                history["val_mean"].append([epoch, mean])
                history["ema"].append([epoch, ema])
                metrics.update({f"val_dice_{name}": v for name, v in val_dice.items()})
                metrics["val_dice_ema"] = ema
                if ema > best_ema:
                    best_ema = ema
                    if dist.is_main:
                        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            elif fold is None and dist.is_main:
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # no validation: last is best
            rng_per_rank = gather_objects(dist, ckpt.rng_states())
            if dist.is_main:
                tracker.log_metrics(metrics, step=epoch)
                write(epoch, best_state, rng_per_rank)
                dice_text = f", val Dice {val_dice['mean']:.4f} (EMA {ema:.4f})" if "val_dice_mean" in metrics else ""
                echo(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f}, lr {metrics['lr']:.2e}, "
                     f"{epoch_time:.1f} s, {metrics['samples_per_s']:.1f} samples/s{dice_text}")
            if stop and epoch < config.epochs - 1:
                stopped = True
                if dist.is_main:
                    echo(f"--max-minutes {max_minutes} reached: stopped after epoch {epoch + 1} with a checkpoint; continue with --resume")
                break
        barrier(dist)  # every rank returns with the last checkpoint on disk (a following --resume reads it)
        checksum = state_checksum(model)
        if dist.is_main:
            if not stopped:  # keep-largest-component steps chosen on validation (issue 14; fold_none: the CV folds')
                from medseg.postprocess.select import select_for_fold

                select_for_fold(tracker, workdir, out_dir, val_ids, run_plan, config, precision, device, echo)
            _log_artifacts(tracker, workdir, out_dir, history, model, val_ids, run_plan, config, precision, device)
            tracker.end()
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.end("KILLED")  # stopped by the user, not a failure; the last checkpoint resumes
        raise
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    finally:
        cleanup(dist)
    return TrainResult(out_dir, epoch + 1, history["train_loss"], val_dice, None if best_ema == -math.inf else best_ema,
                       run_id, precision.resolved.value, checksum, stopped)


def _log_artifacts(tracker, workdir, out_dir, history, model, val_ids, plan, config, precision, device) -> None:
    """Config, plan, splits, the bundle (artifact path "bundle"), learning curves and overlays."""
    from medseg.training import checkpoint as ckpt

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
    from medseg.training.plots import plot_curves, plot_overlay

    if not available("matplotlib"):  # the `plots` extra: everything else is recorded, training goes on
        log.warning("%s; no learning curves or overlays logged", missing_message("matplotlib"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp)
        plot_curves(history, plots / "learning_curves.png")
        for case_id in val_ids[:2]:
            plot_overlay(model, workdir, case_id, plan, config, precision, device, plots / f"overlay_{case_id}.png")
        tracker.log_artifacts(plots, artifact_path="plots")
