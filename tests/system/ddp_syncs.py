"""Host reads of device values in the training steps of two DDP ranks, for ``tests/system/test_distributed.py``.

``python -m tests.system.ddp_syncs DATA OUT``: ``mt.train``'s ``train`` on 2 CPU processes (gloo) with a time
limit (Lightning's Timer) that the learning rate decays over and preemption handling on, each rank counting, per
update, the ops that read a tensor's value on the host (``tests/integration/test_host_syncs.py``'s ``SYNC_OPS``,
and ``tolist``/``numpy``/``cpu``), into ``OUT/rank<R>.json`` with the updates that logged, validated or saved and
the learning rate of each update. A read of memory that a non-blocking
copy filled at an earlier update is not counted: on a GPU that is page-locked host memory whose copy finished long
before, and reading it waits for nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.integration.test_host_syncs import HOST_READS, SYNC_OPS, StepKinds, SyncCounter

STEPS = 40


class DeviceReadCounter(SyncCounter):
    """``SyncCounter``, less the reads of what a non-blocking copy wrote at an earlier update."""

    def __init__(self) -> None:
        super().__init__()
        self.copied_at: dict[int, int] = {}  # storage address -> the update whose non-blocking copy filled it

    def lagged(self, tensor) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        written = self.copied_at.get(tensor.untyped_storage().data_ptr())
        return written is not None and written < self.step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name == "copy_" and (kwargs.get("non_blocking") or (len(args) > 2 and args[2])):
            self.copied_at[args[0].untyped_storage().data_ptr()] = self.step
        if name in SYNC_OPS and not self.lagged(args[0] if args else None):
            self.counts[self.step][name] += 1
        return func(*args, **kwargs)


def main(data: str, out: str) -> None:
    counter = DeviceReadCounter()
    kinds = StepKinds(counter)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            if counter.step >= 0 and not counter.lagged(self):
                counter.counts[counter.step][_name] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counting)
    import mt.training.run

    build_trainer = mt.training.run.build_trainer

    rates: list[float] = []  # the learning rate of each update, which every rank must apply alike

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def building(*args, **kwargs):
        trainer, best = build_trainer(*args, **kwargs)
        trainer.callbacks += [kinds, Rates()]
        return trainer, best

    mt.training.run.build_trainer = building
    config = tiny_train_config(
        Path(data),
        **{
            "trainer.strategy": "ddp",
            "trainer.devices": 2,
            "trainer.max_steps": STEPS,
            "trainer.max_time": "00:01:00:00",
            "optim.schedule": "linear",  # decayed over the time limit: the ranks agree on a clock at each update
            "optim.decay_budget": "time",
            "optim.warmup_steps": 4,
            "trainer.log_every_n_steps": 20,
            "trainer.enable_progress_bar": True,
            "test_after_training": False,
        },
    )
    run_dir = Path(out) / "run"
    train(config, run_dir)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    record = {
        "counts": {str(step): dict(counts) for step, counts in counter.counts.items()},
        "special": {str(step): sorted(kinds) for step, kinds in kinds.special.items()},
        "rates": rates,
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
