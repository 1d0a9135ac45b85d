"""Corpus reading (text, TSV, JSONL, hub format), cleaning, encoding and caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mt.config import DataConfig, from_dict
from mt.data.corpus import cleaning_mask, load_split
from mt.errors import DataError
from tests.conftest import toy_pairs, write_text_corpus
from tests.reference_encoder import from_lists, select


def data_config(path, **values) -> DataConfig:
    return from_dict(DataConfig, {"name": "t", "path": str(path), "splits": {"valid": "valid"}, **values})


def test_text_pairs_plain_and_gzip(tmp_path):
    pairs = toy_pairs(5)
    write_text_corpus(tmp_path / "gz", {"train": pairs})
    write_text_corpus(tmp_path / "plain", {"train": pairs}, gz=False)
    for directory in ("gz", "plain"):
        text = load_split(data_config(tmp_path / directory), "train")
        assert list(zip(text.src, text.tgt)) == pairs


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    (tmp_path / "train.de").write_text("a\nb\nc\n")
    (tmp_path / "train.en").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"train.de has 3 lines but .*train.en has 2"):
        load_split(data_config(tmp_path), "train")


def test_missing_split_file_is_named(tmp_path):
    write_text_corpus(tmp_path, {"train": toy_pairs(3)})
    with pytest.raises(DataError, match=r"valid.de\[.gz\]: no such file"):
        load_split(data_config(tmp_path), "valid")


def test_tsv_and_jsonl_in_both_record_shapes(tmp_path):
    pairs = toy_pairs(4)
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    tsv = load_split(data_config(tmp_path, format="tsv"), "train")
    assert list(zip(tsv.src, tsv.tgt)) == pairs
    nested = "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in pairs)
    flat = "".join(json.dumps({"de": s, "en": t, "id": 1}) + "\n" for s, t in pairs)
    for content in (nested, flat):
        (tmp_path / "train.jsonl").write_text(content)
        text = load_split(data_config(tmp_path, format="jsonl"), "train")
        assert list(zip(text.src, text.tgt)) == pairs


def test_unknown_language_key_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"translation": {"de": "a", "en": "b"}}) + "\n")
    with pytest.raises(DataError, match=r"no language key 'fr' \(found \['de', 'en'\]\)"):
        load_split(data_config(tmp_path, format="jsonl", tgt_lang="fr"), "train")


def test_hub_loader_on_a_local_dataset_in_the_hubs_format(tmp_path):
    """The hub path, through ``datasets.load_dataset``, on files laid out like a hub dataset."""
    pairs = {"train": toy_pairs(6, seed=1), "validation": toy_pairs(3, seed=2), "test": toy_pairs(2, seed=3)}
    for split, split_pairs in pairs.items():
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in split_pairs)
        )
    cfg = from_dict(DataConfig, {"name": "hubtest", "hub_name": str(tmp_path)})
    for split, hub_split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        text = load_split(cfg, split)
        assert list(zip(text.src, text.tgt)) == pairs[hub_split]


def test_hub_loader_with_flat_columns_and_unknown_key(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"de": s, "en": t}) + "\n" for s, t in toy_pairs(3)))
    cfg = from_dict(DataConfig, {"name": "flat", "hub_name": str(tmp_path)})
    assert load_split(cfg, "train").src == [s for s, _ in toy_pairs(3)]
    cfg = from_dict(DataConfig, {"name": "flat", "hub_name": str(tmp_path), "src_lang": "cs"})
    with pytest.raises(DataError, match="no language key 'cs'"):
        load_split(cfg, "train")


def test_unreachable_hub_dataset_says_to_use_local_files(monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)  # read at import: the variable alone is too late
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = from_dict(DataConfig, {"name": "x", "hub_name": "no-such-user/no-such-dataset-mt"})
    with pytest.raises(DataError, match="set data.path"):
        load_split(cfg, "train")


def test_a_dataset_folder_that_is_gone_is_named_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """A recorded dataset folder no longer there: ``datasets`` took its path for a Hub id (retries, then a cached
    copy of another dataset of that name); it is refused in one line naming the folder."""
    import datasets

    def no_lookup(*args, **kwargs):
        raise AssertionError("looked up")

    monkeypatch.setattr(datasets, "load_dataset", no_lookup)
    cfg = from_dict(DataConfig, {"name": "x", "hub_name": str(tmp_path / "gone")})
    with pytest.raises(DataError, match=rf"^data.hub_name={tmp_path / 'gone'}: no such folder"):
        load_split(cfg, "test")


def test_cleaning_counts_each_reason():
    """Each pair's fate, worked out by hand from docs/data.md with min_len 2, max_len 100, max_len_ratio 3:
    a pair exactly at a limit is kept and one subword past it is dropped, and a pair is counted under its
    first reason only (empty, too short, too long, ratio)."""
    rows = [  # (source subwords, target subwords, what cleaning does)
        (0, 4, "empty"),
        (5, 0, "empty"),
        (1, 2, "too short"),  # min_len - 1 on one side (its ratio, 2, is fine)
        (2, 1, "too short"),
        (1, 5, "too short"),  # also over the ratio: counted once, under its first reason
        (2, 2, "kept"),  # exactly min_len
        (3, 3, "kept"),
        (10, 11, "kept"),
        (100, 100, "kept"),  # exactly max_len on both sides
        (101, 100, "too long"),  # max_len + 1
        (100, 101, "too long"),
        (200, 5, "too long"),  # also over the ratio
        (3, 9, "kept"),  # a ratio of exactly 3
        (9, 3, "kept"),
        (34, 100, "kept"),  # 100 / 34 = 2.94
        (3, 10, "ratio"),  # 3.33
        (4, 20, "ratio"),
        (33, 100, "ratio"),  # 3.03
    ]
    src, tgt, fates = zip(*rows)
    keep, report = cleaning_mask(np.array(src), np.array(tgt), min_len=2, max_len=100, max_ratio=3.0)
    assert keep.tolist() == [fate == "kept" for fate in fates]
    counts = (report.empty, report.too_short, report.too_long, report.bad_ratio, report.kept)
    assert counts == (2, 3, 3, 3, 7)
    assert report.total == len(rows)


def test_encoded_corpus_select_keeps_original_line_numbers():
    corpus = from_lists([[5], [6, 7], [8]], [[9], [10], [11, 12]])
    chosen = select(corpus, np.array([0, 2]))
    assert chosen.index.tolist() == [0, 2]
    assert chosen.tgt(1).tolist() == [11, 12] and chosen.src_lengths.tolist() == [1, 1]
