"""Writing checkpoints: atomically (a crash during a save never leaves a half-written file), and
``last.ckpt`` at every point a run could be resumed from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mt.atomic import atomic_write
from mt.compat import mark_checkpoint_saved, save_last_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves through ``atomic_write``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as handle:
            torch.save(checkpoint, handle)


class LastCheckpoint(ModelCheckpoint):
    """The ``last.ckpt`` writer: after every validation, at the end of every epoch and of training,
    and every ``every_n_train_steps`` updates; after a resume, not again until the next update.

    Lightning's ``save_last`` only writes ``last.ckpt`` at a validation or epoch end where it also
    saved a top-k checkpoint, which this writer (``save_top_k=0``) never does: without the hooks
    below, a run killed before its end had no ``last.ckpt`` to resume from. And Lightning forgets the
    step it last saved at, so the first batch after a resume, inside an accumulation window, would
    save a checkpoint whose data position is ahead of its weights.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        mark_checkpoint_saved(self, trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)
