"""Faults during training: non-finite losses, a second job in a live run directory, signals."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import mt.training.preemption
import mt.training.resume
import mt.training.run
from mt.errors import NonFiniteLossError, RunDirectoryBusy, RunError
from mt.training.module import TranslationModule
from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import ROOT, Running, ddp_args, ddp_env, losses, toy_args, wait_for_losses, with_callback


def poisoned_module(
    steps: set[int] | None = None, *, from_step: int | None = None, where: str = "loss"
) -> type[TranslationModule]:
    """A TranslationModule whose training loss (``where="loss"``), or one gradient element with the loss
    finite (``"gradient"``), is NaN at the given optimizer steps."""

    def poisoned(step: int) -> bool:
        return step in (steps or ()) or (from_step is not None and step >= from_step)

    class Poisoned(TranslationModule):
        def _loss(self, batch):
            loss_sum, nll_sum, num_tokens = super()._loss(batch)
            if where == "loss" and self.training and poisoned(self.trainer.global_step):
                loss_sum = loss_sum * float("nan")
            return loss_sum, nll_sum, num_tokens

        def on_before_optimizer_step(self, optimizer):
            if where == "gradient" and poisoned(self.trainer.global_step):
                next(p for p in self.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
            super().on_before_optimizer_step(optimizer)

    return Poisoned


class ParameterRecorder(L.Callback):
    def __init__(self) -> None:
        self.after_step: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        vector = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        self.after_step[trainer.global_step] = vector.clone()


def nonfinite_config(data_dir: Path, max_steps: int):
    return tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": max_steps,
            "trainer.log_every_n_steps": 1,
            "trainer.checkpoint_every_n_steps": 1,
            "validation.decode": "none",
            "optim.max_consecutive_nonfinite": 3,
            "test_after_training": False,
        },
    )


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_nonfinite_loss_or_gradient_skips_the_update_and_training_goes_on(
    toy_corpus_dir, tmp_path, monkeypatch, where
):
    monkeypatch.setattr(mt.training.run, "TranslationModule", poisoned_module({3, 4}, where=where))
    recorder = ParameterRecorder()
    with_callback(monkeypatch, recorder)
    train(nonfinite_config(toy_corpus_dir, 8), tmp_path)
    steps = recorder.after_step
    assert sorted(steps) == list(range(1, 9))  # the skipped steps still count
    assert torch.equal(steps[4], steps[3]) and torch.equal(steps[5], steps[3])  # no update at steps 3 and 4
    assert not torch.equal(steps[6], steps[5]) and not torch.equal(steps[3], steps[2])
    assert torch.isfinite(steps[8]).all()
    with open(tmp_path / "csv/metrics.csv", newline="") as handle:
        skipped = [float(r["train/nonfinite_steps"]) for r in csv.DictReader(handle) if r.get("train/nonfinite_steps")]
    assert skipped[0] == 1.0 and skipped[-1] == 2.0  # a running count of skipped updates


def test_many_nonfinite_losses_in_a_row_stop_the_run_with_a_clear_message(toy_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(mt.training.run, "TranslationModule", poisoned_module(from_step=5))
    with pytest.raises(NonFiniteLossError) as error:
        train(nonfinite_config(toy_corpus_dir, 20), tmp_path)
    message = str(error.value)
    assert "not finite for 3 steps in a row (steps 5-7)" in message
    assert f"{tmp_path / 'checkpoints/last.ckpt'} (step 7)" in message  # skipped steps kept the good weights
    saved = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_a_resumed_run_counts_the_skipped_updates_in_a_row_of_the_run_it_resumes(toy_corpus_dir, tmp_path, monkeypatch):
    """Non-finite from update 5 on, limit 3: an uninterrupted run stops at update 7 (steps 5-7). Stopped after
    updates 5 and 6 were skipped and resumed, the run stops there too, not three updates later."""
    monkeypatch.setattr(mt.training.run, "TranslationModule", poisoned_module(from_step=5))
    train(nonfinite_config(toy_corpus_dir, 7), tmp_path)  # updates 0-6, the last two skipped
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 7
    config = nonfinite_config(toy_corpus_dir, 20)
    config.resume = "auto"
    with pytest.raises(NonFiniteLossError, match=r"not finite for 3 steps in a row \(steps 5-7\)"):
        train(config, tmp_path)


class StateRecorder(L.Callback):
    """The weights and AdamW's moments and step counts after each update (read here, by the test)."""

    def __init__(self) -> None:
        self.after_step: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        state = trainer.optimizers[0].state
        parts = [p.detach().flatten() for p in pl_module.parameters()]
        for p in pl_module.parameters():
            if p in state:
                parts += [state[p]["exp_avg"].flatten(), state[p]["exp_avg_sq"].flatten(), state[p]["step"].reshape(1)]
        self.after_step[trainer.global_step] = torch.cat([t.float() for t in parts]).clone()


