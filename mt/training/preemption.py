"""Preemption: save a resumable checkpoint when the cluster says the job must stop, then stop.

SLURM sends a warning signal before a time limit (``#SBATCH --signal=USR1@120``; submitit uses SIGUSR2) and
SIGTERM when it cancels or preempts a job. The signal handler only sets a flag; the callback acts at the next
optimizer-step boundary (with several ranks, the one after: they agree on it without making the host wait for
the device), so the checkpoint holds a consistent state (no half-accumulated gradients) and the data position
of that step. On a warning signal under SLURM the job is requeued (``scontrol requeue``) and, started again
with ``resume=auto`` in the same run directory, continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mt.training.distributed import LaggedMax

log = logging.getLogger(__name__)

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # SLURM's warning before the time limit
STOP_SIGNALS = (signal.SIGTERM,)  # cancellation or preemption: save and exit, no requeue


class Preempted(Exception):
    """Raised on every rank to stop training when the next batch starts, after the save (and the validation of
    the step, if one was due)."""

    def __init__(self, signum: int, step: int, checkpoint: Path, requeued: bool, *, started: bool = True) -> None:
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        name = signal.Signals(signum).name
        if not started:  # nothing trained in this process, so nothing saved
            super().__init__(
                f"{name} received before training started" + ("; the job was requeued" if requeued else "")
            )
            return
        then = "the job was requeued" if requeued else "resume with resume=auto"
        super().__init__(f"{name} received: stopped after step {step}, saved {checkpoint}; {then}")


class StoppedAfterTraining(Exception):
    """A signal in the last update or validation, or once the training was over and saved (during the test
    decode): the rest of the run is dropped."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received as the training ended (its checkpoints are saved)")


class PreemptionCallback(L.Callback):
    """Turns SIGUSR1/SIGUSR2/SIGTERM into a checkpoint at the next step boundary and a clean stop.

    Args:
        checkpoint_path: where to save (the run's ``last.ckpt``, which ``resume=auto`` picks up).
    """

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.received = 0  # the signal number, 0 while none arrived
        self._previous: dict[int, Any] = {}
        self._step_seen = 0
        self._signum = 0  # the signal the ranks agreed on, once its checkpoint is saved: the run stops
        self._at_once = False
        self._quiet = False
        self._at_update_ends = LaggedMax()  # the ranks' agreement at each update's end, one update late

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._quiet:
            return
        if self._at_once:
            self.received = signum
            raise StoppedAfterTraining(signum)
        if not self.received:
            log.warning("received %s: saving a checkpoint after the current step", signal.Signals(signum).name)
        self.received = signum

    def stop_at_once(self) -> None:
        """From now on (the training over, its checkpoints saved: no step boundary will come) a signal stops the
        process where it is, by ``StoppedAfterTraining``: raised now for one that came since the last step (during
        the final validation, say), else from the handler."""
        self._at_once = True
        if self.received:
            raise StoppedAfterTraining(self.received)

    def quiet(self) -> None:
        """Ignore signals from now on: the run is stopping already."""
        self._quiet = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal any rank got since the last check (in the last update or validation): every rank knows it, so
        # that rank 0, which goes on alone to the test decode, stops (stop_at_once).
        signum = self._signum or self._agreed_signal(trainer)  # (_signum is the same on every rank)
        if signum:
            self.received = signum

    def install(self) -> None:
        """Catch the signals from now on (before data preparation: a warning then must not kill the job)."""
        for signum in (*REQUEUE_SIGNALS, *STOP_SIGNALS):
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # again: Lightning replaced the SIGTERM handler when fit started
        self._step_seen = trainer.global_step
        # A signal while the job started (the ranks of a job may get it on either side of their own check before
        # fit, or during fit's setup): every rank stops here together, none left waiting for the others.
        signum = self._agreed_signal(trainer)
        if signum:
            self.quiet()  # (the SIGTERM with which scontrol requeue ends the job is no news)
            requeued = signum in REQUEUE_SIGNALS and trainer.is_global_zero and requeue_slurm_job()
            raise Preempted(signum, trainer.global_step, self.checkpoint_path, requeued, started=False)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._signum or trainer.global_step == self._step_seen:  # inside an accumulation window: no step boundary
            return
        self._step_seen = trainer.global_step
        self._signum = self._agreed_signal(trainer, lagged=True)
        if self._signum:  # saved at once; a validation due at this step still runs (below), then the run stops
            trainer.save_checkpoint(self.checkpoint_path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A validation is part of its step: one due at the step of a stop runs (a resumed run would never run it,
        as Lightning takes a checkpoint of that step as validated), and the checkpoint is saved again after it; a
        signal during a validation stops the run once it ends, not after one more update."""
        if trainer.sanity_checking:
            return
        if not self._signum:
            self._signum = self._agreed_signal(trainer)  # every rank ends a validation together
        writers = {
            os.path.realpath(c.saves_at_validation_end)
            for c in trainer.callbacks
            if hasattr(c, "saves_at_validation_end")
        }
        deferred = os.path.realpath(self.checkpoint_path) in writers and not trainer.fast_dev_run  # (it saves none)
        if self._signum and not deferred:  # else the last-checkpoint writer saves it next
            trainer.save_checkpoint(self.checkpoint_path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Raised when the next batch starts, after this step's logs and checkpoint writers (and the requeue after
        # every save: scontrol may end the job at once).
        if self._signum:
            self.quiet()
            requeued = self._signum in REQUEUE_SIGNALS and trainer.is_global_zero and requeue_slurm_job()
            raise Preempted(self._signum, trainer.global_step, self.checkpoint_path, requeued)

    def _agreed_signal(self, trainer: L.Trainer, *, lagged: bool = False) -> int:
        """The signal any rank received (ranks may get it at different steps, or only rank 0 gets it). ``lagged``:
        the one any rank had received at the previous update's end, agreed on without a host sync (``LaggedMax``;
        an ordinary update reads no device value); a signal is then acted on one update later."""
        if trainer.world_size == 1:
            return self.received
        if lagged:
            return int(self._at_update_ends.exchange(self.received, trainer.strategy.root_device))
        flag = torch.tensor([self.received], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (array task included); False outside SLURM or on failure."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("could not requeue SLURM job %s: %s", job_id, error)
        return False
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return False
    log.warning("requeued SLURM job %s", job_id)
    return True
