"""An ordinary training step never makes the host wait for the device.

Every op that needs a tensor's value on the host (``item``, ``bool``, ``nonzero``, ...) is counted through a
``TorchDispatchMode`` around ``mt.train`` on the CPU, where it is the same op that would wait for a GPU. Logging
steps, validation and checkpoint saves may read values; every other step must read none, with the progress bar
on and a fused AdamW skipping non-finite updates on the device.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import with_callback

# Ops whose result depends on a tensor's value and so must wait for the device to compute it.
SYNC_OPS = {
    "_local_scalar_dense",  # item(), bool(), int(), float(), if tensor:
    "is_nonzero",
    "equal",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
    "allclose",
}


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.step = -1
        self.counts: dict[int, Counter] = defaultdict(Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNC_OPS:
            self.counts[self.step][name] += 1
        return func(*args, **(kwargs or {}))


class StepKinds(L.Callback):
    """Attributes every op to the update in progress, and marks the updates that log, validate or save."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter
        self.special: dict[int, set[str]] = defaultdict(set)

    def on_train_start(self, trainer, pl_module) -> None:
        self.counter.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self.counter.__exit__(None, None, None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.counter.step = trainer.global_step
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            self.special[trainer.global_step].add("logs")

    def on_validation_start(self, trainer, pl_module) -> None:
        self.special[self.counter.step].add("validates")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.special[self.counter.step].add("saves")


# Reads that never reach the dispatcher on the CPU (they copy the memory directly), counted by name.
HOST_READS = ("tolist", "numpy", "cpu")


def counted_run(toy_corpus_dir, tmp_path, monkeypatch, **overrides):
    counter = SyncCounter()
    kinds = StepKinds(counter)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            if counter.step >= 0:
                counter.counts[counter.step][_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    with_callback(monkeypatch, kinds)
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "trainer.max_steps": 60,
            "trainer.log_every_n_steps": 20,
            "trainer.enable_progress_bar": True,
            "test_after_training": False,
            **overrides,
        },
    )
    train(config, tmp_path)
    return counter.counts, kinds.special


@pytest.mark.parametrize(
    "overrides",
    [{}, {"optim.clip_norm": 0.0}, {"optim.ema_decay": 0.99}],
    ids=["clipping", "no clipping", "moving average"],
)
def test_ordinary_training_steps_make_no_host_sync(toy_corpus_dir, tmp_path, monkeypatch, overrides):
    counts, special = counted_run(toy_corpus_dir, tmp_path, monkeypatch, **overrides)
    ordinary = [step for step in range(60) if not special[step]]
    assert len(ordinary) >= 40  # the run had many ordinary steps (validation at epoch ends, logging at 19, 39, 59)
    syncing = {step: dict(counts[step]) for step in ordinary if counts[step]}
    assert syncing == {}, f"host syncs in ordinary steps: {syncing}"
    # The counter sees them where they are allowed: values are read at logging steps (by mt: tolist) and validation.
    assert counts[19]["tolist"] > 0 and any(sum(counts[s].values()) > 0 for s in special if "validates" in special[s])
