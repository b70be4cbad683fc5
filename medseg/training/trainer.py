"""One fold's training, in steps: set-up (`Trainer.__init__`: distributed group, seeds, cases and
split, model, optimizer, a resumed state, the patch loader, the run's tracker), `train_epoch`,
`validate_epoch`, and `fit` which runs them and hands each epoch to the checkpoint writer and the
tracker (`medseg.training.artifacts`). `medseg.training.loop.train` is the public call.

Exact resume: patches depend only on (seed, epoch, global sample index) (`medseg.data.sampler`;
rank r of N takes its share of each global batch), and `training_state.pt` holds every rank's RNG
states beside weights, optimizer, scheduler and grad scaler, so a run resumed at an epoch boundary
repeats an uninterrupted one step for step. The order of the set-up steps is part of that: weights
are initialised right after seeding, RNG states are restored after everything that draws.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medseg.data.augment import build_train_transforms, scheduled_transforms
from medseg.errors import ConfigError, InputError
from medseg.training.config import TrainConfig
from medseg.training import preempt


class Trainer:
    """Set up one fold's training (see the module docstring); `fit()` runs it.

    plan: the workdir's plan; run_plan: the plan with this run's configuration as trained
    (`loop.effective_plan`); config: resolved with the plan; saved: the loaded training state
    when resuming (its own config already in `config`), else None.
    """

    def __init__(self, workdir: Path, plan, run_plan, config: TrainConfig, out_dir: Path, *, saved: dict | None,
                 preset_name: str, fold: int | None, echo: Callable[[str], None],
                 progress: Callable[[int, int, float], None] | None):
        import torch

        from medseg.precision import resolve_precision
        from medseg.training import checkpoint as ckpt
        from medseg.training.distributed import init_distributed

        self.workdir, self.plan, self.run_plan, self.config, self.out_dir = Path(workdir), plan, run_plan, config, Path(out_dir)
        self.fold, self.echo, self.progress = fold, echo, progress
        self.conf = run_plan.configurations[config.model.configuration]
        self.labels = {int(k): v for k, v in run_plan.labels.items()}  # the plan's, or {0, 1: object} when promptable

        self.device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.dist = dist = init_distributed(self.device_type)
        self.device = torch.device(self.device_type, dist.local_rank) if self.device_type == "cuda" else torch.device("cpu")
        self.precision = resolve_precision(config.precision, self.device_type)
        self.prompter = None  # promptable training: inputs and targets from simulated prompts (medseg.training.interactive)
        if config.interactive is not None:
            from medseg.training.interactive import PromptSimulator

            if self.conf.spatial_dims != 3:
                raise ConfigError("interactive: promptable training needs a 3D configuration (model.configuration: 3d)")
            held_out = [v for v in config.interactive.exclude_labels if v not in plan.label_values[1:]]
            if held_out:
                raise ConfigError(f"interactive.exclude_labels: {held_out} are not foreground labels of the plan "
                                  f"({plan.label_values[1:]}); list label values to hold out")
            exclude = tuple(plan.label_values.index(v) for v in config.interactive.exclude_labels)
            self.prompter = PromptSimulator(config.interactive, run_plan.target_spacing, seed=config.seed + dist.rank,
                                            exclude_channels=exclude)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        ckpt.seed_everything(config.seed + dist.rank)

        self._split_cases()
        self._build_model()
        if saved is None:  # a resumed run has its own weights
            from medseg.models import load_pretrained

            report = load_pretrained(config.model.name, self.model, config.model.options)
            if report and dist.is_main:
                echo(report)
        self.start_epoch, self.history, self.run_id = 0, {"train_loss": [], "val_mean": [], "ema": []}, None
        self.best_ema, self.ema = -math.inf, None
        if saved is not None:
            self._restore(saved)
        self.averaged = None  # the weights' moving average (`weight_ema`), which validation and the bundle use
        if config.weight_ema is not None:
            from medseg.training import weight_average

            self.averaged = weight_average.averaged_copy(self.model, config.weight_ema)
            if saved is not None and saved.get("averaged"):
                weight_average.load_state(self.averaged, saved["averaged"])
        self._build_loader()
        self._wrap_model()

        from medseg.training.artifacts import CheckpointWriter, open_run_tracker

        self.checkpoints = CheckpointWriter(
            self.out_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=config, run_plan=run_plan, labels=self.labels, fold=fold, precision=self.precision,
            world_size=dist.world_size, averaged=self.averaged, best_sha=saved.get("best_sha256") if saved is not None else None,
        )
        self.tracker = None
        if dist.is_main:
            self.tracker = open_run_tracker(self.workdir, plan, run_plan, config, self.precision, preset_name=preset_name,
                                            fold=fold, run_id=self.run_id, resumed=saved is not None)
            self.run_id = getattr(self.tracker, "run_id", None)
            echo(f"precision: {self.precision.describe()}; {len(self.train_ids)} training / {len(self.val_ids)} validation cases; "
                 f"batch {config.batch_size}, patch {config.patch_size}, {self.workers} loader worker(s)")

    # -- set-up -----------------------------------------------------------------------------------

    @property
    def eval_model(self):
        """The network validation, the best checkpoint and the bundle use: the weights' moving average
        when `weight_ema` is set, else the live model."""
        return self.averaged.module if self.averaged is not None else self.model

    @property
    def validates(self) -> bool:
        """Whether epochs run the sliding-window validation: the fold has validation cases and the model
        is semantic (a promptable one is scored by `medseg evaluate-interactive` instead)."""
        return bool(self.val_ids) and self.prompter is None

    def _split_cases(self) -> None:
        """The fold's training and validation case ids (the split made on rank 0 and broadcast)."""
        from medseg.data.splits import fold_cases, load_or_create_splits
        from medseg.preprocess.cache import list_cached_cases
        from medseg.preprocess.case import check_cached_labels

        cases = list_cached_cases(self.workdir)
        if not cases:
            raise InputError(f"{self.workdir}/preprocessed holds no cases; run `medseg preprocess` first")
        check_cached_labels(self.workdir, cases, self.plan)  # a label the plan lacks is named with its case here, not mid-epoch
        if self.fold is None:  # every case, no validation: no cross-validation split (3 cases are enough)
            self.train_ids, self.val_ids = fold_cases([], None, cases)
            return
        splits = load_or_create_splits(self.workdir, cases, seed=self.config.seed) if self.dist.is_main else None
        if self.dist.enabled:
            import torch.distributed as tdist

            box = [splits]
            tdist.broadcast_object_list(box, src=0)
            splits = box[0]
        self.train_ids, self.val_ids = fold_cases(splits, self.fold, cases)

    def _build_model(self) -> None:
        """Network (its weights drawn from the just-seeded RNG), loss, optimizer, scheduler, grad scaler."""
        import torch

        from medseg.losses import DeepSupervisionLoss, build_loss
        from medseg.models import build_model
        from medseg.training.schedule import build_optimizer_and_scheduler

        config = self.config
        model = build_model(config.model.name, self.conf, in_channels=self.run_plan.in_channels,
                            num_classes=len(self.run_plan.labels), spacing=self.run_plan.target_spacing, **config.model.options)
        self.fmt = self.precision.memory_format(self.conf.spatial_dims)
        self.model = model.to(self.device).to(memory_format=self.fmt)
        loss_fn = build_loss(config.loss.name, **config.loss.options)
        if config.model.options.get("deep_supervision", False):
            loss_fn = DeepSupervisionLoss(loss_fn, decay=config.loss.deep_supervision_decay)  # one weight per output
        self.loss_fn = loss_fn
        self.iters = iters = config.iterations_per_epoch
        self.augment_strength = None  # this epoch's factor on the augmentation probabilities, when scheduled
        self.budget = None  # the run's BudgetPlanner under a time budget (`fit`): it sizes the epochs
        self.optimizer, self.scheduler, self.schedule = build_optimizer_and_scheduler(
            self.model.parameters(), config.optimizer, config.epochs * iters, iters)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.precision.use_grad_scaler)

    def _restore(self, saved: dict) -> None:
        """Weights, optimizer, scheduler, scaler, history and this rank's RNG states from `saved`."""
        from medseg.training import checkpoint as ckpt

        config, dist, state_path = self.config, self.dist, self.out_dir / ckpt.STATE_FILE
        try:  # the state's own weights: model_last.pt may be a kill away from them
            self.model.load_state_dict(saved["model"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{state_path}: its weights do not fit the {config.model.name} this plan builds ({first}); "
                             "train without --resume") from None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if not saved.get("budget"):  # a budgeted run's schedule ends where its plan does (budget.start)
            self.schedule.total = config.epochs * self.iters  # --epochs on a finished run stretches the curve from here
        self.scheduler.lr_lambdas = [self.schedule]
        if saved.get("grad_scaler"):
            self.scaler.load_state_dict(saved["grad_scaler"])
        self.start_epoch = int(saved["epoch"]) + 1
        self.history = saved["history"]
        self.best_ema = saved["best_ema"] if saved["best_ema"] is not None else -math.inf
        self.ema = saved["ema"]
        self.run_id = saved.get("run_id")
        rngs = saved["rng"]  # one per rank
        if len(rngs) == dist.world_size:
            ckpt.set_rng_states(rngs[dist.rank])
        else:
            ckpt.seed_everything(config.seed + dist.rank + 7919 * self.start_epoch)
            self.echo(f"the checkpoint was written by {len(rngs)} process(es), this run has {dist.world_size}: "
                      "RNG states re-seeded, so dropout draws differ from an uninterrupted run")
        preempt.take_resume_state(self, saved)  # a preemption checkpoint continues mid-epoch
        if dist.is_main:
            ckpt.repair_weights(self.out_dir, saved, "model_last.pt", "model_best.pt")
        if self.start_epoch >= config.epochs:
            self.echo(f"already trained {self.start_epoch} epochs; pass --epochs N (> {self.start_epoch}) to extend the run")

    def _build_loader(self) -> None:
        """The patch dataset over global sample indices and this rank's share of every global batch."""
        from medseg.data.sampler import PatchDataset, plan_spacing_for_patch
        from medseg.training.loop import default_workers

        config, dist, conf = self.config, self.dist, self.conf
        if config.batch_size % dist.world_size:
            raise ConfigError(f"batch_size {config.batch_size} does not split over {dist.world_size} processes; "
                              f"set batch_size to a multiple of {dist.world_size} or change --nproc_per_node")
        self.per_rank_batch = per_rank = config.batch_size // dist.world_size
        self.augment_spacing = spacing = plan_spacing_for_patch(self.plan.target_spacing, conf.slice_axis, conf.spatial_dims)
        transform = build_train_transforms(config.augment, config.patch_size, spacing)
        self.dataset = PatchDataset(
            self.workdir, self.train_ids, config.patch_size,
            self.iters * config.batch_size,  # global sample indices: the same patches at any world size
            foreground_prob=config.foreground_oversampling, slice_axis=conf.slice_axis, transform=transform,
            seed=config.seed, rank=0,
        )
        # rank r's share of global batch b: samples b*B + r*B/N ... b*B + (r+1)*B/N - 1
        self.my_samples = [it * config.batch_size + dist.rank * per_rank + j for it in range(self.iters) for j in range(per_rank)]
        self.workers = config.num_workers if config.num_workers is not None else default_workers(self.device_type)

    def _wrap_model(self) -> None:
        """`train_model`: the model under DDP and/or torch.compile; validation and checkpoints use `model`."""
        import torch

        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters stays False: every parameter gets a gradient each step (side heads only with
            # deep supervision), which tests/training/test_distributed.py checks for every model and preset
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.device_type == "cuda" else None, find_unused_parameters=False)
        if self.config.compile:
            # fuses norms, activations and casts around the convolutions; validation and the saved weights use
            # `model` itself, so compiling changes neither the bundle nor the checkpoints
            self.train_model = torch.compile(self.train_model)

    # -- one epoch --------------------------------------------------------------------------------

    def iterations_in(self, epoch: int) -> int:
        """Optimizer steps of `epoch`: `iters`, except a time budget's last epoch, which may be shorter."""
        return self.budget.iterations_in(epoch) if self.budget is not None else self.iters

    def _set_augment_strength(self, epoch: int) -> None:
        """This epoch's transforms under a scheduled `augment.strength_start -> _end` (see `scheduled_transforms`)."""
        scheduled = scheduled_transforms(self.config.augment, self.config.patch_size, self.augment_spacing,
                                         self.schedule.progress(epoch * self.iters))  # the epochs before the last are whole
        if scheduled is not None:
            self.augment_strength, self.dataset.transform = scheduled
            self.history.setdefault("augment_strength", {})[str(epoch)] = self.augment_strength

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of optimizer steps; returns its metrics (loss averaged over ranks, lr, speed)."""
        import torch

        from medseg.data.sampler import seed_worker
        from medseg.training.distributed import mean_over_ranks

        config, device, fmt = self.config, self.device, self.fmt
        t0 = time.monotonic()
        self.dataset.set_epoch(epoch)
        self._set_augment_strength(epoch)
        skip, losses = preempt.resume_point(self, epoch)  # (0, []) unless resumed mid-epoch
        steps = self.iterations_in(epoch)
        samples = self.my_samples[skip * self.per_rank_batch:steps * self.per_rank_batch]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.per_rank_batch, sampler=samples, num_workers=self.workers,
            worker_init_fn=seed_worker if self.workers else None, pin_memory=self.device_type == "cuda", drop_last=True,
        )
        self.train_model.train()
        batches = iter(loader)  # draws the loader's seed from the torch RNG
        preempt.restore_rng(self)
        if preempt.requested(self):  # a signal during the last validation or checkpoint: stop before this epoch
            preempt.stop(self, epoch, skip, losses)
        for it, batch in enumerate(batches, start=skip):
            image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
            target = batch["label"].to(device, non_blocking=True)
            if self.prompter is not None:  # a promptable model: one object per sample, simulated prompts as inputs
                image, target = self.prompter(self.train_model, image, target)
                image = image.contiguous(memory_format=fmt)
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                out = self.train_model(image)
            # the loss in float32, outside autocast
            out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
            loss = self.loss_fn(out, target)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            losses.append(float(loss.detach()))
            if self.progress is not None and self.dist.is_main:
                self.progress(it + 1, steps, losses[-1])
            if preempt.requested(self):  # SIGTERM / SIGUSR1 on any rank: checkpoint here, exit resumable
                preempt.stop(self, epoch, it + 1, losses)
        train_loss = mean_over_ranks(self.dist, float(np.mean(losses)))
        self.history["train_loss"].append(train_loss)
        self.history.setdefault("lr", []).append(float(self.optimizer.param_groups[0]["lr"]))  # for the learning curves
        epoch_time = time.monotonic() - t0
        scheduled = {} if self.augment_strength is None else {"augment_strength": self.augment_strength}
        return {"train_loss": train_loss, "lr": float(self.optimizer.param_groups[0]["lr"]), "epoch_time_s": epoch_time,
                "samples_per_s": (steps - skip) * config.batch_size / max(epoch_time, 1e-9), **scheduled}

    def validate_epoch(self, epoch: int, metrics: dict[str, float]) -> tuple[dict[str, float], dict | None]:
        """Validation Dice of this epoch (every rank its share of the cases), its EMA into `metrics`
        and the history; returns (Dice per class and "mean", the new best weights on the main rank or None)."""
        from medseg.training.validation import smoothed, validate

        t_val = time.monotonic()
        val_dice = validate(self.eval_model, self.workdir, self.val_ids, self.run_plan, self.config, self.precision,
                            self.device, self.labels, self.dist)
        mean = val_dice["mean"]
        metrics["val_time_s"] = time.monotonic() - t_val  # a cost the time budget plans with
        self.ema = smoothed(self.ema, mean, self.config.ema_alpha)  # lags the raw Dice: for the checkpoint choice only
        self.history["val_mean"].append([epoch, mean])
        self.history["ema"].append([epoch, self.ema])
        self.history.setdefault("val_dice", []).append([epoch, {k: v for k, v in val_dice.items() if k != "mean"}])
        metrics.update({f"val_dice_{name}": v for name, v in val_dice.items()})
        metrics["val_dice_smoothed"] = self.ema  # the headline is val_dice_mean, the raw Dice
        best_state = None
        if self.ema > self.best_ema:
            self.best_ema = self.ema
            if self.dist.is_main:
                best_state = self._weights()
        return val_dice, best_state

    def _weights(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.eval_model.state_dict().items()}

    # -- the run ----------------------------------------------------------------------------------

    def _epochs(self):
        """start_epoch, ... while below `self.config.epochs`, which a time budget re-sizes as it runs."""
        epoch = self.start_epoch
        while epoch < self.config.epochs:
            yield epoch
            epoch += 1

    def fit(self, max_minutes: float | None = None, budget=None):
        """Epochs from `start_epoch` to `config.epochs` (or until `max_minutes`, with a checkpoint),
        then post-processing selection and the run's artifacts; returns a `loop.TrainResult`.
        budget: a `medseg.training.budget.BudgetPlanner` that sizes the epochs to its time budget."""
        from medseg.training import budget as budget_glue
        from medseg.training import checkpoint as ckpt
        from medseg.training.artifacts import log_artifacts
        from medseg.training.distributed import any_rank, barrier, cleanup, gather_objects
        from medseg.training.loop import TrainResult, state_checksum

        config, dist, echo = self.config, self.dist, self.echo
        t_start = time.monotonic()
        val_dice: dict[str, float] = {}
        stopped = False
        epoch = self.start_epoch - 1
        try:
            self.budget = budget
            if budget is not None:
                budget_glue.start(self, budget)
            for epoch in self._epochs():
                metrics = self.train_epoch(epoch)
                best_state = None
                last_epoch = epoch == self.config.epochs - 1
                over_time = max_minutes is not None and (time.monotonic() - t_start) / 60 >= max_minutes
                stop = any_rank(dist, over_time)  # stopping early still validates, so the checkpoint has a score
                due = budget.should_validate(epoch) if budget is not None else (epoch + 1) % config.validate_every == 0
                if self.validates and (due or last_epoch or stop):
                    val_dice, best_state = self.validate_epoch(epoch, metrics)
                elif (self.fold is None or self.prompter is not None) and dist.is_main:
                    best_state = self._weights()  # no validation: last is best
                if budget is not None:  # measured costs in, the epochs (and LR schedule) re-sized when due
                    budget_glue.after_epoch(self, budget, epoch, metrics)
                rng_per_rank = gather_objects(dist, ckpt.rng_states())
                if dist.is_main:
                    self.tracker.log_metrics(metrics, step=epoch)
                    self.checkpoints.write(epoch, best_state, rng_per_rank, history=self.history, best_ema=self.best_ema,
                                           ema=self.ema, run_id=self.run_id)
                    dice_text = f", val Dice {val_dice['mean']:.4f} (smoothed {self.ema:.4f}, picks the best checkpoint)" if "val_dice_mean" in metrics else ""
                    echo(f"epoch {epoch + 1}/{self.config.epochs}: loss {metrics['train_loss']:.4f}, lr {metrics['lr']:.2e}, "
                         f"{metrics['epoch_time_s']:.1f} s, {metrics['samples_per_s']:.1f} samples/s{dice_text}")
                if stop and epoch < self.config.epochs - 1:
                    stopped = True
                    if dist.is_main:
                        echo(f"--max-minutes {max_minutes} reached: stopped after epoch {epoch + 1} with a checkpoint; continue with --resume")
                    break
            barrier(dist)  # every rank returns with the last checkpoint on disk (a following --resume reads it)
            checksum = state_checksum(self.model)
            if dist.is_main:
                if not stopped and self.prompter is None:  # keep-largest-component steps chosen on validation (issue 14; fold_none: the CV folds')
                    from medseg.postprocess.select import select_for_fold

                    select_for_fold(self.tracker, self.workdir, self.out_dir, self.val_ids, self.run_plan, config,
                                    self.precision, self.device, echo)
                log_artifacts(self.tracker, self.workdir, self.out_dir, self.history, self.eval_model, self.val_ids,
                              self.run_plan, config, self.precision, self.device)
                if budget is not None:
                    self.budget_summary = budget_glue.finish(self, budget)
                self.tracker.end()
        except KeyboardInterrupt:
            if self.tracker is not None:
                self.tracker.end("KILLED")  # stopped by the user, not a failure; the last checkpoint resumes
            raise
        except BaseException:
            if self.tracker is not None:
                self.tracker.end("FAILED")
            raise
        finally:
            cleanup(dist)
        best_ema = None if self.best_ema == -math.inf else self.best_ema
        return TrainResult(self.out_dir, epoch + 1, self.history["train_loss"], val_dice, best_ema, self.run_id,
                           self.precision.resolved.value, checksum, stopped)
