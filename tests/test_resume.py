"""Resumed training equals uninterrupted training: same losses at every step, same parameters."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mt.train import train
from tests.conftest import tiny_train_config


def losses(csv_file: Path) -> dict[int, float]:
    with open(csv_file, newline="") as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def run(data_dir: Path, run_dir: Path, max_steps: int, resume: str | None = None, every: int = 1) -> None:
    config = tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": max_steps,
            "trainer.log_every_n_steps": 1,
            "trainer.checkpoint_every_n_steps": every,
            "model.dropout": 0.2,
            "data.max_tokens": 300,
            "validation.decode": "none",
            "test_after_training": False,
            "resume": resume,
        },
    )
    train(config, run_dir)


# The toy corpus makes 25 batches an epoch at max_tokens=300.
@pytest.mark.parametrize(
    "stop,every",
    [(23, 1), (25, 5)],
    ids=["mid-epoch", "last batch of an epoch"],
)
def test_resume_equals_uninterrupted_run(toy_corpus_dir, tmp_path, stop, every):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 40, every=every)
    run(toy_corpus_dir, resumed, stop, every=every)
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == stop
    run(toy_corpus_dir, resumed, 40, resume="auto", every=every)

    expected = losses(straight / "csv/metrics.csv")
    got = {**losses(resumed / "csv/metrics.csv"), **losses(resumed / "csv/resume_1/metrics.csv")}
    assert sorted(got) == sorted(expected) == list(range(40))
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])

    final_straight = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)
    final_resumed = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)
    assert final_resumed["global_step"] == final_straight["global_step"] == 40
    for name, tensor in final_straight["state_dict"].items():
        torch.testing.assert_close(final_resumed["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)
    assert not list(resumed.glob("checkpoints/.*tmp*"))  # no temporary files left behind
