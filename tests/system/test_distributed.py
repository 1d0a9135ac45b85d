"""Distributed training on CPU (gloo): 2 processes started by Lightning, torchrun and a 2-"node"
rendezvous on localhost; equal steps and equal validation BLEU against one process; a dead rank."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mt.config import SearchConfig
from mt.decode.scoring import score_checkpoint
from tests.helpers import ROOT, ddp_args, toy_args

pytestmark = pytest.mark.slow  # the system tier: whole commands in subprocesses, run in CI


def run(command: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    assert ddp["gradients"].keys() == single["gradients"].keys()
    for name, gradient in single["gradients"].items():
        torch.testing.assert_close(ddp["gradients"][name], gradient, rtol=1e-4, atol=1e-6)
        # Adam's first update is lr * sign(gradient): compare it where the sign is not noise.
        clear = gradient.abs() > 1e-5
        torch.testing.assert_close(ddp["parameters"][name][clear], single["parameters"][name][clear])


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
        *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=100000", "trainer.collective_timeout_s=600"),
        *ddp_args(),
    ]
    log = open(tmp_path / "stderr.txt", "w")
    main = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    rank1 = None
    try:
        deadline = time.monotonic() + 120
        while not (rank1 and list(run_dir.glob("csv/**/metrics.csv"))):  # both ranks are training
            assert time.monotonic() < deadline and main.poll() is None, "training did not start"
            time.sleep(0.5)
            children = Path(f"/proc/{main.pid}/task/{main.pid}/children").read_text().split()
            rank1 = psutil_free_process(int(children[0])) if children else None
        time.sleep(2)
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


def test_sbatch_script_runs_two_slurm_tasks_and_a_requeued_job_resumes(toy_corpus_dir, tmp_path):
    """scripts/slurm/train.sbatch under a stand-in ``srun`` that starts 2 tasks with SLURM's variables."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(
        "#!/bin/sh\nshift  # --kill-on-bad-exit\n"
        'SLURM_PROCID=0 SLURM_LOCALID=0 "$@" & first=$!\n'
        'SLURM_PROCID=1 SLURM_LOCALID=1 "$@" & second=$!\n'
        "wait $first && wait $second\n"
    )
    (fake_bin / "srun").chmod(0o755)
    slurm_env = {
        **os.environ,
        # the stand-in srun first, then this interpreter's bin: the script runs ``python`` (no venv is activated in CI)
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": str(20000 + os.getpid() % 10000),
        "SLURM_JOB_NAME": "mt",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
        "RUN_DIR": str(tmp_path / "run"),
    }
    args = toy_args(toy_corpus_dir, tmp_path / "ignored")[:-1]  # the script sets hydra.run.dir
    overrides = [*args, "trainer.accelerator=cpu", "trainer.precision=32-true"]
    first = run(["bash", "scripts/slurm/train.sbatch", *overrides, "trainer.max_steps=6"], env=slurm_env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    # The requeued job: same job id, so the same run directory, and resume=auto picks up last.ckpt.
    again = run(
        ["bash", "scripts/slurm/train.sbatch", *overrides, "trainer.max_steps=10"],
        env={**slurm_env, "SLURM_RESTART_COUNT": "1"},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 10
    assert (tmp_path / "run/csv/resume_1/metrics.csv").is_file()
