"""validation.metric chooses best.ckpt (and is what mt.train returns to a sweeper): the logged validation value
of the chosen checkpoint, best by that metric, never a test score."""

from __future__ import annotations

import json

import pytest
import torch

from mt.config import ValidationConfig
from mt.errors import ConfigError
from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import logged


@pytest.mark.parametrize(("metric", "name", "best"), [("chrf", "val/chrf", max), ("loss", "val/loss", min)])
def test_the_selection_metric_chooses_best_ckpt_and_is_what_train_returns(toy_corpus_dir, tmp_path, metric, name, best):
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "trainer.max_steps": 40,
            "trainer.val_check_interval": 10,
            "trainer.check_val_every_n_epoch": None,
            "validation.metric": metric,
            "test_after_training": True,
        },
    )
    result = train(config, tmp_path)
    values = logged(tmp_path, name)
    assert len(values) == 4 and len(set(values.values())) > 1  # a choice to make
    chosen_step, chosen = best(values.items(), key=lambda item: item[1])
    selection = result["selection"]
    assert selection["metric"] == name and selection["value"] == pytest.approx(chosen, abs=1e-4)
    assert selection["step"] == chosen_step + 1  # the log's step k is update k + 1
    saved = torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=False)
    assert saved["global_step"] == chosen_step + 1
    assert json.loads((tmp_path / "selection.json").read_text()) == selection
    assert result["test"]["bleu"] == json.loads((tmp_path / "test_scores.json").read_text())["bleu"]


def test_selection_defaults_and_impossible_choices():
    assert ValidationConfig().selection == ("val/bleu", "max")
    assert ValidationConfig(decode="none").selection == ("val/loss", "min")
    with pytest.raises(ConfigError, match="validation.metric=chrf needs validation.decode=greedy or beam"):
        ValidationConfig(decode="none", metric="chrf")
    with pytest.raises(ConfigError, match="validation.metric='ter': expected one of bleu, chrf, loss or null"):
        ValidationConfig(metric="ter")
