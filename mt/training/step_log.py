"""Logs that reach as far as the checkpoints: a crash never leaves a hole in the learning curve.

Every checkpoint flushes the loggers, so the log holds at least every step up to the checkpoint the
run resumes from. One step needs more: a save from a callback's ``on_train_batch_end`` (the N-step
``last.ckpt``, preemption) comes before Lightning writes that step's logged values, so a kill in
between would lose that step for good (the resumed run starts after it). ``StepLog`` keeps the
values logged during the current update; a checkpoint saved then carries them, and the resumed run
writes them first.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor

from mt.compat import logged_step, logs_this_update


class StepLog:
    """The values logged during the current update, until Lightning writes them."""

    def __init__(self) -> None:
        self.pending: dict[str, Tensor | float] | None = None
        self.to_replay: dict[str, Any] | None = None

    def start_update(self) -> None:
        self.pending = {}

    def record(self, name: str, value: Tensor | float) -> None:
        if self.pending is not None:
            self.pending[name] = value

    def end_update(self) -> None:
        """Called from the module's ``on_train_batch_end``: after the callbacks' hooks (the saves),
        before Lightning writes the step's logs."""
        self.pending = None

    def save(self, trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
        """Flush the loggers, and store the values Lightning has not yet written for this step, if it
        will write them at all (a logging step, or the last)."""
        for logger in trainer.loggers:
            logger.save()
        if self.pending is None or not trainer.training:
            return
        if logs_this_update(trainer) or trainer.should_stop:
            checkpoint["unwritten_step_log"] = {
                "step": logged_step(trainer),
                "epoch": int(trainer.current_epoch),
                "metrics": {name: float(value) for name, value in self.pending.items()},
            }

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.to_replay = checkpoint.get("unwritten_step_log")

    def replay(self, trainer: L.Trainer) -> None:
        """Write the values a resumed checkpoint carried (at training start)."""
        step_log, self.to_replay = self.to_replay, None
        if step_log is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics({**step_log["metrics"], "epoch": step_log["epoch"]}, step=step_log["step"])
            logger.save()
