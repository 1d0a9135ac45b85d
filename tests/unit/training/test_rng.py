"""Random states survive a checkpoint: after a restore, torch, NumPy and Python draw what they would have."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from mt.training.rng import RngStateCallback


def draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_restored_states_continue_every_stream_and_other_rank_counts_start_afresh():
    trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True)
    callback = RngStateCallback()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    draws()
    checkpoint: dict = {}
    callback.on_save_checkpoint(trainer, None, checkpoint)
    expected = draws()  # what an uninterrupted run draws next
    draws()  # a resumed process starts from other states
    restored = RngStateCallback()
    restored.on_load_checkpoint(trainer, None, checkpoint)
    restored.on_train_start(trainer, None)
    assert draws() == expected

    two_ranks = SimpleNamespace(world_size=2, global_rank=1, is_global_zero=False)
    other = RngStateCallback()
    other.on_load_checkpoint(two_ranks, None, checkpoint)  # states of 1 rank, a run of 2: not restored
    before = torch.get_rng_state()
    other.on_train_start(two_ranks, None)
    assert torch.equal(torch.get_rng_state(), before)
