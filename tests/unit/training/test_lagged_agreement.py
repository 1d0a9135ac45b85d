"""The ranks' agreement at each update's end without a host sync (``LaggedMax``), and the two callbacks that
agree through it: the time limit (``AgreedTimer``) and preemption (``PreemptionCallback``). Two gloo processes,
each checked against the answers worked out by hand for the numbers the ranks give."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mt.training.distributed import LaggedMax
from mt.training.preemption import PreemptionCallback
from mt.training.time_limit import AgreedTimer

# Rank 0 and rank 1 give these numbers at successive update ends.
GIVEN = {0: [3, 0, 7, 1], 1: [5, 2, 2, 9]}


def fake_trainer(rank: int) -> SimpleNamespace:
    saves: list[int] = []
    trainer = SimpleNamespace(
        world_size=2,
        global_rank=rank,
        is_global_zero=rank == 0,
        global_step=0,
        should_stop=False,
        sanity_checking=False,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        saves=saves,
    )
    trainer.save_checkpoint = lambda path: saves.append(trainer.global_step)
    return trainer


def ranks(rank: int, store: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    lagged = LaggedMax()
    answers = [lagged.exchange(value, torch.device("cpu")) for value in GIVEN[rank]]

    # The time limit: rank 1 is past it (an earlier run's time, restored from a checkpoint), rank 0 is not.
    timer = AgreedTimer("00:01:00:00")
    timer.load_state_dict({"time_elapsed": {"train": 3600.0 * rank + 1}})
    trainer = fake_trainer(rank)
    stops = []
    for step in (1, 1, 2, 3):  # the second batch of update 1 is inside an accumulation window: no agreement
        trainer.global_step = step
        timer.on_train_batch_end(trainer)
        stops.append(trainer.should_stop)

    # Preemption: rank 1 alone gets SIGUSR1 during update 1.
    preemption = PreemptionCallback(Path(out) / "last.ckpt")
    trainer = fake_trainer(rank)
    signum = []
    for step in range(1, 5):
        trainer.global_step = step
        if rank == 1 and step == 1:
            preemption._on_signal(signal.SIGUSR1, None)
        preemption.on_train_batch_end(trainer, None, None, None, step - 1)
        signum.append(preemption._signum)
    torch.save({"answers": answers, "stops": stops, "saves": trainer.saves, "signum": signum}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_agree_one_update_late_on_the_time_limit_and_a_signal(tmp_path):
    mp.start_processes(ranks, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for result in results:
        # The largest of the two ranks' numbers, of the update before: 0 at the first.
        assert result["answers"] == [0.0, 5.0, 2.0, 7.0]
        # Rank 1 is past the limit from the start: both stop at the second update's end, none at the first.
        assert result["stops"] == [False, False, True, True]
        # The signal of update 1 (rank 1's alone) is agreed on at update 2: both save then, and once.
        assert result["signum"] == [0, signal.SIGUSR1, signal.SIGUSR1, signal.SIGUSR1]
        assert result["saves"] == [2]


def test_the_time_limit_keeps_lightnings_checkpoint_key():
    from lightning.pytorch.callbacks import Timer

    assert AgreedTimer("00:01:00:00").state_key == Timer(duration="00:01:00:00").state_key == "Timer"
