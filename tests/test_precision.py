"""Mixed precision on CPU: bf16 autocast trains, and the loss falls without NaN."""

from __future__ import annotations

import csv

from mt.train import train
from tests.conftest import tiny_train_config


def test_bf16_mixed_training_on_cpu_lowers_the_loss(toy_corpus_dir, tmp_path):
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "trainer.precision": "bf16-mixed",
            "trainer.max_steps": 60,
            "trainer.log_every_n_steps": 1,
            "validation.decode": "greedy",
            "test_after_training": False,
        },
    )
    train(config, tmp_path)
    with open(tmp_path / "csv/metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 60 and all(loss == loss and loss < float("inf") for loss in losses)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    val_bleu = [float(r["val/bleu"]) for r in rows if r.get("val/bleu")]
    assert val_bleu and all(0 <= b <= 100 for b in val_bleu)
