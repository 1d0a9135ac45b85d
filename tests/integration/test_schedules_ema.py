"""Schedules and the weights' moving average in training: the rate each update used, against the formula
written out here; the EMA against its formula applied by hand to the weights after each update; and a run with
both, stopped and resumed, equal to the uninterrupted run."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from mt.training.ema import ExponentialMovingAverage
from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import fit_tiny, logged
from tests.integration.test_resume import StopAt, with_callback


def config(data_dir, steps: int, **extra):
    return tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": steps,
            "trainer.log_every_n_steps": 1,
            "trainer.checkpoint_every_n_steps": 5,
            "optim.schedule": "cosine",
            "optim.lr": 3e-3,
            "optim.lr_floor": 3e-4,
            "optim.warmup_steps": 5,
            "model.dropout": 0.1,
            "validation.decode": "none",
            "test_after_training": False,
            **extra,
        },
    )


def test_a_cosine_schedule_gives_each_update_the_rate_of_its_formula(toy_corpus_dir, tmp_path):
    train(config(toy_corpus_dir, 20), tmp_path)
    rates = logged(tmp_path, "train/lr")
    assert sorted(rates) == list(range(20))
    for step, rate in rates.items():  # the update after `step` earlier ones
        if step < 5:
            expected = max(step, 1) / 5
        else:
            expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 5) / 15))
        assert rate == pytest.approx(3e-3 * expected, rel=1e-6), step


class RecordWeights(L.Callback):
    def __init__(self) -> None:
        self.after_each_update: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after_each_update.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def test_the_moving_average_is_its_formula_applied_to_the_weights_after_each_update(toy_corpus_dir, tmp_path):
    recorder, decay = RecordWeights(), 0.8
    _, trainer = fit_tiny(toy_corpus_dir, tmp_path, max_steps=8, callbacks=[ExponentialMovingAverage(decay), recorder])
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    saved = torch.load(tmp_path / "ema.ckpt", weights_only=False)
    weights = recorder.after_each_update
    assert len(weights) == 8
    reference = dict(weights[0])  # the first update's weights, then d_n = min(decay, (1 + n) / (10 + n))
    for n, current in enumerate(weights[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        reference = {name: d * reference[name] + (1 - d) * current[name] for name in reference}
    for name, value in reference.items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=1e-5, atol=1e-7)
    # The weights being trained are saved beside the average, and stay in the module.
    for name, value in weights[-1].items():
        torch.testing.assert_close(saved["current_model_state"][name], value)
        torch.testing.assert_close(dict(trainer.lightning_module.named_parameters())[name], value)
    name = "model.encoder_layers.0.self_attn.qkv.weight"
    assert not torch.allclose(reference[name], weights[-1][name], atol=1e-4)  # the check above can fail


def test_validation_scores_the_average_that_best_ckpt_holds(toy_corpus_dir, tmp_path):
    """With an EMA, val/bleu is the BLEU of the averaged weights: decoding best.ckpt (its state_dict, the average)
    on the validation split gives the logged value that chose it."""
    from mt.config import SearchConfig
    from mt.decode.scoring import score_checkpoint

    train(
        config(
            toy_corpus_dir,
            40,
            **{
                "optim.ema_decay": 0.9,
                "validation.decode": "greedy",
                "validation.max_sentences": None,
                "trainer.val_check_interval": 20,
                "trainer.check_val_every_n_epoch": None,
            },
        ),
        tmp_path,
    )
    best = torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=False)
    decoded = score_checkpoint(tmp_path / "checkpoints/best.ckpt", split="valid", search=SearchConfig(beam=1))
    assert decoded["bleu"] == pytest.approx(best["val_metrics"]["val/bleu"], abs=0.006)
    name = "model.encoder_layers.0.self_attn.qkv.weight"  # the average is not the weights being trained
    assert not torch.allclose(best["state_dict"][name], best["current_model_state"][name], atol=1e-4)


def test_a_run_with_a_cosine_decay_and_an_ema_resumes_exactly(toy_corpus_dir, tmp_path, monkeypatch):
    """Stopped after 10 of its 20 updates (as a time limit stops a run) and resumed. (Extending a finished run
    instead, max_steps=10 then 20, changes a step-budget decay: the budget is part of the schedule.)"""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config(toy_corpus_dir, 20, **{"optim.ema_decay": 0.9}), straight)
    with_callback(monkeypatch, StopAt(10))
    train(config(toy_corpus_dir, 20, **{"optim.ema_decay": 0.9}), resumed)
    monkeypatch.undo()
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 10
    train(config(toy_corpus_dir, 20, **{"optim.ema_decay": 0.9, "resume": "auto"}), resumed)
    for name in ("train/loss", "train/lr"):
        expected, got = logged(straight, name), logged(resumed, name)
        assert sorted(got) == sorted(expected) == list(range(20))
        assert all(got[s] == pytest.approx(expected[s], abs=1e-6) for s in expected), name
    a = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)
    for key in ("state_dict", "current_model_state"):  # the average, and the weights being trained
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=1e-5, atol=1e-6)


def test_the_moving_average_moves_to_the_device_the_weights_are_moved_to():
    """Lightning calls ``setup`` before the strategy moves the model to its device: the average must follow it
    there (on a GPU it stayed on the CPU, and the second update mixed devices). ``meta`` stands in for CUDA."""
    from types import SimpleNamespace

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    ema = ExponentialMovingAverage(0.9)
    ema.setup(None, module, "fit")
    model.to("meta")  # what strategy.setup does, after the callbacks' setup
    module.device = torch.device("meta")
    ema.on_fit_start(None, module)
    assert {p.device.type for p in ema.average.parameters()} == {"meta"}
    assert ema.average.n_averaged.device.type == "meta"
