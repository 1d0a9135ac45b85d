"""Checkpoint averaging: the mean of the parameters, a checkpoint that decodes like any other."""

from __future__ import annotations

import pytest
import torch

from mt.config import SearchConfig
from mt.decode.translator import translate
from mt.errors import CheckpointError, RunError
from mt.model.averaging import average_checkpoints
from mt.model.checkpoint import load_checkpoint, newest_checkpoints
from tests.helpers import fit_tiny


@pytest.fixture(scope="module")
def two_checkpoints(toy_corpus_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("avg")
    for name, steps in (("a", 5), ("b", 10)):  # the same model and tokenizer, trained for different steps
        _, trainer = fit_tiny(toy_corpus_dir, directory / name, max_steps=steps)
        trainer.save_checkpoint(directory / f"{name}.ckpt")
    return directory / "a.ckpt", directory / "b.ckpt"


def test_average_is_the_mean_and_translates(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    averaged = average_checkpoints([a, b])
    state_a = torch.load(a, weights_only=False)["state_dict"]
    state_b = torch.load(b, weights_only=False)["state_dict"]
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    for name, tensor in averaged["state_dict"].items():
        torch.testing.assert_close(tensor, (state_a[name] + state_b[name]) / 2)
    assert "optimizer_states" not in averaged
    torch.save(averaged, tmp_path / "avg.ckpt")
    module = load_checkpoint(tmp_path / "avg.ckpt")
    (nbest,) = translate(module.model, module.tokenizer, ["Der hund sieht der ball."], SearchConfig(beam=2))
    assert isinstance(nbest[0][0], str)


def test_the_average_records_the_newest_step_and_its_epoch_in_any_order(two_checkpoints, tmp_path):
    """checkpoints=[newer, older]: the average took the last listed one's step and the first's epoch."""
    for name, path, epoch in (("older", two_checkpoints[0], 1), ("newer", two_checkpoints[1], 3)):
        stored = torch.load(path, weights_only=False)
        stored["epoch"] = epoch  # told apart whatever epochs 5 and 10 steps reached
        torch.save(stored, tmp_path / f"{name}.ckpt")
    for order in (["newer", "older"], ["older", "newer"]):
        averaged = average_checkpoints([tmp_path / f"{name}.ckpt" for name in order])
        assert (averaged["global_step"], averaged["epoch"]) == (10, 3), order


def test_average_of_one_checkpoint_is_that_checkpoint(two_checkpoints):
    a, _ = two_checkpoints
    averaged = average_checkpoints([a, a, a])
    for name, tensor in torch.load(a, weights_only=False)["state_dict"].items():
        torch.testing.assert_close(averaged["state_dict"][name], tensor)


def test_averaging_refuses_other_models_and_missing_files(two_checkpoints, tmp_path):
    a, _ = two_checkpoints
    other = torch.load(a, weights_only=False)
    other["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="differ in names or shapes"):
        average_checkpoints([a, tmp_path / "other.ckpt"])
    with pytest.raises(CheckpointError, match="no such file"):
        average_checkpoints([a, tmp_path / "absent.ckpt"])
    with pytest.raises(RunError, match="keep_checkpoints"):
        newest_checkpoints(tmp_path, 2)
    with pytest.raises(RunError, match=r"run=.*absent: no such directory"):
        newest_checkpoints(tmp_path / "absent", 2)


def test_averaging_refuses_another_runs_tokenizer_or_model_config(two_checkpoints, tmp_path):
    a, _ = two_checkpoints
    for what, change in (
        ("tokenizer", lambda c: c["tokenizer"].update({"src": b"another model"})),
        ("model architecture", lambda c: c["hyper_parameters"]["model"].update({"pre_norm": False})),
    ):
        other = torch.load(a, weights_only=False)
        change(other)
        torch.save(other, tmp_path / "other.ckpt")
        with pytest.raises(CheckpointError, match=f"its {what} differs from"):
            average_checkpoints([a, tmp_path / "other.ckpt"])


def test_averaging_takes_one_runs_checkpoints_across_a_resume_that_changed_dropout(two_checkpoints, tmp_path):
    """A resume may change the dropouts (not the architecture): the run's step checkpoints still average."""
    a, _ = two_checkpoints
    resumed = torch.load(a, weights_only=False)
    resumed["hyper_parameters"]["model"].update({"dropout": 0.3, "attention_dropout": 0.1})
    torch.save(resumed, tmp_path / "resumed.ckpt")
    averaged = average_checkpoints([a, tmp_path / "resumed.ckpt"])
    for name, tensor in torch.load(a, weights_only=False)["state_dict"].items():
        torch.testing.assert_close(averaged["state_dict"][name], tensor)
    # A checkpoint that records no value of an option (written before it existed) meant the option's default.
    assert "positions" not in resumed["hyper_parameters"]["model"]
    resumed["hyper_parameters"]["model"]["positions"] = "interleaved"
    torch.save(resumed, tmp_path / "newer.ckpt")
    average_checkpoints([a, tmp_path / "newer.ckpt"])


def test_step_checkpoints_are_ordered_by_step_past_seven_digits(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for step in (9_999_999, 10_000_000, 200, 12_345_678):
        (tmp_path / "checkpoints" / f"step{step:07d}.ckpt").touch()
    (tmp_path / "checkpoints" / "stepless.ckpt").touch()
    assert [p.name for p in newest_checkpoints(tmp_path, 3)] == [
        "step9999999.ckpt",
        "step10000000.ckpt",
        "step12345678.ckpt",
    ]
