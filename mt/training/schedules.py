"""Learning-rate schedules: linear warm-up, then inverse square root, linear or cosine decay, or constant, never
below a floor; the linear and cosine decays reach the floor at the end of the run's budget, counted in updates
(``trainer.max_steps``) or in training time (``trainer.max_time``), so a time-limited run ends at its floor
instead of being cut mid-schedule.

The multiplier of the peak rate at update ``s`` (``w`` warm-up updates, floor ``f`` = ``optim.lr_floor / optim.lr``,
progress ``p`` in [0, 1] the fraction of the budget used after the warm-up):

    warm-up (s < w)   s / w                       (inverse_sqrt: min(s / w, sqrt(w / s)), as before)
    inverse_sqrt      max(f, sqrt(w / s))
    linear            f + (1 - f) (1 - p)
    cosine            f + (1 - f) (1 + cos(pi p)) / 2
    constant          1

Counted in updates ``p = (s - w) / (max_steps - w)``. Counted in time ``p = (t - t_w) / (max_time - t_w)``, ``t`` the
training seconds so far (resumed runs included: saved in checkpoints) and ``t_w`` those at the end of the warm-up
(kept in the scheduler's state); under DDP the clock is agreed on by the ranks (``TranslationModule.
shared_training_seconds``), so all ranks use the same rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

SCHEDULES = ("inverse_sqrt", "linear", "cosine", "constant")
BUDGETS = ("steps", "time")


def lr_factor(schedule: str, step: int, warmup: int, progress: float, floor: float) -> float:
    """The multiplier of the peak learning rate at update ``step`` (see the module docstring)."""
    step = max(step, 1)
    if schedule == "inverse_sqrt":
        return min(step / warmup, max(floor, math.sqrt(warmup / step)))
    if step < warmup:
        return step / warmup
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")


class WarmupDecay(torch.optim.lr_scheduler.LRScheduler):
    """``lr_factor`` as a torch scheduler, stepped once an update.

    Args:
        schedule, warmup_steps: the shape and its warm-up.
        floor: the lowest multiplier (``optim.lr_floor / optim.lr``).
        total_steps: the update budget (``budget="steps"``; unused by inverse_sqrt and constant).
        total_seconds, clock: the time budget and the training seconds so far (``budget="time"``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        schedule: str,
        warmup_steps: int,
        floor: float = 0.0,
        budget: str = "steps",
        total_steps: int | None = None,
        total_seconds: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if budget not in BUDGETS:
            raise ValueError(f"budget {budget!r}: expected one of {', '.join(BUDGETS)}")
        decays = schedule in ("linear", "cosine")
        if decays and budget == "steps" and not (total_steps and total_steps > warmup_steps):
            raise ValueError(f"a {schedule} decay over steps needs a step budget above the warm-up ({warmup_steps})")
        if decays and budget == "time" and (not total_seconds or clock is None):
            raise ValueError(f"a {schedule} decay over time needs a time budget and a clock")
        self.schedule, self.warmup_steps, self.floor, self.budget = schedule, warmup_steps, floor, budget
        self.total_steps, self.total_seconds = total_steps, total_seconds
        self.warmup_end_seconds: float | None = None  # t_w of a time budget, once the warm-up has ended
        self._clock = clock
        super().__init__(optimizer)

    def progress(self, step: int) -> float:
        """The fraction of the budget used after the warm-up (0 before it ends)."""
        if self.schedule not in ("linear", "cosine") or step < self.warmup_steps:
            return 0.0
        if self.budget == "steps":
            return (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        seconds = self._clock()
        if self.warmup_end_seconds is None:
            self.warmup_end_seconds = seconds
        remaining = self.total_seconds - self.warmup_end_seconds
        return 1.0 if remaining <= 0 else (seconds - self.warmup_end_seconds) / remaining

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        factor = lr_factor(self.schedule, step, self.warmup_steps, self.progress(step), self.floor)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_clock", None)  # a function of the running process, not state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore where the schedule stands (the update count, the end of the warm-up); its shape and budget
        stay this run's config, so a run extended with a larger budget decays over the larger one."""
        for key in ("last_epoch", "_step_count", "_last_lr", "warmup_end_seconds"):
            if key in state_dict:
                setattr(self, key, state_dict[key])
        if self.budget == "steps":  # the next update's rate under this run's budget (the optimizer holds the old)
            self._last_lr = self.get_lr()
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr
