"""Atomic checkpoint writes: a failed save leaves the previous checkpoint whole and no stray files."""

from __future__ import annotations

import errno
import importlib

import pytest
import torch

from mt import faults
from mt.training.checkpointing import AtomicCheckpointIO


@pytest.fixture
def arm_fault(monkeypatch):
    """Arms a named fault point as ``MT_FAULT`` does (read when ``mt.faults`` is imported), then disarms it."""

    def arm(spec: str) -> None:
        monkeypatch.setenv("MT_FAULT", spec)
        importlib.reload(faults)

    yield arm
    monkeypatch.undo()
    importlib.reload(faults)


def test_save_then_failed_save_keeps_the_previous_checkpoint(tmp_path, arm_fault):
    arm_fault("checkpoint_write:2:ENOSPC")  # the second save fails with its bytes written, not yet renamed
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    with pytest.raises(OSError) as raised:
        io.save_checkpoint({"weights": torch.zeros(3)}, path)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert torch.equal(torch.load(path)["weights"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_save_replaces_the_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path)["step"] == 2
