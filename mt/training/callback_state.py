"""What the checkpoint writers and early stopping take back from a checkpoint on resume.

Lightning's own restore goes wrong for mt in two ways:

- A ``ModelCheckpoint`` whose checkpoint records another directory than its own forgets its best score (and
  its top-k files), keeping only the best path, into the old directory. A run directory is meant to be
  movable, so a run moved or copied (``cp -a runs/A runs/B``) and resumed there replaced ``best.ckpt`` at its
  next validation with whatever model it had then, however much worse.
- ``EarlyStopping`` takes its ``patience`` from the checkpoint, so ``trainer.early_stopping_patience`` given
  on resume was silently ignored.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from mt.training.checkpointing import LastCheckpoint

log = logging.getLogger(__name__)


class SavedUnderBaseName:
    """A Lightning callback subclass whose state a checkpoint files under its base class's name, as before the
    subclass existed (Lightning keys a callback's state by its class name): checkpoints of either load into
    either, and a resumed older run keeps its best score, its kept checkpoints and its early-stopping count."""

    saved_as: str

    @property
    def state_key(self) -> str:
        key = super().state_key
        name = type(self).__qualname__
        return self.saved_as + key[len(name) :] if key.startswith(name) else key


class FollowsRunDirectory(SavedUnderBaseName):
    """A ``ModelCheckpoint`` mixin: resumed from a checkpoint in its own directory that records another one (the
    run directory was moved or copied), it keeps the saved best score and top-k files and finds them in its
    directory under the same names. Resumed from another run's checkpoint (``resume=PATH`` elsewhere), it does as
    Lightning does: this directory holds none of those files."""

    dirpath: str | None
    _resumed_from: str | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)  # Lightning calls it just before load_state_dict
        self._resumed_from = str(trainer.ckpt_path) if trainer.ckpt_path else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath")
        if (
            saved_dir
            and self.dirpath
            and saved_dir != self.dirpath
            and self._resumed_from
            and _resolved(os.path.dirname(self._resumed_from)) == _resolved(self.dirpath)
        ):
            moved = moved_state(state_dict, saved_dir, self.dirpath)
            best = moved.get("best_model_path")
            if not best or os.path.isfile(best):  # a last.ckpt copied alone into a new run is no moved run
                log.info(
                    "the run directory moved from %s to %s: its checkpoints' records follow it", saved_dir, self.dirpath
                )
                state_dict = moved
        super().load_state_dict(state_dict)


def moved_state(state_dict: dict[str, Any], old_dir: str, new_dir: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state saved in ``old_dir`` as if saved in ``new_dir``: each file under ``old_dir``
    (best, k-th best, last, the top-k) is named by the same path under ``new_dir``."""

    old_prefix = old_dir.rstrip("/" + os.sep)

    def follow(path: str) -> str:
        if path[len(old_prefix) : len(old_prefix) + 1] in ("/", os.sep) and path.startswith(old_prefix):
            return new_dir.rstrip("/" + os.sep) + path[len(old_prefix) :]
        return path

    state = dict(state_dict, dirpath=new_dir)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if state.get(key):
            state[key] = follow(state[key])
    if state.get("best_k_models"):
        state["best_k_models"] = {follow(path): score for path, score in state["best_k_models"].items()}
    return state


def _resolved(directory: str) -> str:
    return directory if "://" in directory else os.path.realpath(directory)


class RunCheckpoint(FollowsRunDirectory, ModelCheckpoint):
    """``ModelCheckpoint`` (best.ckpt, the kept step checkpoints) that follows its run directory on resume."""

    saved_as = "ModelCheckpoint"


class RunLastCheckpoint(FollowsRunDirectory, LastCheckpoint):
    """``LastCheckpoint`` (last.ckpt) that follows its run directory on resume."""

    saved_as = "LastCheckpoint"


class ConfiguredEarlyStopping(SavedUnderBaseName, EarlyStopping):
    """``EarlyStopping`` whose patience is the configured one also on resume; the count of validations without
    improvement and the best score so far are restored from the checkpoint."""

    saved_as = "EarlyStopping"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "patience": self.patience})
