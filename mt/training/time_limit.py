"""``trainer.max_time``: Lightning's ``Timer``, whose ranks agree on the stop without a host sync at every batch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info

from mt.training.distributed import LaggedMax


class AgreedTimer(Timer):
    """Stops training after ``duration`` (``DD:HH:MM:SS``) of it, earlier runs of a resumed one included, at the
    end of an update: never inside an accumulation window, whose gradients no checkpoint holds (Lightning's
    ``Timer`` stops after any batch, and the checkpoint written at that stop resumed inexactly).

    Lightning's ``Timer`` also broadcasts rank 0's decision after every batch, a device tensor read back on the
    host: with NCCL, every batch waits for the device. Here the ranks agree through ``LaggedMax`` (any rank past
    the limit stops them all, one update later). Its state is saved under Lightning's key, so either resumes the
    other's checkpoints.
    """

    def __init__(self, duration: str) -> None:
        super().__init__(duration=duration, interval="step")
        self._agreement = LaggedMax()
        self._step_seen = 0

    @property
    def state_key(self) -> str:
        return "Timer"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step == self._step_seen:  # inside an accumulation window: no update ended
            return
        self._step_seen = trainer.global_step
        remaining = self.time_remaining()
        over = remaining is not None and remaining <= 0
        if trainer.world_size > 1:
            over = bool(self._agreement.exchange(float(over), trainer.strategy.root_device))
        if over and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"Time limit reached after {trainer.global_step} updates. Signaling Trainer to stop.")