def deferred_config(data_dir: Path, max_steps: int):
    """Logging every 5 updates and no per-step checkpoints: the guard's counts are read at steps 4, 9, ..."""
    return tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": max_steps,
            "trainer.log_every_n_steps": 5,
            "validation.decode": "none",
            "optim.max_consecutive_nonfinite": 3,
            "test_after_training": False,
        },
    )


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_nonfinite_update_between_logging_steps_changes_nothing_bit_for_bit(
    toy_corpus_dir, tmp_path, monkeypatch, where
):
    """Skipped on the device (fused AdamW, no host sync): weights, moments and step counts after the
    skipped updates 2 and 6 equal those before them, exactly."""
    monkeypatch.setattr(mt.training.run, "TranslationModule", poisoned_module({2, 6}, where=where))
    recorder = StateRecorder()
    with_callback(monkeypatch, recorder)
    train(deferred_config(toy_corpus_dir, 10), tmp_path)
    after = recorder.after_step
    assert torch.equal(after[3], after[2]) and torch.equal(after[7], after[6])
    assert not torch.equal(after[2], after[1]) and not torch.equal(after[4], after[3])
    assert torch.isfinite(after[10]).all()
    with open(tmp_path / "csv/metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [4, 9]  # the logging steps only
    assert [float(r["train/nonfinite_steps"]) for r in rows] == [1.0, 2.0]


def test_a_limit_of_skips_reached_between_logging_steps_stops_the_run_as_at_once(toy_corpus_dir, tmp_path, monkeypatch):
    """Non-finite from step 5 with a limit of 3: reached at step 7, read at the logging step 9; the run stops
    there naming steps 5-7, with the weights of step 5 (nothing changed past the limit)."""
    monkeypatch.setattr(mt.training.run, "TranslationModule", poisoned_module(from_step=5))
    recorder = StateRecorder()
    with_callback(monkeypatch, recorder)
    with pytest.raises(NonFiniteLossError) as error:
        train(deferred_config(toy_corpus_dir, 20), tmp_path)
    assert "not finite for 3 steps in a row (steps 5-7)" in str(error.value)
    assert "the last good checkpoint is none" in str(error.value)
    after = recorder.after_step
    assert max(after) == 9  # stopped inside update 9 (the logging step), before it ended
    assert all(torch.equal(after[step], after[5]) for step in range(6, 10))


def test_a_second_job_in_a_live_run_directory_is_refused(toy_corpus_dir, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mt.training.distributed import RunDirectoryLock; "
            "lock = RunDirectoryLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunDirectoryBusy, match=f"{tmp_path} is in use by a running training job \\(pid {holder.pid}"
        ):
            train(tiny_train_config(toy_corpus_dir), tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock went with it, and the directory can be used (here: a fresh run).
    train(tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 2, "test_after_training": False}), tmp_path)
    assert (tmp_path / "checkpoints/last.ckpt").is_file()


def preemptible_args(data_dir: Path, run_dir: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mt.train",
        *toy_args(data_dir, run_dir, f"trainer.max_steps={max_steps}", "trainer.log_every_n_steps=1"),
        "model.dropout=0.2",
        "data.max_tokens=300",
        "validation.decode=none",
        "trainer.limit_val_batches=0",
        *extra,
    ]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(toy_corpus_dir, tmp_path):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    result = subprocess.run(
        preemptible_args(toy_corpus_dir, straight, 60), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with Running(preemptible_args(toy_corpus_dir, preempted, 60), tmp_path / "preempted.log") as running:
        wait_for_losses(running, preempted, 10)
        running.process.send_signal(signal.SIGTERM)
        stderr = running.finish(timeout=60)
    assert running.process.returncode == 0, stderr[-3000:]
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("preempted: SIGTERM received: stopped after step ") and "resume=auto" in message
    step = torch.load(preempted / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    assert 10 <= step < 60 and f"step {step}," in message

    result = subprocess.run(
        [*preemptible_args(toy_corpus_dir, preempted, 60), "resume=auto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = losses(straight / "csv/metrics.csv")
    got = {**losses(preempted / "csv/metrics.csv"), **losses(preempted / "csv/resume_1/metrics.csv")}
    assert sorted(got) == sorted(expected) == list(range(60))
    for i in expected:
        assert got[i] == pytest.approx(expected[i], abs=1e-5), i
    final = torch.load(preempted / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in torch.load(straight / "checkpoints/last.ckpt", weights_only=False)["state_dict"].items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigusr1_under_slurm_saves_and_requeues_the_job(toy_corpus_dir, tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "scontrol.calls"
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake_bin / "scontrol").chmod(0o755)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    with Running(preemptible_args(toy_corpus_dir, run_dir, 100000), tmp_path / "run.log", env=env) as running:
        wait_for_losses(running, run_dir, 3)
        running.process.send_signal(signal.SIGUSR1)
        stderr = running.finish(timeout=60)
    assert running.process.returncode == 0, stderr[-3000:]
    assert "the job was requeued" in stderr.strip().splitlines()[-1]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] >= 3


@pytest.mark.slow
def test_a_signal_to_a_sweep_stops_it_after_the_trial_it_saves(toy_corpus_dir, tmp_path):
    """A signal is for the whole job: the preempted trial saved and returned, and the sweep started the next
    trial (to be SIGKILLed at the end of the grace period, or run on after a cancellation) and exited 0."""
    sweep = tmp_path / "sweep"
    python, module, name, *overrides = preemptible_args(toy_corpus_dir, tmp_path / "unused", 100000)
    command = [python, module, name, "-m", *overrides, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    with Running(command, tmp_path / "sweep.log") as running:
        wait_for_losses(running, sweep / "0", 3)
        running.process.send_signal(signal.SIGTERM)
        stderr = running.finish(timeout=60)
    assert running.process.returncode == 0, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1] == "preempted: the sweep stops after this trial; launch it again with resume=auto"
    assert any(line.startswith("preempted: SIGTERM received: stopped after step") for line in lines)
    assert (sweep / "0/checkpoints/last.ckpt").is_file() and not (sweep / "1").exists()


def crash_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mt.train",
        *toy_args(data_dir, run_dir, "trainer.max_steps=60", "trainer.log_every_n_steps=1"),
        "model.dropout=0.2",
        "data.max_tokens=300",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.val_check_interval=10",
        "trainer.check_val_every_n_epoch=null",
        "validation.max_sentences=8",
        *extra,
    ]


@pytest.mark.slow
def test_kill_9_at_named_points_then_resume_equals_an_uninterrupted_run(toy_corpus_dir, tmp_path):
    """SIGKILL inside a checkpoint write, inside a validation and between an update's checkpoint saves and its
    log line (``MT_FAULT``: the process kills itself the N-th time it reaches the point), ``resume=auto`` after
    each: the same loss at every step and the same final parameters as an uninterrupted run."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    result = subprocess.run(crash_args(toy_corpus_dir, straight), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    for attempt, fault in enumerate(["checkpoint_write:7", "validation_step:3", "after_step_saves:5"]):
        extra = ["resume=auto"] if attempt else []
        env = {**os.environ, "MT_FAULT": fault}
        result = subprocess.run(crash_args(toy_corpus_dir, crashed, *extra), cwd=ROOT, capture_output=True, env=env)
        assert result.returncode == -signal.SIGKILL, (fault, result.stderr[-3000:])
        if fault.startswith("checkpoint_write"):
            # Killed with the 7th checkpoint's bytes in a hidden temporary file: last.ckpt is still the 6th, whole.
            assert [p.name.startswith(".last.ckpt.tmp") for p in crashed.glob("checkpoints/*tmp*")] == [True]
            mt.training.resume.verify_checkpoint(crashed / "checkpoints/last.ckpt")
            assert torch.load(crashed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    result = subprocess.run(
        crash_args(toy_corpus_dir, crashed, "resume=auto"), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]

    expected = losses(straight / "csv/metrics.csv")
    seen: set[int] = set()
    for path in [crashed / "csv/metrics.csv", *sorted(crashed.glob("csv/resume_*/metrics.csv"), key=resume_number)]:
        for step, value in losses(path).items():  # every logged value, also of a step run again after a crash
            assert value == pytest.approx(expected[step], abs=1e-5), (path, step)
            seen.add(step)
    assert sorted(seen) == sorted(expected) == list(range(60))
    final = torch.load(crashed / "checkpoints/last.ckpt", weights_only=False)
    assert final["global_step"] == 60
    for name, tensor in torch.load(straight / "checkpoints/last.ckpt", weights_only=False)["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)


def resume_number(path: Path) -> int:
    return int(path.parent.name.split("_")[1])


def test_a_corrupt_last_checkpoint_is_refused_when_resuming(toy_corpus_dir, tmp_path):
    train(tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 2, "test_after_training": False}), tmp_path)
    last = tmp_path / "checkpoints/last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(RunError, match="last.ckpt is corrupt \\(CRC mismatch"):
        train(tiny_train_config(toy_corpus_dir, resume="auto"), tmp_path)
    assert last.read_bytes() == bytes(data)  # left as it was, for inspection


@pytest.mark.slow
def test_sigterm_to_rank_0_of_a_ddp_run_stops_both_ranks_with_a_checkpoint(toy_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    command = [*preemptible_args(toy_corpus_dir, run_dir, 100000), *ddp_args()]
    with Running(command, tmp_path / "run.log", env=ddp_env()) as running:
        wait_for_losses(running, run_dir, 3)
        running.process.send_signal(signal.SIGTERM)  # rank 0 only: rank 1 learns of it at the next step
        stderr = running.finish(timeout=120)
    assert running.process.returncode == 0, stderr[-3000:]
    assert "preempted: SIGTERM received" in stderr
    step = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    assert step >= 3
    result = subprocess.run(
        [*preemptible_args(toy_corpus_dir, run_dir, step + 4), *ddp_args(), "resume=auto"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=ddp_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == step + 4


@pytest.mark.parametrize(("signum", "requeues"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_signal_during_data_preparation_stops_before_training_and_a_warning_requeues(
    toy_corpus_dir, tmp_path, monkeypatch, signum, requeues
):
    requeued: list[bool] = []
    monkeypatch.setattr(mt.training.run, "requeue_slurm_job", lambda: requeued.append(True) or True)
    prepare = mt.training.run.TranslationDataModule.prepare_tokenizer

    def prepare_then_signalled(self, **kwargs):
        tokenizer = prepare(self, **kwargs)
        # SLURM's time-limit warning while the corpus is encoded: the handler installed for it is called as the
        # OS would call it, without sending a real signal to the pytest process (with no handler installed, that
        # would end the whole test session; here getsignal gives the default, which cannot be called).
        handler = signal.getsignal(signum)
        assert callable(handler), f"no handler for {signal.Signals(signum).name} during data preparation"
        handler(signum, None)
        return tokenizer

    monkeypatch.setattr(mt.training.run.TranslationDataModule, "prepare_tokenizer", prepare_then_signalled)
    assert train(nonfinite_config(toy_corpus_dir, 4), tmp_path) is None
    assert requeued == ([True] if requeues else [])
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize(("signum", "requeues"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_signal_once_the_launch_checks_passed_stops_before_the_first_update(
    toy_corpus_dir, tmp_path, monkeypatch, capsys, signum, requeues
):
    """A signal after a rank's own check before fit (the ranks of a job get it at different moments) went unseen
    until the first update ended: under DDP a rank that had seen it returned while the others waited in fit's
    rendezvous for collective_timeout_s. The ranks now agree on it when training starts, before any update."""
    requeued: list[bool] = []
    monkeypatch.setattr(mt.training.preemption, "requeue_slurm_job", lambda: requeued.append(True) or True)
    monkeypatch.setattr(mt.training.run, "requeue_slurm_job", lambda: requeued.append(True) or True)
    setup = mt.training.run.TranslationDataModule.setup

    def setup_then_signalled(self, *args, **kwargs):  # inside fit, after the check before it
        setup(self, *args, **kwargs)
        signal.getsignal(signum)(signum, None)  # as the OS would call the handler installed for it

    monkeypatch.setattr(mt.training.run.TranslationDataModule, "setup", setup_then_signalled)
    assert train(nonfinite_config(toy_corpus_dir, 4), tmp_path) is None
    assert requeued == ([True] if requeues else [])
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # no update was made, so none was saved
    expected = f"preempted: {signal.Signals(signum).name} received before training started"
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected + ("; the job was requeued" if requeues else "")


def test_sigterm_in_the_sanity_check_is_a_preemption_not_a_silent_exit(toy_corpus_dir, tmp_path, capsys, monkeypatch):
    """Until training starts, fit runs Lightning's own SIGTERM handler, whose SIGTERMException (a SystemExit)
    ended the process with status 0 and no word."""

    class InTheSanityCheck(L.Callback):
        def on_validation_batch_start(self, trainer, *args, **kwargs):
            if trainer.sanity_checking:
                signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # as the OS would call it

    with_callback(monkeypatch, InTheSanityCheck())
    config = nonfinite_config(toy_corpus_dir, 4)
    config.trainer.num_sanity_val_steps = 2
    assert train(config, tmp_path) is None
    assert capsys.readouterr().err.strip().splitlines()[-1] == "preempted: SIGTERM received before training started"


@pytest.mark.parametrize("when", ["during the test decode", "before it", "in the last update, not testing"])
@pytest.mark.parametrize(("signum", "requeues"), [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_signal_after_the_training_stops_the_test_decode_and_a_warning_requeues(
    toy_corpus_dir, tmp_path, monkeypatch, capsys, signum, requeues, when
):
    """The handler only said "saving a checkpoint after the current step", a step that never came: the test
    decode ran on to the end (SIGTERM ignored until SLURM's SIGKILL) and a time-limit warning never requeued.
    The run says it was preempted (a sweep stops on it), and the SIGTERM with which scontrol requeue ends the job
    does not cut the stop short."""
    requeued: list[bool] = []

    def requeue():
        requeued.append(True)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # SLURM ends a requeued job with SIGTERM
        return True

    monkeypatch.setattr(mt.training.run, "requeue_slurm_job", requeue)
    decoded: list[str] = []
    score = mt.training.run.score_checkpoint
    plot = mt.training.run.plot_learning_curve

    def signalled():  # as the OS would call the handler installed for the signal
        handler = signal.getsignal(signum)
        assert callable(handler), f"no handler for {signal.Signals(signum).name} after the training"
        handler(signum, None)

    def score_signalled(*args, **kwargs):
        signalled()
        decoded.append("decoded")
        return score(*args, **kwargs)

    def plot_signalled(*args, **kwargs):  # after fit, before the test decode (as in the final validation)
        plot(*args, **kwargs)
        signalled()

    class InTheLastUpdate(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 3:
                signalled()

    testing = when != "in the last update, not testing"
    if when == "before it":
        monkeypatch.setattr(mt.training.run, "plot_learning_curve", plot_signalled)
    elif testing:
        monkeypatch.setattr(mt.training.run, "score_checkpoint", score_signalled)
    else:
        with_callback(monkeypatch, InTheLastUpdate())
    config = tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 4, "test_after_training": testing})
    result = train(config, tmp_path)
    assert result["preempted"] and result["test"] is None and decoded == []
    assert not (tmp_path / "test_scores.json").exists()
    assert (tmp_path / "selection.json").is_file()
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4
    assert requeued == ([True] if requeues else [])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    then = "; the job was requeued" if requeues else "; resume with resume=auto" + (" to score it" if testing else "")
    assert line == (
        f"preempted: {signal.Signals(signum).name} received as the training ended (its checkpoints are saved)"
        + ("; the test split was not scored" if testing else "")
        + then
    )
