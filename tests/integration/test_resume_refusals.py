"""A resume with other data or another seed is refused before anything of the run is written (its records, its
loggers' runs), where it used to fail inside fit; data paths of every corpus are recorded absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt.errors import RunError
from mt.model.checkpoint import read_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus

SETTINGS = {"trainer.max_steps": 6, "validation.decode": "none", "test_after_training": False}


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_other_data_or_seed_is_refused_before_the_run_is_touched(toy_corpus_dir, tmp_path):
    started = []
    train(tiny_train_config(toy_corpus_dir, **SETTINGS), tmp_path / "run", on_start=lambda: started.append(1))
    assert started == [1]
    before = files(tmp_path / "run")
    # Same size, other pairs: the batch count alone (the check inside fit) may not tell them apart.
    other = write_text_corpus(
        tmp_path / "other",
        {"train": toy_pairs(400, seed=11), "valid": toy_pairs(40, seed=2), "test": toy_pairs(40, seed=3)},
    )
    for changed, message in (
        ({"data": {**_data(other)}}, rf"data.path is '{other}' here but '{toy_corpus_dir}' in the checkpoint"),
        ({"seed": 2}, r"seed=2 here but 1 in the checkpoint, which orders the batches; resume with seed=1"),
    ):
        config = tiny_train_config(toy_corpus_dir, **SETTINGS, **{"resume": "auto", **changed})
        with pytest.raises(RunError, match=message):
            train(config, tmp_path / "run", on_start=lambda: started.append(2))
    assert started == [1] and files(tmp_path / "run") == before
    # The same data, with a setting that changes neither its pairs nor their order: the resume goes on.
    config = tiny_train_config(
        toy_corpus_dir, **{**SETTINGS, "trainer.max_steps": 8, "resume": "auto", "data.num_workers": 0}
    )
    train(config, tmp_path / "run", on_start=lambda: started.append(3))
    assert started == [1, 3]


def _data(path: Path) -> dict:
    return {"name": "toy", "path": str(path), "splits": {"valid": "valid"}, "max_tokens": 512, "max_len": 64}


def test_every_corpus_path_is_recorded_absolute(toy_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(toy_corpus_dir.parent)
    corpora = [{"path": toy_corpus_dir.name}, {"path": toy_corpus_dir.name, "tag": "<BT>", "valid": False}]
    config = tiny_train_config(toy_corpus_dir, **SETTINGS, **{"data.corpora": corpora})
    train(config, tmp_path / "run")
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["hyper_parameters"]["data"]["corpora"]
    assert [c["path"] for c in saved] == [str(toy_corpus_dir.resolve())] * 2
