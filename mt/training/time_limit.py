"""``trainer.max_time``: Lightning's ``Timer``, whose ranks agree on the stop without a host sync at every batch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info

from mt.training.distributed import LaggedMax


class AgreedTimer(Timer):
    """Stops training after ``duration`` (``DD:HH:MM:SS``) of it, earlier runs of a resumed one included.

    Lightning's ``Timer`` broadcasts rank 0's decision after every batch, a device tensor read back on the host:
    with NCCL, every batch waits for the device. Here the ranks agree through ``LaggedMax`` (any rank past the
    limit stops them all, one batch later), and a single process decides as Lightning's does. Its state is saved
    under Lightning's key, so either resumes the other's checkpoints.
    """

    def __init__(self, duration: str) -> None:
        super().__init__(duration=duration, interval="step")
        self._agreement = LaggedMax()

    @property
    def state_key(self) -> str:
        return "Timer"

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.world_size == 1:
            return super().on_train_batch_end(trainer, *args, **kwargs)
        remaining = self.time_remaining()
        over = remaining is not None and remaining <= 0
        if self._agreement.exchange(float(over), trainer.strategy.root_device) and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"Time limit reached ({trainer.global_step} updates). Signaling Trainer to stop.")
