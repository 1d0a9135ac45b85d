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
        (
            {"data": {**_data(other)}},
            r"other training files than it started with \(the training data: train.de.gz is \d+ bytes, digest "
            r"[0-9a-f]{12} here but was \d+ bytes, digest [0-9a-f]{12}\)",
        ),
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
    """The checkpoint records its training files' names, sizes and digests: the same files moved (another mount) resume,
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
    kept = {name: (moved / name).read_bytes() for name in ("train.de.gz", "train.en.gz")}
    pairs = toy_pairs(400, seed=1)
    pairs[0] = (pairs[0][0] + " und", pairs[0][1])  # one word more: another size
    write_text_corpus(moved, {"train": pairs})
    config = tiny_train_config(moved, **{**SETTINGS, **resumed, "trainer.max_steps": 10})
    with pytest.raises(RunError, match=r"\(the training data: train.de.gz is \d+ bytes, .* here but was \d+ bytes"):
        train(config, tmp_path / "run")
    for name, content in kept.items():  # the same bytes again (gzip writes a time into its header)
        (moved / name).write_bytes(content)
    config = tiny_train_config(moved, **{**SETTINGS, **resumed, "trainer.max_steps": 10, "data.max_len": 32})
    with pytest.raises(RunError, match=r"data.max_len is 32 here but 64 in the checkpoint"):
        train(config, tmp_path / "run")


def test_training_files_shuffled_in_place_to_the_same_size_are_refused(tmp_path):
    """Names and sizes alone let a shuffled corpus (same bytes, other order, so other pairs at the saved position)
    resume; the content digest tells them apart."""
    pairs = toy_pairs(120, seed=4)
    data = write_text_corpus(tmp_path / "data", {"train": pairs, "valid": pairs[:8]}, gz=False)
    train(tiny_train_config(data, **SETTINGS), tmp_path / "run")
    sizes = {p.name: p.stat().st_size for p in data.iterdir()}
    write_text_corpus(data, {"train": pairs[60:] + pairs[:60]}, gz=False)
    assert {p.name: p.stat().st_size for p in data.iterdir()} == sizes  # what the check compared before
    config = tiny_train_config(data, **{**SETTINGS, "resume": "auto", "trainer.max_steps": 8})
    size = sizes["train.de"]
    digest = rf"{size} bytes, digest [0-9a-f]{{12}}"
    with pytest.raises(RunError, match=rf"\(the training data: train.de is {digest} here but was {digest}\)"):
        train(config, tmp_path / "run")
    write_text_corpus(data, {"train": pairs}, gz=False)  # put back: the same bytes resume
    train(config, tmp_path / "run")
    assert read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["global_step"] == 8


def test_checkpoints_record_the_training_files_as_the_run_started_with_them(tmp_path):
    """A file changed during the run (the same size) is not what the run encoded: the checkpoints go on recording
    the files as they were at the start, so a resume on the changed file is refused."""
    from mt.training.datamodule import TranslationDataModule

    pairs = toy_pairs(40, seed=4)
    data = write_text_corpus(tmp_path / "data", {"train": pairs, "valid": pairs[:4]}, gz=False)
    config = tiny_train_config(data)
    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run", seed=1)
    at_start = datamodule.state_dict()["train_files"]
    write_text_corpus(data, {"train": pairs[20:] + pairs[:20]}, gz=False)  # shuffled in place, same sizes
    assert datamodule.state_dict()["train_files"] == at_start
    again = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run", seed=1)
    assert [[entry[:2] for entry in corpus] for corpus in again.state_dict()["train_files"]] == [
        [entry[:2] for entry in corpus] for corpus in at_start
    ]
    assert again.state_dict()["train_files"] != at_start  # the digests tell the new order apart


def test_a_checkpoint_recording_names_and_sizes_only_still_resumes(toy_corpus_dir, tmp_path):
    """Checkpoints written before the digests record ``[name, size]``: compared on those, they resume."""
    import torch

    train(tiny_train_config(toy_corpus_dir, **SETTINGS), tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    recorded = state["TranslationDataModule"]["train_files"]
    state["TranslationDataModule"]["train_files"] = [[entry[:2] for entry in corpus] for corpus in recorded]
    torch.save(state, last)
    train(tiny_train_config(toy_corpus_dir, **{**SETTINGS, "resume": "auto", "trainer.max_steps": 8}), tmp_path / "run")
    assert read_checkpoint(last)["global_step"] == 8


def test_a_dataset_folder_is_recorded_absolute_and_a_change_to_it_refuses_a_resume(tmp_path, monkeypatch):
    """``data.hub_name=FOLDER`` (a dataset in the hub's layout, on disk): recorded absolute as ``path`` is (a
    relative name was looked up on the Hub from elsewhere), and its files digested, so a resume on its shuffled
    rows (the same sizes) is refused as for text files."""
    import json

    folder = tmp_path / "hub"
    folder.mkdir()
    pairs = toy_pairs(120, seed=4)

    def write(split, rows):
        lines = "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in rows)
        (folder / f"{split}.jsonl").write_text(lines)

    write("train", pairs)
    write("validation", pairs[:8])
    write("test", pairs[8:16])
    monkeypatch.chdir(tmp_path)
    data = {"name": "hubtoy", "hub_name": "hub", "max_tokens": 512, "max_len": 64}
    train(tiny_train_config(tmp_path, **SETTINGS, data=data), tmp_path / "run")
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert read_checkpoint(last)["hyper_parameters"]["data"]["hub_name"] == str(folder)
    size = (folder / "train.jsonl").stat().st_size
    write("train", pairs[60:] + pairs[:60])
    assert (folder / "train.jsonl").stat().st_size == size
    config = tiny_train_config(tmp_path, **{**SETTINGS, "resume": "auto", "trainer.max_steps": 8}, data=data)
    with pytest.raises(RunError, match=r"\(the training data: train.jsonl is \d+ bytes, digest "):
        train(config, tmp_path / "run")
    # The training split as it was: other splits' files and hidden ones (a cache's metadata) may change.
    write("train", pairs)
    write("test", pairs[16:24])
    (folder / ".cache").mkdir()
    (folder / ".cache/train.jsonl.metadata").write_text("stamp")
    train(config, tmp_path / "run")
    assert read_checkpoint(last)["global_step"] == 8


def _data(path: Path) -> dict:
    return {"name": "toy", "path": str(path), "splits": {"valid": "valid"}, "max_tokens": 512, "max_len": 64}


def test_every_corpus_path_is_recorded_absolute(toy_corpus_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(toy_corpus_dir.parent)
    corpora = [{"path": toy_corpus_dir.name}, {"path": toy_corpus_dir.name, "tag": "<BT>", "valid": False}]
    config = tiny_train_config(toy_corpus_dir, **SETTINGS, **{"data.corpora": corpora})
    train(config, tmp_path / "run")
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.ckpt")["hyper_parameters"]["data"]["corpora"]
    assert [c["path"] for c in saved] == [str(toy_corpus_dir.resolve())] * 2


def test_resuming_an_earlier_checkpoint_of_the_run_in_its_own_directory_is_refused(toy_corpus_dir, tmp_path):
    """A rewind in place would overwrite last.ckpt and write step checkpoints beside the old ones of the same steps
    (Lightning's ``-v1`` names), which resume=auto, mt.average and mt.report take for the run's."""
    run = tmp_path / "run"
    settings = {**SETTINGS, "trainer.max_steps": 8, "trainer.val_check_interval": 4, "trainer.keep_checkpoints": 2}
    train(tiny_train_config(toy_corpus_dir, **settings), run)
    earlier = run / "checkpoints" / "step0000004.ckpt"
    assert read_checkpoint(earlier)["global_step"] == 4 and read_checkpoint(run / "checkpoints/last.ckpt")
    before = tree_bytes(run)
    config = tiny_train_config(toy_corpus_dir, **{**settings, "trainer.max_steps": 12, "resume": str(earlier)})
    with pytest.raises(RunError, match=r"\(update 4\) would rewind the run in .*, whose last.ckpt is of update 8"):
        train(config, run)
    assert tree_bytes(run) == before
    # its own last checkpoint, by path, is no rewind
    config = tiny_train_config(
        toy_corpus_dir, **{**settings, "trainer.max_steps": 12, "resume": str(run / "checkpoints/last.ckpt")}
    )
    train(config, run)
    assert read_checkpoint(run / "checkpoints/last.ckpt")["global_step"] == 12
    # nor is an earlier one beside a damaged last.ckpt (which holds no later update to lose)
    last = run / "checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    config = tiny_train_config(
        toy_corpus_dir, **{**settings, "trainer.max_steps": 16, "resume": str(run / "checkpoints/step0000008.ckpt")}
    )
    train(config, run)
    assert read_checkpoint(last)["global_step"] == 16
