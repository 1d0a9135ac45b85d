"""A resume with other data or another seed is refused before anything of the run is written (its records, its
loggers' runs), where it used to fail inside fit; data paths of every corpus are recorded absolute."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mt.errors import RunError
from mt.model.checkpoint import read_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import tree_bytes

SETTINGS = {"trainer.max_steps": 6, "validation.decode": "none", "test_after_training": False}


def test_other_data_or_seed_is_refused_before_the_run_is_touched(toy_corpus_dir, tmp_path):
    started = []
    train(tiny_train_config(toy_corpus_dir, **SETTINGS), tmp_path / "run", on_start=lambda: started.append(1))
    assert started == [1]
    before = tree_bytes(tmp_path / "run")
    # Same size, other pairs: the batch count alone (the check inside fit) may not tell them apart.
    other = write_text_corpus(
        tmp_path / "other",
        {"train": toy_pairs(400, seed=11), "valid": toy_pairs(40, seed=2), "test": toy_pairs(40, seed=3)},
    )
    for changed, message in (
        ({"data": {**_data(other)}}, r"the training files of corpus 0 are \[\['train.de.gz', \d+\], .* but were "),
        ({"seed": 2}, r"seed=2 here but 1 in the checkpoint, which orders the batches; resume with seed=1"),
    ):
        config = tiny_train_config(toy_corpus_dir, **SETTINGS, **{"resume": "auto", **changed})
        with pytest.raises(RunError, match=message):
            train(config, tmp_path / "run", on_start=lambda: started.append(2))
    assert started == [1] and tree_bytes(tmp_path / "run") == before
    # The same data, with a setting that changes neither its pairs nor their order: the resume goes on.
    config = tiny_train_config(
        toy_corpus_dir, **{**SETTINGS, "trainer.max_steps": 8, "resume": "auto", "data.num_workers": 0}
    )
    train(config, tmp_path / "run", on_start=lambda: started.append(3))
    assert started == [1, 3]


def test_moved_data_resumes_and_changed_files_or_pair_fields_do_not(toy_corpus_dir, tmp_path):
    """The checkpoint records its training files' names and sizes: the same files moved (another mount) resume,
    and so do other validation or test split names; a file changed in place, or max_len, is refused."""
    data = tmp_path / "data"
    shutil.copytree(toy_corpus_dir, data)
    train(tiny_train_config(data, **SETTINGS), tmp_path / "run")
    moved = tmp_path / "moved"
    data.rename(moved)
    (moved / "dev.de.gz").write_bytes((moved / "valid.de.gz").read_bytes())
    (moved / "dev.en.gz").write_bytes((moved / "valid.en.gz").read_bytes())
    resumed = {"resume": "auto", "trainer.max_steps": 8}
    config = tiny_train_config(moved, **{**SETTINGS, **resumed, "data": {**_data(moved), "splits": {"valid": "dev"}}})
    train(config, tmp_path / "run")
    assert read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == 8
    pairs = toy_pairs(400, seed=1)
    pairs[0] = (pairs[0][0] + " und", pairs[0][1])  # one word more: another size
    write_text_corpus(moved, {"train": pairs})
    config = tiny_train_config(moved, **{**SETTINGS, **resumed, "trainer.max_steps": 10})
    with pytest.raises(RunError, match=r"the training files of corpus 0 are .* here but were .* \(names and sizes\)"):
        train(config, tmp_path / "run")
    write_text_corpus(moved, {"train": toy_pairs(400, seed=1)})
    config = tiny_train_config(moved, **{**SETTINGS, **resumed, "trainer.max_steps": 10, "data.max_len": 32})
    with pytest.raises(RunError, match=r"data.max_len is 32 here but 64 in the checkpoint"):
        train(config, tmp_path / "run")


def _data(path: Path) -> dict:
    return {"name": "toy", "path": str(path), "splits": {"valid": "valid"}, "max_tokens": 512, "max_len": 64}


def test_every_corpus_path_is_recorded_absolute(toy_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(toy_corpus_dir.parent)
    corpora = [{"path": toy_corpus_dir.name}, {"path": toy_corpus_dir.name, "tag": "<BT>", "valid": False}]
    config = tiny_train_config(toy_corpus_dir, **SETTINGS, **{"data.corpora": corpora})
    train(config, tmp_path / "run")
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["hyper_parameters"]["data"]["corpora"]
    assert [c["path"] for c in saved] == [str(toy_corpus_dir.resolve())] * 2
