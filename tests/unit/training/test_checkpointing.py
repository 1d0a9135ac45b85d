"""Atomic checkpoint writes: a failed save leaves the previous checkpoint whole and no stray files."""

from __future__ import annotations

import pytest
import torch

from mt.training.checkpointing import AtomicCheckpointIO


def test_save_then_failed_save_keeps_the_previous_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails half-way through the write
        io.save_checkpoint({"weights": torch.zeros(3), "unpicklable": lambda: None}, path)
    assert torch.equal(torch.load(path)["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_save_replaces_the_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path)["step"] == 2
