"""Train for a wall-clock budget (`medseg train --time-budget 60m`, `time_budget:` in a config).

nnU-Net and MONAI count epochs; a user with a CPU, a deadline or a bill counts minutes. A fixed
schedule cut by a clock (`--max-minutes`) never anneals its learning rate. Here the number of
epochs is sized from measured costs, so the whole schedule (warm-up, decay to its final LR), the
final validation and the bundle end within the budget:

1. Warm-up: the first epoch runs on the config's schedule length and (when the fold has
   validation cases) validates, which measures a step (data loading included) and a validation.
2. Plan: the most iterations for which elapsed + training + validations + final validation +
   post-processing choice and artifacts <= budget * (1 - safety), with each step costed half the
   margin slower than measured (a cushion, so that noise neither overruns nor re-plans). They run
   as whole epochs plus a shorter last one (`last_iterations`, at least a tenth of an epoch): the
   plan lands within a few steps of the budget however long an epoch is. Intermediate validations
   are thinned (validate_every raised) when they would take more than `max_val_fraction` of the time left.
3. Re-plan after any epoch whose step time differs from the plan's by more than twice `margin`
   (another process arrived or left), after two whose mean step time differs by more than `margin`,
   after a validation that differs by more than `margin` (and, over the validations left, by a quarter epoch), when the projection overruns the budget, or once the
   time saved by slightly faster epochs holds a quarter of an epoch (and 1% of the budget). The LR
   schedule is re-sized continuously (`LrSchedule.retarget`) to the plan's total iterations: it never jumps and always ends at
   its final LR; a re-plan keeps at least one more epoch to get there, and the planned last epoch
   is never re-planned (never stops mid-schedule). An overrun is thus bounded by about one epoch.

DDP: every rank passes the maximum over ranks of its times (`max_over_ranks`), so the slowest
rank sets the pace and every rank computes the same plan. Resume: `state_dict()` (budget, time
spent, plan) is saved in training_state.pt; a resumed run gets the budget minus the time spent.

`BudgetPlanner` is pure logic over an injectable clock (tests drive it with a fake one); the
trainer glue is `start`, `after_epoch` and `finish` at the end of this module.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from medseg.errors import ConfigError

_UNITS = {"s": 1 / 60, "sec": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, "hr": 60.0}


def parse_minutes(value, what: str = "--time-budget") -> float:
    """'90s' / '60m' / '1.5h' / '45' (plain: minutes) / a number -> minutes (> 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h|hr)?\s*", str(value), re.I)
        if not m:
            raise ConfigError(f"{what} {value!r}: expected a duration such as 90s, 60m, 1.5h or plain minutes (45)")
        minutes = float(m.group(1)) * _UNITS[(m.group(2) or "m").lower()]
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ConfigError(f"{what} {value!r}: the budget must be a positive duration, e.g. 60m")
    return minutes


@dataclass
class SchedulePlan:
    """One (re-)plan: epochs in total (0-based epochs 0 .. total_epochs-1), the iterations of the last
    one (1 .. iterations_per_epoch; the others are whole), validation interval and the costs it
    assumed, in seconds; `projected_s`: elapsed time at the projected end (costs as measured)."""

    total_epochs: int
    last_iterations: int
    validate_every: int
    epoch_s: float  # one epoch's training (iterations x step time, loader start included)
    overhead_s: float  # per epoch besides training and validation (checkpoint, logging)
    val_s: float
    final_s: float  # after the last epoch: post-processing choice, plots, artifacts
    projected_s: float
    made_after_epoch: int  # -1: never
    reason: str


