"""init_from: a new run starts from a trained checkpoint's weights and tokenizer, with a fresh optimiser,
schedule and data position; what cannot work is refused in one line; a fine-tuning run resumes exactly."""

from __future__ import annotations

import json

import lightning as L
import pytest
import sentencepiece as spm
import torch

from mt.config import TrainConfig
from mt.errors import ConfigError, RunError
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import logged, losses
from tests.integration.test_resume import StopAt, with_callback


@pytest.fixture(scope="module")
def trained(toy_corpus_dir, tmp_path_factory):
    """A tiny model trained 30 steps on the toy corpus: the checkpoint runs start from."""
    run_dir = tmp_path_factory.mktemp("pretrained")
    train(tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 30, "test_after_training": False}), run_dir)
    return run_dir / "checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """The "new domain": other sentences of the toy language (the vocabulary stays the checkpoint's)."""
    pairs = {"train": toy_pairs(200, seed=21), "valid": toy_pairs(20, seed=22), "test": toy_pairs(20, seed=23)}
    return write_text_corpus(tmp_path_factory.mktemp("other"), pairs)


def finetune_config(data_dir, checkpoint, steps: int, **extra) -> TrainConfig:
    return tiny_train_config(
        data_dir,
        **{
            "init_from": str(checkpoint),
            "trainer.max_steps": steps,
            "trainer.log_every_n_steps": 1,
            "optim.warmup_steps": 4,
            "model.dropout": 0.1,  # dropout is not architecture: it may change
            "validation.decode": "none",
            "test_after_training": False,
            **extra,
        },
    )


class FirstWeights(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}


def test_a_run_starts_from_the_checkpoints_weights_and_tokenizer_with_a_fresh_optimiser(
    trained, other_corpus, tmp_path, monkeypatch
):
    first = FirstWeights()
    with_callback(monkeypatch, first)
    train(finetune_config(other_corpus, trained, 6), tmp_path)
    stored = torch.load(trained, weights_only=False)
    for name, value in first.weights.items():
        assert torch.equal(value, stored["state_dict"][f"model.{name}"]), name
    saved = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert saved["tokenizer"] == stored["tokenizer"]
    assert saved["global_step"] == 6  # its own count, not 30 + 6
    rates = logged(tmp_path, "train/lr")
    assert rates[0] == pytest.approx(3e-3 / 4)  # a fresh warm-up: update 1 of 4 (the pretrained run's ended)
    assert saved["hyper_parameters"]["data"]["path"] == str(other_corpus)
    # The run's record of its tokenizer says where it came from and what it is, not tokenizer.* defaults
    pieces = spm.SentencePieceProcessor(model_proto=stored["tokenizer"]["src_model"]).get_piece_size()
    record = json.loads((tmp_path / "tokenizer/settings.json").read_text())
    assert record == {"init_from": str(trained), "joint": True, "src_vocab_size": pieces, "tgt_vocab_size": pieces}


def test_a_finetuning_run_resumes_exactly(trained, other_corpus, tmp_path, monkeypatch):
    """Stopped after 5 updates and started again with the same command plus resume=auto (init_from then applies
    only while there is no last.ckpt): it goes on from the run's own last.ckpt and equals the uninterrupted run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(finetune_config(other_corpus, trained, 10), straight)
    with_callback(monkeypatch, StopAt(5))
    train(finetune_config(other_corpus, trained, 10), resumed)
    monkeypatch.undo()
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    assert sorted(losses(resumed / "csv/metrics.csv")) == list(range(5))
    train(finetune_config(other_corpus, trained, 10, resume="auto"), resumed)
    assert sorted(losses(resumed / "csv/resume_1/metrics.csv")) == list(range(5, 10))  # only the steps after 5
    expected, got = logged(straight, "train/loss"), logged(resumed, "train/loss")
    assert sorted(got) == sorted(expected) == list(range(10))
    assert all(got[s] == pytest.approx(expected[s], abs=1e-6) for s in expected)
    a = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-5, atol=1e-6)


def test_what_cannot_work_is_refused_in_one_line(trained, other_corpus, toy_corpus_dir, tmp_path):
    with pytest.raises(RunError, match=r"init_from=.*: the checkpoint is of another model \(model.d_model=32 there"):
        train(finetune_config(other_corpus, trained, 2, **{"model.d_model": 64}), tmp_path / "bigger")
    with pytest.raises(ConfigError, match="starts a new run from a checkpoint's weights and resume=x.ckpt continues"):
        finetune_config(other_corpus, trained, 2, resume="x.ckpt")
    with pytest.raises(Exception, match=r"checkpoint .*missing.ckpt: no such file"):
        train(finetune_config(other_corpus, tmp_path / "missing.ckpt", 2), tmp_path / "missing")
    # A run directory that already holds another tokenizer: the vocabulary cannot change.
    own = tmp_path / "own"
    train(tiny_train_config(other_corpus, **{"trainer.max_steps": 1, "test_after_training": False}), own)
    for path in (own / "checkpoints").glob("*.ckpt"):
        path.unlink()  # (a run directory without checkpoints is a fresh start)
    with pytest.raises(RunError, match="holds another tokenizer, and the vocabulary cannot change"):
        train(finetune_config(other_corpus, trained, 2), own)
