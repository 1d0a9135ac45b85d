"""Training end to end in-process: overfitting, checkpoints that translate alone, run-directory safety."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch

from mt.config import SearchConfig
from mt.decode.scoring import score_checkpoint
from mt.decode.translator import translate
from mt.errors import CheckpointError, RunError
from mt.model.checkpoint import load_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import fit_tiny


def test_tiny_model_overfits_64_pairs(tmp_path):
    pairs = toy_pairs(64, seed=5)
    data_dir = write_text_corpus(tmp_path / "data", {"train": pairs, "valid": pairs[:16], "test": pairs})
    config = tiny_train_config(
        data_dir,
        **{
            "model.d_model": 64,
            "model.d_ff": 128,
            "model.encoder_layers": 2,
            "model.decoder_layers": 2,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 40,
            "optim.label_smoothing": 0.0,
            "data.max_tokens": 2048,
            "trainer.max_steps": 300,
            "trainer.check_val_every_n_epoch": 100,
            "validation.decode": "none",
            "test_after_training": False,
        },
    )
    train(config, tmp_path / "run")
    scores = score_checkpoint(
        tmp_path / "run/checkpoints/last.ckpt", split="train", progress=False, search=SearchConfig(beam=4)
    )
    assert scores["sentences"] == 64
    assert scores["bleu"] > 90, scores


def test_batches_are_reshuffled_every_epoch_under_the_trainer(toy_corpus_dir, tmp_path):
    class Recorder(L.Callback):
        def __init__(self) -> None:
            self.epochs: dict[int, list[list[int]]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.epochs.setdefault(trainer.current_epoch, []).append(batch.corpus_positions.tolist())

    recorder = Recorder()
    fit_tiny(toy_corpus_dir, tmp_path, max_epochs=2, callbacks=[recorder])
    first, second = recorder.epochs[0], recorder.epochs[1]
    assert first != second
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b) == list(range(400))


def test_checkpoint_alone_translates_like_the_trained_module(toy_corpus_dir, tmp_path):
    module, trainer = fit_tiny(toy_corpus_dir, tmp_path, max_steps=15)
    tokenizer = module.tokenizer
    trainer.save_checkpoint(tmp_path / "model.ckpt")

    loaded = load_checkpoint(tmp_path / "model.ckpt")
    for name, tensor in module.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    sentences = ["Der hund sieht der ball.", "Die frau hat der baum rot.", ""]
    search = SearchConfig(beam=3, nbest=2)
    assert translate(loaded.model, loaded.tokenizer, sentences, search) == translate(
        module.eval().model, tokenizer, sentences, search
    )
    assert translate(loaded.model, loaded.tokenizer, sentences, search)[2] == [("", 0.0)] * 2  # nbest, as the rest


def test_training_refuses_a_run_directory_with_checkpoints(toy_corpus_dir, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/last.ckpt").write_bytes(b"precious")
    with pytest.raises(RunError, match="resume=auto"):
        train(tiny_train_config(toy_corpus_dir), tmp_path)
    assert (tmp_path / "checkpoints/last.ckpt").read_bytes() == b"precious"


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"run: a directory, not a checkpoint file \(it holds no .ckpt file\)"):
        load_checkpoint(tmp_path / "run")
    for name in ("best", "last"):
        (tmp_path / f"run/checkpoints/{name}.ckpt").write_bytes(b"")
    hint = r"\(the checkpoints in it: checkpoints/best.ckpt, checkpoints/last.ckpt\)"
    with pytest.raises(CheckpointError, match=rf"run: a directory, not a checkpoint file {hint}"):
        load_checkpoint(tmp_path / "run")
    (tmp_path / "random.ckpt").write_bytes(torch.randint(0, 255, (1000,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(tmp_path / "random.ckpt")


def test_the_logged_loss_of_an_accumulated_update_covers_all_its_batches(toy_corpus_dir, tmp_path, monkeypatch):
    """``accumulate_grad_batches=2``: each update's train/loss is its two batches' summed loss over their summed
    tokens (it was the last batch's alone)."""
    from mt.training.module import TranslationModule
    from tests.helpers import losses

    seen: list[tuple[float, float]] = []
    original = TranslationModule._loss

    def recording(self, batch):
        loss_sum, nll_sum, tokens = original(self, batch)
        seen.append((float(loss_sum), float(tokens)))
        return loss_sum, nll_sum, tokens

    monkeypatch.setattr(TranslationModule, "_loss", recording)
    options = {"trainer.accumulate_grad_batches": 2, "trainer.max_steps": 4, "trainer.log_every_n_steps": 1}
    train(tiny_train_config(toy_corpus_dir, **options, test_after_training=False), tmp_path)
    logged = losses(tmp_path / "csv/metrics.csv")
    assert sorted(logged) == [0, 1, 2, 3] and len(seen) == 8
    for step, loss in logged.items():
        (first, first_tokens), (second, second_tokens) = seen[2 * step : 2 * step + 2]
        assert first / first_tokens != pytest.approx(second / second_tokens, rel=1e-4)  # so the check can fail
        assert loss == pytest.approx((first + second) / (first_tokens + second_tokens), rel=1e-5)


def test_the_rate_clock_stands_from_validation_to_the_next_batch(toy_corpus_dir, tmp_path, monkeypatch):
    """Per-epoch validation (the default): best.ckpt is saved at the epoch's end, after validation has ended; the
    clock of train/tgt_tokens_per_s must stand through that save too, and run during training batches."""
    import mt.training.throughput as throughput
    from tests.helpers import with_callback

    clock = [0.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            clock[0] += 1.0  # a second of training a batch

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            clock[0] += 1000.0  # a slow save, after validation (Lightning saves best.ckpt here)

    with_callback(monkeypatch, Clock())
    options = {"trainer.max_steps": 24, "trainer.log_every_n_steps": 12, "test_after_training": False}
    train(tiny_train_config(toy_corpus_dir, **options, **{"validation.decode": "none"}), tmp_path)
    assert clock[0] >= 24 + 1000  # an epoch ended (and saved) within the run
    with open(tmp_path / "csv/metrics.csv", newline="") as handle:
        rates = [float(r["train/tgt_tokens_per_s"]) for r in csv.DictReader(handle) if r.get("train/tgt_tokens_per_s")]
    # 12 one-second batches a window, each of tens of target tokens at least; with a 1000 s save counted, the
    # rate of a window would be at most 512 * 12 / 1012 (a batch holds at most max_tokens=512).
    assert len(rates) == 2 and min(rates) > 50, rates
