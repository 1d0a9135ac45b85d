"""A run directory's tokenizer taken from ``init_from``'s checkpoint is that fine-tuning run's: a launch in that
directory that neither fine-tunes nor resumes is refused, where it went on with that tokenizer whatever its
``tokenizer.*`` settings asked (a start that failed before its first checkpoint, relaunched as a fresh run)."""

from __future__ import annotations

import json

import pytest

from mt.config import DataConfig, TokenizerConfig, from_dict
from mt.data.run_tokenizer import record_init_from, run_tokenizer
from mt.data.tokenizer import train_tokenizer
from mt.errors import TokenizerError
from tests.conftest import toy_pairs


def test_a_tokenizer_from_init_from_is_kept_only_by_a_launch_from_a_checkpoint(tmp_path):
    pairs = toy_pairs(100, seed=1)
    tokenizer = train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=48)
    directory = tmp_path / "run/tokenizer"
    tokenizer.save(directory)
    record_init_from(directory, tokenizer, tmp_path / "pretrained.ckpt")
    record = json.loads((directory / "settings.json").read_text())
    assert record == {
        "init_from": str(tmp_path / "pretrained.ckpt"),
        "joint": True,
        "src_vocab_size": 48,
        "tgt_vocab_size": 48,
    }
    data = from_dict(DataConfig, {"name": "t", "path": str(tmp_path / "data")})
    settings = from_dict(TokenizerConfig, {"vocab_size": 16000, "model_type": "bpe"})  # what the relaunch asks
    common = {"directory": directory, "cache_dir": tmp_path / "cache", "shared": False, "seed": 1, "files": []}
    with pytest.raises(TokenizerError, match=r"holds the tokenizer of init_from=.*pretrained.ckpt .*pass init_from="):
        run_tokenizer(data, settings, **common)
    kept = run_tokenizer(data, settings, **common, from_checkpoint=True)  # init_from= again, or a resume
    assert kept.to_state() == tokenizer.to_state()
