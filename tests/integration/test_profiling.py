"""trainer.profile_steps: a torch.profiler trace of chosen training steps and its summary, on the CPU."""

from __future__ import annotations

import gzip
import json

import lightning as L
import torch

from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import with_callback


class ReadsEveryStep(L.Callback):
    """An injected host read: one ``.item()`` at every training batch's end."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.ones(1).add(1).item()


def profiled_run(toy_corpus_dir, run_dir, max_steps: int = 12) -> str:
    config = tiny_train_config(
        toy_corpus_dir,
        **{"trainer.max_steps": max_steps, "trainer.log_every_n_steps": 50, "validation.decode": "none"},
        **{"trainer.profile_after": 3, "trainer.profile_steps": 4, "test_after_training": False},
    )
    train(config, run_dir)
    return (run_dir / "profile/summary.txt").read_text()


def test_profile_records_the_chosen_steps_and_counts_host_reads(toy_corpus_dir, tmp_path, monkeypatch):
    summary = profiled_run(toy_corpus_dir, tmp_path / "plain")
    assert "profile: 4 training steps" in summary
    assert "host-device syncs a step: aten::_local_scalar_dense 0\n" in summary  # ordinary steps read nothing
    data = float(summary.split("data loading (DataLoader __next__, host): ")[1].split(" ms")[0])
    optimizer = float(summary.split("optimizer update (clipping, checks, step; host): ")[1].split(" ms")[0])
    assert data > 0 and optimizer > 0
    assert "top operators (own host time):" in summary and "aten::" in summary
    with gzip.open(tmp_path / "plain/profile/trace.json.gz", "rt") as handle:
        trace = json.load(handle)
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {f"ProfilerStep#{k}" for k in range(3, 7)}  # steps 4-7, numbered from 0

    with_callback(monkeypatch, ReadsEveryStep())
    summary = profiled_run(toy_corpus_dir, tmp_path / "reading")
    assert "host-device syncs a step: aten::_local_scalar_dense 1\n" in summary


def test_a_run_ending_inside_the_window_counts_only_its_updates(toy_corpus_dir, tmp_path):
    """Updates 4 and 5 of a 5-update run fall in the window of 4..7: the time after the last update (validation,
    teardown) is recorded as one more profiler step, which the summary leaves out."""
    summary = profiled_run(toy_corpus_dir, tmp_path, max_steps=5)
    assert summary.startswith("profile: 2 training steps,")
    with gzip.open(tmp_path / "profile/trace.json.gz", "rt") as handle:
        trace = json.load(handle)
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#3", "ProfilerStep#4", "ProfilerStep#5"}  # the tail is in the trace
