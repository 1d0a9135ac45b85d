"""Random streams that survive a resume: each rank's torch, NumPy, Python (and CUDA) generator states
are stored in every checkpoint and restored at training start, so dropout after a resume draws the
numbers an uninterrupted run would have drawn."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from mt.training.distributed import gather_objects

log = logging.getLogger(__name__)

KEY = "rng_states"  # one state per rank, in rank order


def get_rng_state() -> dict[str, Any]:
    # Plain types only, so that ``torch.load(weights_only=True)`` (Lightning's resume) accepts them.
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [kind, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RngStateCallback(L.Callback):
    """Saves every rank's random states with each checkpoint and restores them on resume.

    On another number of ranks the states cannot be matched to ranks: dropout streams then start
    afresh (logged), while the data order goes on where it stopped (``TokenBatchSampler``).
    """

    def __init__(self) -> None:
        self._to_restore: list[dict[str, Any]] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = gather_objects(get_rng_state())  # a collective: every rank runs this hook

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._to_restore = checkpoint.get(KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._to_restore = self._to_restore, None
        if states is None:
            return
        if len(states) == trainer.world_size:
            set_rng_state(states[trainer.global_rank])
        elif trainer.is_global_zero:
            log.warning(
                "the checkpoint holds the random states of %d ranks and this run has %d: "
                "dropout streams start afresh (the data order goes on where it stopped)",
                len(states),
                trainer.world_size,
            )
