"""What several test modules share: the repository's paths, a tiny trained module, command lines."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from mt.config import register_configs
from mt.training.datamodule import TranslationDataModule
from mt.training.module import TranslationModule
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


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
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
        **trainer_options,
    )
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def losses(csv_file: Path) -> dict[int, float]:
    with open(csv_file, newline="") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


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
