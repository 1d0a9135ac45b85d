"""Distributed training on CPU (gloo): 2 processes started by Lightning, torchrun and a 2-"node"
rendezvous on localhost; equal steps and equal validation BLEU against one process; a dead rank."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mt.config import SearchConfig
from mt.decode.scoring import score_checkpoint
from tests.helpers import (
    ROOT,
    Running,
    ddp_args,
    ddp_env,
    free_port,
    logged,
    logged_losses,
    losses,
    toy_args,
    wait_for_losses,
)

pytestmark = pytest.mark.slow  # the system tier: whole commands in subprocesses, run in CI


def run(command: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", ddp_env())
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def metric_rows(run_dir: Path, name: str) -> list[tuple[int, float]]:
    rows = []
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with open(path, newline="") as handle:
            rows += [(int(r["step"]), float(r[name])) for r in csv.DictReader(handle) if r.get(name)]
    return rows


def test_two_ranks_of_b_make_the_same_step_as_one_rank_of_2b(tmp_path):
    """The loss is normalised by the tokens of all ranks, so DDP's averaged gradient equals one big batch's."""
    for mode in ("ddp", "single"):
        result = run([sys.executable, "-m", "tests.system.ddp_step", str(tmp_path), mode])
        assert result.returncode == 0, result.stderr[-3000:]
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    # Each rank trained on its own batch, and the single process on both of them together.
    rank0, rank1, both = (
        torch.load(tmp_path / name) for name in ("ddp.rank0.src", "ddp.rank1.src", "single.rank0.src")
    )
    assert len(rank0) == 3 and len(rank1) == 6 and sorted(rank0 + rank1) == sorted(both)
    # The logged rate counts every rank's target tokens (EOS included), not rank 0's alone.
    from tests.system.ddp_step import batches

    assert ddp["tokens"] == single["tokens"] == sum(len(t) + 1 for _, tgt in batches() for t in tgt)
    assert ddp["gradients"].keys() == single["gradients"].keys()
    assert len(single["gradients"]) > 10  # every parameter's gradient was saved, so the loop below compares them
    for name, gradient in single["gradients"].items():
        torch.testing.assert_close(ddp["gradients"][name], gradient, rtol=1e-4, atol=1e-6)
        # Adam's first update is lr * sign(gradient): compare it where the sign is not noise.
        clear = gradient.abs() > 1e-5
        torch.testing.assert_close(ddp["parameters"][name][clear], single["parameters"][name][clear])


def test_ordinary_ddp_steps_read_no_device_value_on_the_host(toy_corpus_dir, tmp_path):
    """Two ranks with a time limit and preemption handling: an update that neither logs, validates nor saves reads
    no device value on the host (each rank's would wait for its GPU), not even to agree with the other rank on a
    signal or on the time limit (tests/system/ddp_syncs.py counts them)."""
    from tests.system.ddp_syncs import STEPS

    result = run([sys.executable, "-m", "tests.system.ddp_syncs", str(toy_corpus_dir), str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        ordinary = [step for step in range(STEPS) if str(step) not in record["special"]]
        assert len(ordinary) >= 25, record["special"]  # logging at 19 and 39, validation at epoch ends
        syncing = {step: record["counts"][str(step)] for step in ordinary if record["counts"].get(str(step))}
        assert syncing == {}, f"rank {rank}: host reads in ordinary steps: {syncing}"
        # The counter sees reads where they are allowed (values are logged at step 19, by mt: tolist).
        assert record["counts"]["19"].get("tolist", 0) > 0
    # The rate decays over the time limit by a clock the ranks agree on: the same rate on both, update by update.
    rates = [json.loads((tmp_path / f"rank{rank}.json").read_text())["rates"] for rank in (0, 1)]
    assert len(rates[0]) == STEPS and rates[0] == rates[1]
    assert rates[0][4] > rates[0][-1] > 0  # warmed up in 4 updates, then decaying over the hour


def test_ddp_training_and_validation_bleu_equal_a_single_process_decode(toy_corpus_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    result = run(
        [
            sys.executable,
            "-m",
            "mt.train",
            *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=96", "trainer.check_val_every_n_epoch=4"),
            "validation.max_sentences=null",
            *ddp_args(),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 batches per epoch per rank" in (run_dir / "train.log").read_text()  # 16 batches, 2 ranks
    bleu = metric_rows(run_dir, "val/bleu")
    assert len(bleu) == 3 and bleu[-1][1] > 5, bleu  # validated at steps 32, 64, 96, and learning
    # Each rank decoded half the validation set; the gathered score equals one process decoding all of it.
    best = max(score for _, score in bleu)
    single = score_checkpoint(run_dir / "checkpoints/best.ckpt", split="valid", search=SearchConfig(beam=1))
    assert single["sentences"] == 40
    assert single["bleu"] == pytest.approx(best, abs=0.006)  # evaluate rounds to 2 decimals


@pytest.mark.parametrize("victim", ["rank 1", "rank 0"])
def test_a_dead_rank_stops_the_others_instead_of_hanging(toy_corpus_dir, tmp_path, victim):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mt.train",
        *toy_args(
            toy_corpus_dir,
            run_dir,
            "trainer.max_steps=100000",
            "trainer.collective_timeout_s=600",
            "trainer.log_every_n_steps=1",
        ),
        *ddp_args(),
    ]
    log = open(tmp_path / "stderr.txt", "w")
    main = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=ddp_env())
    rank1 = None
    try:
        deadline = time.monotonic() + 120
        while not (rank1 and list(run_dir.glob("csv/**/metrics.csv"))):  # both ranks are training
            assert time.monotonic() < deadline and main.poll() is None, "training did not start"
            time.sleep(0.5)
            children = Path(f"/proc/{main.pid}/task/{main.pid}/children").read_text().split()
            rank1 = psutil_free_process(int(children[0])) if children else None
        while logged_losses(run_dir) < 2:  # two updates logged: both ranks are past setup, all-reducing
            assert time.monotonic() < deadline and main.poll() is None, "training made no progress"
            time.sleep(0.1)
        dead, survivor = (rank1, main) if victim == "rank 1" else (main, rank1)
        os.kill(dead.pid, signal.SIGKILL)
        # The collective timeout is 10 minutes: a survivor that ends at all within 2 found out by itself (gloo
        # reports the closed connection) rather than by waiting for the timeout.
        survivor.wait(timeout=120)
        if victim == "rank 1":
            assert survivor.returncode == 2  # a one-line error, not a crash
        survivor_rank = "rank 0" if victim == "rank 1" else "rank 1"
        errors = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if line.startswith("error: ")]
        assert any(
            line.startswith(f"error: {survivor_rank}: a collective operation failed, so another rank died")
            for line in errors
        ), errors
    finally:
        for process in (main, rank1):
            if process is not None and process.poll() is None:
                process.kill()
        log.close()


class psutil_free_process:
    """The little of ``subprocess.Popen`` the test needs, for a process it did not start."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode = None

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.returncode = self.returncode if self.returncode is not None else -1
            return self.returncode
        state = Path(f"/proc/{self.pid}/stat").read_text().split(") ")[1].split()[0]
        if state == "Z":  # exited, not yet reaped by its parent (the killed rank 0)
            self.returncode = -1
            return self.returncode
        return None

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.2)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def test_ranks_that_disagree_on_the_run_directory_are_an_error(toy_corpus_dir, tmp_path):
    """torchrun without hydra.run.dir: each rank would make its own timestamped directory."""
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mt.train", *toy_args(toy_corpus_dir, tmp_path / f"rank{rank}"), *ddp_args()],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "TORCHELASTIC_RUN_ID": "test",
            },
        )
        for rank in range(2)
    ]
    errors = [p.communicate(timeout=180)[1] for p in processes]
    assert all(p.returncode == 2 for p in processes), errors
    assert "the ranks disagree on the run directory" in errors[0]
    assert "hydra.run.dir" in errors[0].splitlines()[-1]


