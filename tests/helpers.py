"""What several test modules share: the repository's paths, a tiny trained module, command lines."""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from mt.config import register_configs
from mt.training.datamodule import TranslationDataModule
from mt.training.module import TranslationModule
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def load_script(name: str):
    """``scripts/NAME.py`` as a module (its ``main`` not run), for tests of its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_callback(monkeypatch, callback: L.Callback) -> None:
    """Make ``mt.train`` add ``callback`` to the trainer it builds (for this test)."""
    import mt.training.run

    build_trainer = mt.training.run.build_trainer

    def building(*args, **kwargs):
        trainer, best = build_trainer(*args, **kwargs)
        trainer.callbacks.append(callback)
        return trainer, best

    monkeypatch.setattr(mt.training.run, "build_trainer", building)


def compose_config(name: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


def fit_tiny(data_dir, run_dir, **trainer_options) -> tuple[TranslationModule, L.Trainer]:
    """A tiny module trained briefly with a plain Lightning Trainer on ``data_dir``."""
    config = tiny_train_config(data_dir)
    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=run_dir, seed=1)
    tokenizer = datamodule.prepare_tokenizer()
    module = TranslationModule(
        {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64},
        {"lr": 1e-2, "warmup_steps": 5},
        {},
        {"decode": "none"},
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
    )
    module.tokenizer = tokenizer
    trainer = plain_trainer(**trainer_options)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def plain_trainer(**options) -> L.Trainer:
    """A plain Lightning Trainer on the CPU: no logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        **options,
    )


def logged(run_dir: Path, name: str) -> dict[int, float]:
    """Every logged value of ``name`` by step, across the run's CSV logs (a resumed process's last)."""
    found: dict[int, float] = {}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with open(path, newline="") as handle:
            found.update({int(r["step"]): float(r[name]) for r in csv.DictReader(handle) if r.get(name)})
    return found


def losses(csv_file: Path) -> dict[int, float]:
    with open(csv_file, newline="") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: a directory left alone compares equal. The data cache's digest
    memo is left out: a cache of the data files' digests, which any start (a refused one too) may add to."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("digests.json", ".digests.lock")
    }


def toy_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """mt.train overrides for a tiny model on the toy corpus, on CPU."""
    return [
        "data=local",
        f"data.path={data_dir}",
        "data.max_tokens=512",
        "data.max_len=64",
        "tokenizer.vocab_size=64",
        "model=tiny",
        "model.dropout=0.0",
        "optim.lr=3e-3",
        "optim.warmup_steps=20",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.max_time=null",
        "test_after_training=false",
        "threads=1",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def ddp_args(devices: int = 2) -> list[str]:
    return ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}", "trainer.precision=32-true"]


def free_port() -> int:
    """A free TCP port on localhost, below the kernel's ephemeral range.

    ``bind(("", 0))`` hands out ephemeral ports: one found that way and closed again can be handed to
    another socket before the test's process binds it. A port below the range is only ever taken by a
    program that asks for it by number.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chooser = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    for _ in range(200):
        port = chooser.randrange(20000, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found in 20000..{low - 1}")


def ddp_env() -> dict[str, str]:
    """The environment for a multi-process run on localhost, with a port of its own (see ``free_port``)."""
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def logged_losses(run_dir: Path) -> int:
    """Training losses in the run's CSV logs, resumed runs' included."""
    return sum(len(losses(path)) for path in run_dir.glob("csv/**/metrics.csv"))


class Running:
    """A training subprocess whose stderr goes to a file: a pipe that nobody reads while the test polls could fill
    and stall the process. As a context manager it is killed, and reaped, if the test ends while it runs."""

    def __init__(self, command: list[str], log: Path, **kwargs) -> None:
        self.log = log
        self._file = open(log, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=self._file, text=True, **kwargs)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._file.close()

    def stderr(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float) -> str:
        """Wait for the process to end; its stderr."""
        self.process.wait(timeout=timeout)
        return self.stderr()


def wait_for_losses(running: Running, run_dir: Path, total: int, timeout: float = 120) -> None:
    """Wait until the run has logged ``total`` training losses (failing if the process ends first)."""
    deadline = time.monotonic() + timeout
    while logged_losses(run_dir) < total:
        assert running.process.poll() is None, running.stderr()[-3000:]
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.1)