class BudgetPlanner:
    """Sizes and re-sizes the epochs of one run to `budget_s` seconds (see the module docstring).

    clock: seconds, monotonic; the budget starts at `started_at` (default: the clock at
    construction), minus `spent_s` already used by the run before a resume. validate_every: the config's interval
    (the plan may only raise it). has_validation: the fold has validation cases.
    """

    def __init__(self, budget_s: float, iterations_per_epoch: int, *, initial_epochs: int, validate_every: int,
                 has_validation: bool, min_epochs: int = 2, clock: Callable[[], float] = time.monotonic,
                 spent_s: float = 0.0, margin: float = 0.15, safety: float = 0.03, max_val_fraction: float = 0.15,
                 final_fixed_s: float = 3.0, started_at: float | None = None):
        self.budget_s, self.iters, self.clock = float(budget_s), int(iterations_per_epoch), clock
        self.validate_every, self.has_validation = int(validate_every), bool(has_validation)
        self.min_epochs, self.margin, self.safety, self.max_val_fraction = int(min_epochs), margin, safety, max_val_fraction
        self.final_fixed_s = final_fixed_s
        self.spent_s, self.t0 = float(spent_s), clock() if started_at is None else float(started_at)
        self.plan = SchedulePlan(max(int(initial_epochs), self.min_epochs), self.iters, self.validate_every, math.nan, 0.0,
                                 math.nan, math.nan, math.nan, -1, "initial")
        self.history: list[dict] = []  # every plan made, as dicts (logged and saved)
        self.resumed = spent_s > 0
        self._last_mark: float | None = None  # elapsed at the previous epoch end
        self._since_plan: list[float] = []  # training seconds of the epochs since the current plan

    # -- queries ----------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.spent_s + self.clock() - self.t0

    @property
    def total_epochs(self) -> int:
        return self.plan.total_epochs

    @property
    def total_iterations(self) -> int:
        """Optimizer steps of the whole plan: the LR schedule's length."""
        return (self.plan.total_epochs - 1) * self.iters + self.plan.last_iterations

    def iterations_in(self, epoch: int) -> int:
        return self.plan.last_iterations if self.is_last(epoch) else self.iters

    def is_last(self, epoch: int) -> bool:
        return epoch >= self.plan.total_epochs - 1

    def should_validate(self, epoch: int) -> bool:
        """The warm-up epoch (to measure a validation), every plan's interval, and the last epoch."""
        if not self.has_validation:
            return False
        if math.isnan(self.plan.val_s) and not self.history:
            return True
        return self.is_last(epoch) or (epoch + 1) % self.plan.validate_every == 0

    # -- planning ---------------------------------------------------------------------------------

    def _mid_validations(self, first: int, n: int, every: int) -> int:
        """Validations before the last of epochs first .. first+n-1 at interval `every`."""
        last = first + n - 1
        return sum(1 for e in range(first, last) if (e + 1) % every == 0)

    def _size(self, next_epoch: int, elapsed: float, epoch_s: float, overhead_s: float, val_s: float,
              final_s: float) -> tuple[int, int, int, float]:
        """(epochs left n >= 1, iterations of the last of them, validate_every, projected end at the
        measured costs) for the time left after `elapsed`. Steps are costed half the margin slower
        than measured; a last epoch shorter than a tenth of an epoch is not worth its overhead."""
        left = self.budget_s * (1 - self.safety) - elapsed
        fixed = (val_s if self.has_validation else 0.0) + final_s
        padded = epoch_s * (1 + self.margin / 2)
        step = padded / self.iters
        min_last = max(1, math.ceil(self.iters / 10))
        every = self.validate_every
        while True:
            n = max(1, int((left - fixed) // max(padded + overhead_s, 1e-9)) + 1)
            while True:
                mids = self._mid_validations(next_epoch, n, every) * val_s if self.has_validation else 0.0
                room = left - fixed - mids - n * overhead_s - (n - 1) * padded  # seconds for the last epoch's steps
                last = min(self.iters, int(room // max(step, 1e-9)))
                if last >= min_last or n == 1:
                    break
                n -= 1
            if mids <= self.max_val_fraction * max(left, 0.0) or every > n:
                break
            every = every * 2  # fewer validations, each still whole
        last = max(last, min_last)  # nothing fits: the shortest schedule that still anneals (the overrun is printed)
        projected = elapsed + (n - 1 + last / self.iters) * epoch_s + n * overhead_s + mids + fixed
        return n, last, every, projected

    def epoch_done(self, epoch: int, train_s: float, val_s: float | None = None,
                   elapsed_s: float | None = None) -> SchedulePlan | None:
        """Record epoch `epoch` (0-based): its training seconds and, if it validated, the
        validation's; `elapsed_s` (the max over ranks under DDP) defaults to the clock's.
        Returns the new plan when it re-planned, else None (also after the planned last epoch)."""
        elapsed = self.elapsed() if elapsed_s is None else float(elapsed_s)
        since = elapsed - (self._last_mark if self._last_mark is not None else elapsed - train_s - (val_s or 0.0))
        self._last_mark = elapsed
        overhead = max(0.0, since - train_s - (val_s or 0.0))
        if self.is_last(epoch):
            return None
        old = self.plan
        new_val = old.val_s if val_s is None else float(val_s)
        if math.isnan(new_val):
            new_val = 0.0 if not self.has_validation else train_s  # no validation measured yet: guess one epoch
        self._since_plan.append(float(train_s))
        reason, epoch_s = self._reason(old, epoch, val_s)
        if reason is None:
            limit = self.budget_s * (1 - self.safety)
            projected = self._project(epoch, elapsed, epoch_s, overhead, new_val)
            if projected > limit:
                reason = f"projected {projected / 60:.2f} min overruns the budget"
            else:
                # epochs a little faster than planned (inside the margin) add up: once the time saved
                # holds a quarter of an epoch (and 1% of the budget), with every epoch left costed as a
                # plan costs them (the median since the plan, 2+ epochs, plus half the margin), use it
                if len(self._since_plan) < 2:
                    return None
                slack = limit - self._project(epoch, elapsed, epoch_s * (1 + self.margin / 2), overhead, new_val)
                if slack < max(0.25 * epoch_s, 0.01 * self.budget_s):
                    return None
                reason = f"{slack / 60:.2f} min saved: room for more iterations"
        final_s = 1.1 * new_val + self.final_fixed_s if self.has_validation else self.final_fixed_s
        n, last, every, projected = self._size(epoch + 1, elapsed, epoch_s, overhead, new_val, final_s)
        total = max(epoch + 1 + n, self.min_epochs)
        same = self.history and reason != "resume" and (total, last, every) == (old.total_epochs, old.last_iterations, old.validate_every)
        self.plan = SchedulePlan(total, last, every, float(epoch_s), overhead, new_val, final_s, projected, epoch, reason)
        self._since_plan = []
        if same:  # new costs, the same schedule: nothing to re-size
            return None
        self.history.append(asdict(self.plan))
        return self.plan

    def _reason(self, old: SchedulePlan, epoch: int, val_s: float | None) -> tuple[str | None, float]:
        """(why to re-plan or None, the epoch time to plan with), from the epochs since the plan. A
        step-time change counts at once when it exceeds twice the margin (a process arrived or left),
        else only when the mean of the last two epochs exceeds the margin: one epoch slowed by a
        neighbour's burst does not re-size the schedule back and forth. Otherwise the epochs left are
        costed at the median of the last 5 (one odd epoch does not move it)."""
        since = self._since_plan
        if math.isnan(old.epoch_s):
            return ("resume" if self.resumed else "warm-up measured"), since[-1]
        candidates = [(since[-1], 2 * self.margin)]
        if len(since) >= 2:
            candidates.append(((since[-1] + since[-2]) / 2, self.margin))
        for seconds, limit in candidates:
            change = seconds / old.epoch_s - 1
            if abs(change) > limit:
                return f"step time {old.epoch_s / self.iters:.3f} -> {seconds / self.iters:.3f} s ({change:+.0%})", seconds
        typical = statistics.median(since[-5:])
        if val_s is not None and self.has_validation and old.val_s > 0 and abs(val_s / old.val_s - 1) > self.margin:
            # only when it matters: the validations left, at the new cost, move the end by a quarter
            # epoch (a 2 s validation taking 2.8 s does not)
            n = old.total_epochs - 1 - epoch
            left = self._mid_validations(epoch + 1, n, old.validate_every) + 2  # the mid ones, the last epoch's, the final
            if abs(val_s - old.val_s) * left >= 0.25 * typical:
                return f"validation {old.val_s:.1f} -> {val_s:.1f} s ({val_s / old.val_s - 1:+.0%})", typical
        return None, typical

    def _project(self, epoch: int, elapsed: float, train_s: float, overhead: float, val_s: float) -> float:
        """Elapsed time at the end of the current plan with the costs just measured."""
        n = self.plan.total_epochs - 1 - epoch
        mids = self._mid_validations(epoch + 1, n, self.plan.validate_every) * val_s if self.has_validation else 0.0
        final = (val_s + 1.1 * val_s + self.final_fixed_s) if self.has_validation else self.final_fixed_s
        training = (n - 1 + self.plan.last_iterations / self.iters) * train_s if n > 0 else 0.0
        return elapsed + training + n * overhead + mids + final

    # -- resume -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain values for training_state.pt (loads with weights_only=True)."""
        return {"budget_s": self.budget_s, "spent_s": self.elapsed(), "plan": asdict(self.plan),
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved run: the time it spent counts against the budget; its plan continues."""
        self.spent_s = float(state["spent_s"])
        self.resumed = True
        self.plan = SchedulePlan(**{"last_iterations": self.iters, **state["plan"]})  # states before partial epochs: whole
        self.plan.epoch_s = math.nan  # this machine's speed is measured anew: the first epoch re-plans
        self.history = [dict(h) for h in state.get("history", [])]

    def epochs_text(self, plan: SchedulePlan | None = None) -> str:
        """"12 epochs x 100 it (the last 81)"."""
        p = plan or self.plan
        last = f" (the last {p.last_iterations})" if p.last_iterations != self.iters else ""
        return f"{p.total_epochs} epochs x {self.iters} it{last}"

    def describe(self, plan: SchedulePlan | None = None) -> str:
        p = plan or self.plan
        val = f", validate every {p.validate_every} epoch(s)" if self.has_validation else ""
        return (f"{self.epochs_text(p)} (step {p.epoch_s / self.iters:.3f} s{val}), "
                f"projected {p.projected_s / 60:.2f} of {self.budget_s / 60:.2f} min")


# -- trainer glue -----------------------------------------------------------------------------------

def max_over_ranks(dist, values: list[float]) -> list[float]:
    """Element-wise maximum over ranks (every rank gets it): the slowest rank sets the pace."""
    if not dist.enabled:
        return [float(v) for v in values]
    import torch
    import torch.distributed as tdist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def tracked(trainer) -> bool:
    """Whether the run logs plots and the bundle to MLflow at its end (the main rank's tracker, told
    to every rank so all plan alike; a collective: every rank calls it)."""
    active = float(bool(getattr(trainer.tracker, "active", False)))
    return max_over_ranks(trainer.dist, [active])[0] > 0


def make_planner(config, saved: dict | None, *, has_validation: bool, clock: Callable[[], float] = time.monotonic,
                 started_at: float | None = None, tracked: bool = False):
    """The run's planner, or None when the config has no time_budget; a resumed run continues its own.
    started_at: the clock when the run (its set-up included) began; tracked: the end logs plots and
    the bundle to MLflow (seconds more, reserved)."""
    if config.time_budget is None:
        return None
    warmup = config.optimizer.warmup_epochs if config.optimizer.schedule == "cosine" else 0
    planner = BudgetPlanner(config.time_budget * 60, config.iterations_per_epoch, initial_epochs=config.epochs,
                            validate_every=config.validate_every, has_validation=has_validation,
                            min_epochs=max(2, warmup + 1), clock=clock, started_at=started_at,
                            final_fixed_s=10.0 if tracked else 3.0)
    if saved is not None:
        if not saved.get("budget"):
            raise ConfigError("--resume: this run was not trained with a time budget; resume it without --time-budget "
                              "(and without time_budget in its config)")
        planner.load_state_dict(saved["budget"])
    return planner


def start(trainer, planner: BudgetPlanner) -> None:
    """Before the first epoch: the schedule spans the planner's plan (a resumed run's own, whose
    scheduler state already ends there); checkpoints save its state."""
    trainer.checkpoints.budget = planner
    if (trainer.config.epochs, trainer.schedule.total) != (planner.total_epochs, planner.total_iterations):
        _set_plan(trainer, planner, step=trainer.start_epoch * trainer.iters)
    if trainer.dist.is_main:
        left = planner.budget_s - planner.elapsed()
        trainer.echo(f"time budget: {planner.budget_s / 60:.2f} min ({left / 60:.2f} left); "
                     f"warm-up on {planner.total_epochs} epochs x {trainer.iters} it, then sized to the budget")
        if trainer.tracker is not None and not planner.resumed:
            trainer.tracker.log_params({"budget.minutes": round(planner.budget_s / 60, 4), "budget.margin": planner.margin,
                                        "budget.safety": planner.safety})


def _set_plan(trainer, planner: BudgetPlanner, step: int) -> None:
    """The trainer's epochs and the LR schedule's end follow the plan (the last epoch's iterations the
    trainer asks the planner for: `Trainer.iterations_in`)."""
    trainer.config = trainer.config.model_copy(update={"epochs": planner.total_epochs})
    trainer.checkpoints.config = trainer.config  # the saved config (and a resume) follow the plan
    if step > 0:
        trainer.schedule.retarget(step, planner.total_iterations)
    else:
        trainer.schedule.total = planner.total_iterations


def after_epoch(trainer, planner: BudgetPlanner, epoch: int, metrics: dict) -> None:
    """After epoch `epoch`'s training and validation: record its costs, re-plan when due."""
    train_s, val_s, elapsed = max_over_ranks(
        trainer.dist, [metrics["epoch_time_s"], metrics.get("val_time_s", -1.0), planner.elapsed()])
    plan = planner.epoch_done(epoch, train_s, val_s if val_s >= 0 else None, elapsed_s=elapsed)
    metrics["budget_elapsed_min"] = elapsed / 60
    if plan is None:
        return
    old_total = trainer.config.epochs
    _set_plan(trainer, planner, step=(epoch + 1) * trainer.iters)
    metrics.update({"budget_total_epochs": plan.total_epochs, "budget_total_iterations": planner.total_iterations,
                    "budget_projected_min": plan.projected_s / 60,
                    "budget_step_s": plan.epoch_s / trainer.iters, "budget_validate_every": plan.validate_every,
                    "budget_replans": len(planner.history) - 1})
    if trainer.dist.is_main:
        word = "plan" if len(planner.history) == 1 else f"re-plan {len(planner.history) - 1}"
        trainer.echo(f"time budget {word} after epoch {epoch + 1} ({plan.reason}): {old_total} -> {planner.describe(plan)}")
        per_epoch = plan.epoch_s + plan.overhead_s
        if len(planner.history) == 1 and per_epoch > 0.1 * planner.budget_s:
            fits = max(1, int(0.05 * planner.budget_s / max(plan.epoch_s / trainer.iters, 1e-9)))
            trainer.echo(f"time budget: an epoch takes {per_epoch:.0f} s, over a tenth of the budget, and the plan can react "
                         f"to a change of speed only once an epoch; --iterations-per-epoch {fits} would make epochs of about 5% of it")
        if plan.projected_s > planner.budget_s:
            trainer.echo(f"time budget: even one more epoch ends {(plan.projected_s - planner.budget_s) / 60:.2f} min "
                         "past the budget; finishing the schedule anyway (give a larger budget or fewer iterations per epoch)")


def finish(trainer, planner: BudgetPlanner) -> dict:
    """After the artifacts: the summary (planned vs used) logged, printed and returned."""
    used = planner.elapsed()
    first = planner.history[0] if planner.history else asdict(planner.plan)
    summary = {"budget_min": planner.budget_s / 60, "used_min": used / 60, "epochs": trainer.config.epochs,
               "iterations": planner.total_iterations, "replans": max(0, len(planner.history) - 1),
               "first_plan_epochs": first["total_epochs"], "plans": planner.history}
    if trainer.dist.is_main:
        trainer.echo(f"time budget: used {used / 60:.2f} of {planner.budget_s / 60:.2f} min; {planner.epochs_text()} "
                     f"= {summary['iterations']} iterations, first plan {first['total_epochs']} epochs, "
                     f"{summary['replans']} re-plan(s)")
        if trainer.tracker is not None:
            trainer.tracker.log_metrics({"budget_used_min": used / 60, "budget_replans": summary["replans"]},
                                        step=trainer.config.epochs - 1)
    return summary
