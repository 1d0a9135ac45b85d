"""What several training processes share: who is rank 0, locks on the run directory, gathering results.

Training runs as one process per device, started by Lightning (``trainer.devices=N``), torchrun or
SLURM's srun. These helpers work before the process group exists (locks, the rank from the
environment) and after it (gathering validation hypotheses in order).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment

from mt.errors import RunDirectoryBusy, RunError

T = TypeVar("T")


def is_global_zero_from_env() -> bool:
    """Whether this process will be global rank 0, judged from the launchers' environment variables.

    torchrun sets ``RANK``; srun sets ``SLURM_PROCID`` (with ``SLURM_NTASKS``); Lightning's own
    launcher sets ``NODE_RANK`` and ``LOCAL_RANK`` for the processes it starts.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("NODE_RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def started_by_a_launcher() -> bool:
    """Whether torchrun, or Lightning for a rank other than 0, started this process (their rank variables)."""
    return any(name in os.environ for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def launched_together() -> bool:
    """Whether this process is one of a job's ranks that exist before training starts (started by torchrun,
    srun, or by Lightning for a rank other than 0), rather than a lone process (which may start others in fit)."""
    return started_by_a_launcher() or (slurm_tasks() > 1 and "SLURM_PROCID" in os.environ)


def slurm_tasks() -> int:
    """The tasks of this SLURM job (1 outside SLURM)."""
    return int(os.environ.get("SLURM_NTASKS", "1"))


def refuse_a_batch_script_of_several_tasks() -> None:
    """A SLURM job of several tasks whose batch script runs the command itself, not through ``srun``: it would
    wait for the tasks that were never started, for ``trainer.collective_timeout_s``, then blame a dead rank.
    (``srun`` gives each task a step id; torchrun and Lightning's own launcher start the ranks themselves.)"""
    under_srun = "SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ
    if slurm_tasks() > 1 and not under_srun and not started_by_a_launcher() and SLURMEnvironment.detect():
        raise RunError(
            f"SLURM_NTASKS={slurm_tasks()}, but this process is the job's batch script, not one of srun's tasks: "
            f"start the command with srun (as scripts/slurm/train.sbatch does), one process per task"
        )


class RunDirectoryLock:
    """An exclusive lock on ``run_dir/.lock`` held by a training job's rank 0 while it lives.

    The kernel drops the lock when the process exits or is killed, so a crashed run can be resumed
    at once, while a second job started in a live run's directory is refused.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"{self.path.parent} is in use by a running training job ({holder}); "
                f"wait for it to end or choose another run directory (hydra.run.dir; hydra.sweep.dir in a multirun)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class LaggedMax:
    """The largest of the numbers the ranks give at a point they all reach together (each update's end), known one
    such point later, so that agreeing never makes the host wait for the device.

    Each ``exchange`` fills a device tensor with the number (a kernel: no copy from the host), all-reduces it, and
    starts its copy into page-locked host memory without blocking; it returns what the previous ``exchange``
    agreed on (``first`` at the first), whose copy finished long before: reading it waits for that point of the
    device's queue at most, not for the work queued since. Every rank gets the same answer at the same call.
    """

    def __init__(self, first: float = 0.0) -> None:
        self._first = first
        self._pending: tuple[torch.Tensor, Any] | None = None  # (host copy, CUDA event recorded after the copy)
        self._host: torch.Tensor | None = None  # the one host buffer, read before each copy into it

    def exchange(self, value: float, device: torch.device) -> float:
        agreed = self._read()
        tensor = torch.full((1,), float(value), dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        on_gpu = tensor.device.type == "cuda"
        if self._host is None:
            self._host = torch.empty(1, dtype=torch.float64, pin_memory=on_gpu)
        host = self._host
        host.copy_(tensor, non_blocking=True)
        event = None
        if on_gpu:
            event = torch.cuda.Event()
            event.record()
        self._pending = (host, event)
        return agreed

    def _read(self) -> float:
        if self._pending is None:
            return self._first
        host, event = self._pending
        if event is not None:
            event.synchronize()
        return float(host[0])


def agreed_max(value: float, device: torch.device) -> float:
    """The largest of the ranks' ``value`` now (a host sync: for a reading once a run, not every update)."""
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_strided(items: list[T], count: int) -> list[T]:
    """Reassemble a list split across ranks by stride (rank ``r`` holds positions ``r, r+W, ...``).

    Every rank returns the whole list of ``count`` items, in the original order.
    """
    rank, size = world()
    if size == 1:
        return items
    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, items)
    merged: list[T] = [None] * count  # type: ignore[list-item]
    for r, part in enumerate(parts):
        merged[r::size] = part
    return merged


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    _, size = world()
    if size == 1:
        return [value]
    values: list[Any] = [None] * size
    dist.all_gather_object(values, value)
    return values
