"""Writing checkpoints: atomically (a crash during a save never leaves a half-written file), and
``last.ckpt`` at every point a run could be resumed from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mt import faults
from mt.atomic import atomic_write
from mt.compat import is_last_batch, mark_checkpoint_saved, save_last_checkpoint, validates_after_this_batch


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves through ``atomic_write``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as error:  # torch's zip writer turns a failed write (a full disk) into this
                if isinstance(error.__context__, OSError):
                    cause = error.__context__
                    raise OSError(cause.errno, cause.strerror, str(path)) from None
                raise
            faults.point("checkpoint_write", path)


class LastCheckpoint(ModelCheckpoint):
    """The ``last.ckpt`` writer: after every validation, at the end of every epoch and of training,
    and every ``every_n_train_steps`` updates; after a resume, not again until the next update.

    Lightning's ``save_last`` only writes ``last.ckpt`` at a validation or epoch end where it also
    saved a top-k checkpoint, which this writer (``save_top_k=0``) never does: without the hooks
    below, a run killed before its end had no ``last.ckpt`` to resume from. And Lightning forgets the
    step it last saved at, so the first batch after a resume, inside an accumulation window, would
    save a checkpoint whose data position is ahead of its weights.

    The final update and an epoch's last update are saved when they end (``on_train_batch_end``), not at
    ``on_train_end`` / ``on_train_epoch_end``: from those, Lightning restarts in a loop state that does not
    match the data position (a run stopped inside an epoch by ``max_steps`` or ``max_time`` counts as
    having finished it, and a restart at an epoch's end trains one batch more in it), and the resumed run
    differed from an uninterrupted one. Saved at the batch's end, the checkpoint resumes as every mid-run
    save does. A batch that a validation follows is saved when that validation ends, not before it: from a
    checkpoint of the batch's end Lightning takes the validation as run, and a kill during it lost it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._step_at_batch_end = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        mark_checkpoint_saved(self, trainer.global_step)
        self._step_at_batch_end = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        stepped = trainer.global_step != self._step_at_batch_end  # an update ended (not inside accumulation)
        self._step_at_batch_end = trainer.global_step
        if validates_after_this_batch(trainer):
            # Saved once, when that validation ends (on_validation_end). A checkpoint of now would tell Lightning
            # on resume that the validation had run: killed during it, the run would lose it for good.
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)  # the every_n_train_steps saves
        last_update = 0 < trainer.max_steps <= trainer.global_step or trainer.should_stop
        if stepped and (last_update or is_last_batch(trainer)):
            save_last_checkpoint(self, trainer)

    @property
    def saves_at_validation_end(self) -> Path:
        """The file this writer saves at every validation's end (so a preemption there need not save it too)."""
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a validation at the step just saved (an epoch's last batch, the last update), save again:
        # last.ckpt then carries the validation scores of its weights.
        mark_checkpoint_saved(self, -1)
        super().on_validation_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:  # debug=fast keeps no checkpoint; Lightning's on_train_end saves last.ckpt anyway
            return
        super().on_train_end(trainer, pl_module)
        save_last_checkpoint(self, trainer)