def test_torchrun_trains_two_processes(toy_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "mt.train",
            *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=16"),
            *ddp_args(),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 16
    assert not list(run_dir.glob("train_ddp_process_*"))  # torchrun started both ranks, Lightning none


def test_two_node_rendezvous_on_localhost(toy_corpus_dir, tmp_path):
    """Two torchrun agents (one per "node", one process each) meet at a c10d rendezvous."""
    run_dir = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=mt-test",
                "-m",
                "mt.train",
                *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=12"),
                *ddp_args(devices=1),
                "trainer.num_nodes=2",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(2)
    ]
    errors = [agent.communicate(timeout=300)[1] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], [e[-2000:] for e in errors]
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 12


def test_submitit_local_launcher_runs_a_two_job_sweep(toy_corpus_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    result = run(
        [
            sys.executable,
            "-m",
            "mt.train",
            "-m",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={sweep_dir}",
            *toy_args(toy_corpus_dir, tmp_path / "unused", "trainer.max_steps=8"),
            "seed=1,2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        checkpoint = torch.load(sweep_dir / job / "checkpoints/last.ckpt", weights_only=False)
        assert checkpoint["global_step"] == 8
    assert {OmegaConf.load(sweep_dir / job / "config.yaml").seed for job in ("0", "1")} == {1, 2}


FAKE_SRUN = r"""#!/bin/bash
# A stand-in for srun: takes only the flags the sbatch script passes (records them), starts SLURM_NTASKS tasks
# with the variables srun gives each (SLURM_STEP_ID, SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID), forwards SIGUSR1 and
# SIGTERM to them as srun does, and with --kill-on-bad-exit=1 kills the others when one fails.
echo "$@" > "$SRUN_CALLS"
kill_on_bad_exit=0
while [[ $1 == -* ]]; do
  case $1 in
    --kill-on-bad-exit=1) kill_on_bad_exit=1 ;;
    *) echo "srun: unrecognized option '$1'" >&2; exit 1 ;;
  esac
  shift
done
per_node=${SLURM_NTASKS_PER_NODE%%(*}
pids=()
for ((task = 0; task < SLURM_NTASKS; task++)); do
  SLURM_STEP_ID=0 SLURM_PROCID=$task SLURM_LOCALID=$((task % per_node)) SLURM_NODEID=$((task / per_node)) "$@" &
  pids+=($!)
done
forwarded=0
trap 'forwarded=1; kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'forwarded=1; kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
remaining=$SLURM_NTASKS
while ((remaining > 0)); do
  forwarded=0
  wait -n
  code=$?
  ((forwarded)) && continue  # wait was interrupted by a signal: no task ended
  remaining=$((remaining - 1))
  if ((code != 0)); then
    status=$code
    ((kill_on_bad_exit)) && kill -9 "${pids[@]}" 2>/dev/null
  fi
done
exit $status
"""


def test_sbatch_script_on_two_nodes_requeued_by_a_signal_resumes_by_itself(toy_corpus_dir, tmp_path):
    """scripts/slurm/train.sbatch on 2 "nodes" of 1 task each, under a stand-in ``srun`` and ``scontrol``: SIGUSR1
    (what ``#SBATCH --signal=USR1@120`` sends before the time limit) saves and requeues; the job started again
    with the same id and overrides and ``SLURM_RESTART_COUNT=1`` resumes from that checkpoint by itself."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(FAKE_SRUN)
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    for tool in ("srun", "scontrol"):
        (fake_bin / tool).chmod(0o755)
    run_dir = tmp_path / "run"
    job_id = str(20000 + os.getpid() % 10000)
    slurm_env = {
        **ddp_env(),
        # the stand-ins first, then this interpreter's bin: the script runs ``python`` (no venv is activated in CI)
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SRUN_CALLS": str(tmp_path / "srun.calls"),
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "mt",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_NODELIST": "127.0.0.1",
        "RUN_DIR": str(run_dir),
    }
    args = toy_args(toy_corpus_dir, tmp_path / "ignored")[:-1]  # the script sets hydra.run.dir
    # The same overrides both times, as a requeued job runs its script again: it only ends by a signal.
    command = ["bash", "scripts/slurm/train.sbatch", *args, "trainer.max_steps=100000", "trainer.log_every_n_steps=1"]
    with Running(command, tmp_path / "first.log", env=slurm_env) as job:
        wait_for_losses(job, run_dir, 3)
        job.process.send_signal(signal.SIGUSR1)  # to srun, which forwards it to the tasks
        stderr = job.finish(timeout=120)
    assert job.process.returncode == 0, stderr[-3000:]
    assert (tmp_path / "srun.calls").read_text().split()[:4] == ["--kill-on-bad-exit=1", "python", "-m", "mt.train"]
    assert "trainer.num_nodes=2" in (tmp_path / "srun.calls").read_text().split()
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", job_id]  # by rank 0 alone
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    assert saved >= 3

    with Running(command, tmp_path / "again.log", env={**slurm_env, "SLURM_RESTART_COUNT": "1"}) as job:
        wait_for_losses(job, run_dir, saved + 3)
        job.process.send_signal(signal.SIGTERM)  # a cancellation: saved, not requeued
        stderr = job.finish(timeout=120)
    assert job.process.returncode == 0, stderr[-3000:]
    assert "SLURM requeued this job (restart 1): resume=auto" in (run_dir / "train.log").read_text()
    resumed = losses(run_dir / "csv/resume_1/metrics.csv")
    # Went on from the checkpoint, not from step 0. The log's step k is update k + 1; the checkpoint carries its
    # last update's logged values and the resumed run writes them again (a kill may have come before the line).
    assert min(resumed) == saved - 1 and saved in resumed
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] > saved
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", job_id]  # SIGTERM does not requeue


def record(toy_corpus_dir: Path, run_dir: Path, ranks: int, steps: int, resume: bool = False) -> None:
    """mt.train on ``ranks`` CPU processes up to ``steps`` updates, every rank recording its batches."""
    args = [a for a in toy_args(toy_corpus_dir, run_dir) if not a.startswith("model.dropout=")]
    args += ["model.dropout=0.2", "trainer.log_every_n_steps=1", f"trainer.max_steps={steps}"]
    args += ["resume=auto"] if resume else []
    if ranks > 1:
        args += ddp_args(devices=ranks)
    result = run([sys.executable, "-m", "tests.system.record_batches", *args])
    assert result.returncode == 0, result.stderr[-3000:]


def batches(run_dir: Path, rank: int, from_step: int = 0) -> list[tuple[int, ...]]:
    """The batches (as tuples of corpus positions) ``rank`` trained on, from update ``from_step`` on."""
    lines = (run_dir / f"batches/rank{rank}.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [tuple(r["positions"]) for r in records if r["step"] >= from_step]


def test_resume_on_two_ranks_and_on_other_rank_counts(toy_corpus_dir, tmp_path):
    """Real rank counts, against the data order of one uninterrupted process (the epoch's batch order):

    - 2 ranks: rank r trains on batches r, r+2, ... of that order (disjoint, different on the two ranks);
    - 2 ranks stopped after 3 updates and resumed on 2 equal the uninterrupted 2-rank run: the same batches,
      the same loss at every update, the same parameters (gloo sums 2 values: exact on CPU);
    - 2 ranks resumed on 1: the 6 batches consumed are skipped, the one rank goes on with batch 6, 7, 8;
    - 1 rank stopped after 3 updates, resumed on 2: the ranks go on from the last multiple of 2 batches
      consumed (batch 2: one batch seen again, at most N-1 = 1), rank r with batches 2+r, 4+r.
    """
    order_dir, straight, stopped = tmp_path / "order", tmp_path / "straight", tmp_path / "stopped"
    record(toy_corpus_dir, order_dir, ranks=1, steps=15)
    order = batches(order_dir, 0)
    assert len(order) == 15 and len(set(order)) == 15  # 15 batches an epoch: the first epoch

    record(toy_corpus_dir, straight, ranks=2, steps=6)
    assert batches(straight, 0) == order[0:12:2] and batches(straight, 1) == order[1:12:2]

    record(toy_corpus_dir, stopped, ranks=2, steps=3)
    on_one = tmp_path / "on_one"
    shutil.copytree(stopped, on_one)
    record(toy_corpus_dir, stopped, ranks=2, steps=6, resume=True)
    for rank in (0, 1):
        assert batches(stopped, rank) == batches(straight, rank)
    expected, got = logged(straight, "train/loss"), logged(stopped, "train/loss")
    assert sorted(expected) == sorted(got) == list(range(6))
    assert got == expected  # bit for bit
    final_straight = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    final_resumed = torch.load(stopped / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in final_straight.items():
        assert torch.equal(final_resumed[name], tensor), name

    # to the epoch's end: the one rank trains batches 6-14 and validates the epoch (after update 3 + 9)
    record(toy_corpus_dir, on_one, ranks=1, steps=13, resume=True)
    assert batches(on_one, 0, from_step=3)[:9] == order[6:15]
    assert logged(on_one, "epoch")[11] == 0 and logged(on_one, "epoch")[12] == 1
    assert 11 in logged(on_one, "val/loss")  # the epoch's validation, at update 12 (logged one lower)

    from_one = tmp_path / "from_one"
    record(toy_corpus_dir, from_one, ranks=1, steps=3)
    assert batches(from_one, 0) == order[0:3]
    record(toy_corpus_dir, from_one, ranks=2, steps=10, resume=True)
    # to the epoch's end (7 updates: 15 batches, 16 with the wrap-around repeat of batch 0): every batch of it
    # from batch 2 on, rank r with batches 2+r, 4+r, ...
    assert batches(from_one, 0, from_step=3)[:7] == order[2:15:2]
    assert batches(from_one, 1, from_step=3)[:7] == [*order[3:15:2], order[0]]
    assert "(1 of them seen again)" in (from_one / "train.log").read_text()
    assert 9 in logged(from_one, "val/loss")  # the epoch's validation, at update 3 + 7
