"""The encoding path (mt.data.preprocess): the plain in-memory encoder's results, cached, streamed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import mt.data.preprocess as preprocess
import mt.data.readers as readers
from mt.config import DataConfig, from_dict
from mt.data.batching import PairDataset
from mt.data.corpus import load_split
from mt.data.preprocess import prepare_split_arrow, raw_dataset, sample_sentences
from mt.data.readers import read_lines
from mt.data.sampling import Reservoir, reservoir_sample
from mt.data.tokenizer import train_tokenizer
from mt.errors import DataError
from tests.conftest import toy_pairs, write_text_corpus
from tests.helpers import load_script
from tests.reference_encoder import prepare_split

ARRAYS = ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "index")


def noisy_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Toy pairs with what cleaning drops: empty sides, long sentences, length-ratio outliers."""
    rng = random.Random(seed)
    pairs = toy_pairs(count, seed=seed)
    for i in rng.sample(range(count), count // 10):
        kind = rng.randrange(4)
        src, tgt = pairs[i]
        if kind == 0:
            pairs[i] = ("", tgt)
        elif kind == 1:
            pairs[i] = (src, "")
        elif kind == 2:
            pairs[i] = (" ".join([src] * 8), " ".join([tgt] * 8))
        else:
            pairs[i] = (src, " ".join([tgt] * 6))
    return pairs


def data_config(path, **values) -> DataConfig:
    values = {"name": "t", "path": str(path), "splits": {"valid": "valid"}, "max_len": 40, **values}
    return from_dict(DataConfig, values)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_text_corpus(
        tmp_path_factory.mktemp("corpus"),
        {"train": noisy_pairs(300, seed=1), "valid": toy_pairs(40, seed=2), "test": toy_pairs(20, seed=3)},
    )


@pytest.fixture(scope="module")
def tokenizer(corpus_dir):
    text = load_split(data_config(corpus_dir), "train")
    return train_tokenizer(text.src, text.tgt, vocab_size=64)


def assert_same_corpus(actual, expected) -> None:
    for name in ARRAYS:
        assert np.array_equal(getattr(actual, name), getattr(expected, name)), name


def test_same_ids_offsets_and_index_as_prepare_split(corpus_dir, tokenizer, tmp_path):
    cfg = data_config(corpus_dir)
    for split in ("train", "valid"):
        expected = prepare_split(cfg, split, tokenizer)
        corpus = prepare_split_arrow(cfg, split, tokenizer, cache_dir=tmp_path)
        assert_same_corpus(corpus, expected)
        assert all(isinstance(getattr(corpus, name), np.memmap) for name in ARRAYS)
        assert corpus.src_tokens.dtype == np.uint16 and corpus.src_offsets.dtype == np.int64
    train = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path)
    assert 0 < len(train) < 300  # cleaning dropped some pairs
    # The batcher collates memory-mapped uint16 ids exactly like the in-memory int32 ones.
    expected = prepare_split(cfg, "train", tokenizer)
    items = [PairDataset(train)[i] for i in range(8)]
    reference = [PairDataset(expected)[i] for i in range(8)]
    batch, reference_batch = PairDataset.collate(items), PairDataset.collate(reference)
    assert batch.src_ids.equal(reference_batch.src_ids) and batch.tgt_out.equal(reference_batch.tgt_out)


def test_cleaning_limits_that_pairs_sit_on_match_prepare_split(corpus_dir, tokenizer, tmp_path):
    """With min_len, max_len and max_len_ratio set to lengths and a ratio that pairs of the corpus have, the
    Arrow path keeps exactly the pairs the reference's own cleaning keeps (a pair on a limit is kept). The
    default limits are far from every pair, so only limits like these tell the two cleanings apart."""
    text = load_split(data_config(corpus_dir), "train")
    lengths = [
        (len(s), len(t)) for s, t in zip(tokenizer.encode_src(text.src), tokenizer.encode_tgt(text.tgt)) if s and t
    ]
    shortest = sorted(min(pair) for pair in lengths)
    longest = sorted(max(pair) for pair in lengths)
    ratios = sorted(max(pair) / min(pair) for pair in lengths)
    limits = {"min_len": shortest[len(shortest) // 10], "max_len": longest[len(longest) // 2]}
    limits["max_len_ratio"] = ratios[len(ratios) // 2]
    assert sum(min(pair) == limits["min_len"] for pair in lengths) > 0  # pairs sit on each limit
    assert sum(max(pair) == limits["max_len"] for pair in lengths) > 0
    assert sum(max(pair) / min(pair) == limits["max_len_ratio"] for pair in lengths) > 0
    cfg = data_config(corpus_dir, **limits)
    corpus = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path)
    assert_same_corpus(corpus, prepare_split(cfg, "train", tokenizer))
    assert 0 < len(corpus) < len(lengths) // 2


def test_tsv_and_jsonl_formats_match_prepare_split(tmp_path, tokenizer):
    pairs = noisy_pairs(60, seed=4)
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    (tmp_path / "train.jsonl").write_text(
        "".join(
            json.dumps({"translation": {"de": s, "en": t}}) + "\n" + ("\n" if i % 7 == 0 else "")
            for i, (s, t) in enumerate(pairs)
        )
    )
    for format in ("tsv", "jsonl"):
        cfg = data_config(tmp_path, format=format)
        assert_same_corpus(
            prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path / "cache"),
            prepare_split(cfg, "train", tokenizer),
        )


def test_second_call_reuses_the_cache_without_encoding(corpus_dir, tokenizer, tmp_path, monkeypatch):
    cfg = data_config(corpus_dir)
    first = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path)
    (folder,) = tmp_path.glob("*.arrays")
    mtimes = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert {f"{name}.npy" for name in ARRAYS} <= set(mtimes)
    assert not list(folder.glob("*.arrow"))  # the intermediate Arrow encoding is removed

    def fail(*args, **kwargs):
        raise AssertionError("the cached split was encoded again")

    monkeypatch.setattr(preprocess, "raw_dataset", fail)
    monkeypatch.setattr("datasets.Dataset.map", fail)
    second = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path)
    assert_same_corpus(second, first)
    assert isinstance(second.src_tokens, np.memmap)
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == mtimes
    # Different cleaning is a different cache entry.
    monkeypatch.undo()
    prepare_split_arrow(data_config(corpus_dir, max_len=30), "train", tokenizer, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.arrays"))) == 2


def test_two_processes_give_the_same_result(corpus_dir, tokenizer, tmp_path):
    cfg = data_config(corpus_dir)
    one = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path / "one", num_proc=1)
    two = prepare_split_arrow(cfg, "train", tokenizer, cache_dir=tmp_path / "two", num_proc=2)
    assert_same_corpus(two, one)


def test_misaligned_files_name_both_files_like_load_split(tmp_path):
    (tmp_path / "train.de").write_text("a\nb\nc\n")
    (tmp_path / "train.en").write_text("a\nb\n")
    cfg = data_config(tmp_path)
    with pytest.raises(DataError) as expected:
        load_split(cfg, "train")
    with pytest.raises(DataError, match=r"train.de has 3 lines but .*train.en has 2") as error:
        raw_dataset(cfg, "train", cache_dir=tmp_path / "cache")
    assert str(error.value) == str(expected.value)
    with pytest.raises(DataError, match="misaligned"):
        sample_sentences(cfg, "train", 2, seed=0)
    assert not list((tmp_path / "cache" / "raw").glob("*.arrow"))  # no half-written dataset is left


def test_invalid_utf8_in_a_later_block_names_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "train.de").write_bytes("gut\nüber\r\n".encode() + b"schlecht \xff\n")
    (tmp_path / "train.en").write_text("good\nabove\nbad\n")
    monkeypatch.setattr(readers, "READ_BYTES", 5)
    with pytest.raises(DataError) as error:
        raw_dataset(data_config(tmp_path), "train", cache_dir=tmp_path / "cache")
    assert str(error.value) == f"{tmp_path / 'train.de'}:3: invalid UTF-8 (invalid start byte at byte 20)"


def test_empty_after_cleaning_and_empty_split_are_errors(tmp_path, tokenizer):
    write_text_corpus(tmp_path / "data", {"train": toy_pairs(20)})
    with pytest.raises(DataError, match="no pair is left after cleaning"):
        prepare_split_arrow(
            data_config(tmp_path / "data", min_len=1, max_len=2), "train", tokenizer, cache_dir=tmp_path
        )
    (tmp_path / "data" / "valid.de").write_text("")
    (tmp_path / "data" / "valid.en").write_text("")
    with pytest.raises(DataError, match="the valid split is empty"):
        prepare_split_arrow(data_config(tmp_path / "data"), "valid", tokenizer, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.arrays")) and not list(tmp_path.glob(".*tmp*"))


def test_reservoir_sample_size_determinism_and_sources(corpus_dir, tmp_path):
    cfg = data_config(corpus_dir)
    text = load_split(cfg, "train")
    pairs = set(zip(text.src, text.tgt))
    src, tgt = sample_sentences(cfg, "train", 50, seed=3)
    assert len(src) == len(tgt) == 50 and set(zip(src, tgt)) <= pairs
    assert sample_sentences(cfg, "train", 50, seed=3) == (src, tgt)
    assert sample_sentences(cfg, "train", 50, seed=4) != (src, tgt)
    # From the cached raw Arrow dataset: the same sample.
    assert sample_sentences(cfg, "train", 50, seed=3, cache_dir=tmp_path) == (src, tgt)
    # Asking for more than there is gives everything, in order.
    assert sample_sentences(cfg, "train", 1000, seed=3) == (text.src, text.tgt)


def test_reservoir_is_uniform_and_independent_of_chunking():
    def run(size: int, total: int, seed: int, chunks: list[int]) -> list[int]:
        reservoir = Reservoir(size, seed)
        start = 0
        for chunk in chunks:
            rows = list(range(start, start + chunk))
            reservoir.add(chunk, lambda picked, rows=rows: [rows[i] for i in picked])
            start += chunk
        assert start == total
        return reservoir.items

    assert run(10, 100, 1, [100]) == run(10, 100, 1, [3, 30, 1, 66]) == run(10, 100, 1, [1] * 100)
    assert reservoir_sample(iter(range(100)), 10, 1, chunk=7) == run(10, 100, 1, [100])  # the tokenizer's sample
    assert reservoir_sample(range(5), 10, 1) == [0, 1, 2, 3, 4]  # fewer than asked: all, in order
    counts = np.zeros(100)
    for seed in range(2000):
        sample = run(10, 100, seed, [7, 50, 43])
        assert len(set(sample)) == 10
        counts[sample] += 1
    # Each item is chosen with probability 1/10: 200 of 2000 draws, binomial sd ~13.4.
    assert np.all(np.abs(counts - 200) < 70), counts


def test_hub_format_on_a_local_folder(tmp_path, tokenizer, monkeypatch):
    # mt.data.corpus.load_hub (the reference) caches in the default place: keep that in tmp_path too.
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "default-cache"))
    hub = tmp_path / "hub"
    hub.mkdir()
    pairs = {"train": noisy_pairs(40, seed=5), "validation": toy_pairs(10, seed=6), "test": toy_pairs(5, seed=7)}
    for split, split_pairs in pairs.items():
        (hub / f"{split}.jsonl").write_text(
            "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in split_pairs)
        )
    cfg = from_dict(DataConfig, {"name": "hubtest", "hub_name": str(hub), "max_len": 40})
    cache = tmp_path / "cache"
    raw = raw_dataset(cfg, "valid", cache_dir=cache)
    assert raw.column_names == ["src", "tgt"] and list(zip(raw["src"], raw["tgt"])) == pairs["validation"]
    assert (cache / "hub").is_dir()
    for split in ("train", "valid"):
        assert_same_corpus(
            prepare_split_arrow(cfg, split, tokenizer, cache_dir=cache), prepare_split(cfg, split, tokenizer)
        )
    src, tgt = sample_sentences(cfg, "train", 10, seed=0, cache_dir=cache)
    assert len(src) == 10 and set(zip(src, tgt)) <= set(pairs["train"])


def test_hub_format_with_flat_columns_and_unknown_key(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "train.jsonl").write_text("".join(json.dumps({"de": s, "en": t}) + "\n" for s, t in toy_pairs(3)))
    cfg = from_dict(DataConfig, {"name": "flat", "hub_name": str(hub)})
    raw = raw_dataset(cfg, "train", cache_dir=tmp_path / "cache")
    assert raw["src"] == [s for s, _ in toy_pairs(3)]
    cfg = from_dict(DataConfig, {"name": "flat", "hub_name": str(hub), "src_lang": "cs"})
    with pytest.raises(DataError, match="no language key 'cs'"):
        raw_dataset(cfg, "train", cache_dir=tmp_path / "cache")


def test_synthetic_corpus_generator_writes_aligned_files(tmp_path):
    module = load_script("make_synthetic_corpus")
    module.main(["--pairs", "1234", "--valid-pairs", "50", "--out", str(tmp_path), "--quiet", "--de-vocab", "2000"])
    for split, count in (("train", 1234), ("valid", 50), ("test", 50)):
        for lang in ("de", "en"):
            assert len(read_lines(tmp_path / f"{split}.{lang}.gz")) == count
    text = load_split(data_config(tmp_path), "train")
    words = [len(s.split()) for s in text.src if s]
    assert 15 < np.mean(words) < 35 and max(words) > 60  # WMT-like: mean ~25 words, a long tail
    raw = raw_dataset(data_config(tmp_path), "train", cache_dir=tmp_path / "cache")
    assert len(raw) == 1234 and raw[5] == {"src": text.src[5], "tgt": text.tgt[5]}


def test_unreachable_hub_dataset_says_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)  # read at import: the variable alone is too late
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cfg = from_dict(DataConfig, {"name": "x", "hub_name": "no-such-user/no-such-dataset-mt"})
    with pytest.raises(DataError, match="set data.path"):
        raw_dataset(cfg, "train", cache_dir=tmp_path)


def test_runs_sharing_a_cache_reuse_its_tokenizer_and_encoded_splits(toy_corpus_dir, tmp_path, monkeypatch):
    import mt.data.run_tokenizer
    from mt.training.datamodule import TranslationDataModule
    from tests.conftest import tiny_train_config

    config = tiny_train_config(toy_corpus_dir, **{"data.cache_dir": str(tmp_path / "cache")})
    first = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run1", seed=1)
    first.setup("fit")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(mt.data.run_tokenizer, "train_tokenizer", no_training)
    monkeypatch.setattr(preprocess, "_encode_into", no_training)
    second = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run2", seed=1)
    second.setup("fit")
    assert second.tokenizer.src_model == first.tokenizer.src_model
    assert (tmp_path / "run2/tokenizer/spm.model").is_file()
    assert np.array_equal(second.train_corpus.src_tokens, first.train_corpus.src_tokens)
    # Another seed is another tokenizer.
    with pytest.raises(AssertionError, match="trained again"):
        TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run3", seed=2).prepare_tokenizer()


def toy_corpus_and_tokenizer(tmp_path):
    """A 30-pair local corpus's DataConfig and a tokenizer trained on it."""
    write_text_corpus(tmp_path, {"train": toy_pairs(30)})
    cfg = from_dict(DataConfig, {"name": "toy", "path": str(tmp_path)})
    text = load_split(cfg, "train")
    return cfg, train_tokenizer(text.src, text.tgt, vocab_size=60)


def test_the_cache_key_changes_when_a_data_file_changes(tmp_path):
    from mt.data.corpus import cache_key

    cfg, tokenizer = toy_corpus_and_tokenizer(tmp_path)
    before = cache_key(cfg, "train", tokenizer)
    write_text_corpus(tmp_path, {"train": toy_pairs(31)})
    assert cache_key(cfg, "train", tokenizer) != before


def test_the_cache_key_changes_when_a_file_under_a_split_folder_changes(tmp_path):
    """``data.splits.train=tr/train`` reads DIR/tr/train.*: their changes must change the key too (it once
    listed only DIR's own entries, so the old encoded corpus and tokenizer were reused)."""
    from dataclasses import replace

    from mt.config import SplitNames
    from mt.data.corpus import cache_key

    cfg, tokenizer = toy_corpus_and_tokenizer(tmp_path)
    write_text_corpus(tmp_path / "tr", {"train": toy_pairs(30)})
    cfg = replace(cfg, splits=SplitNames(train="tr/train"))
    before = cache_key(cfg, "train", tokenizer)
    write_text_corpus(tmp_path / "tr", {"train": toy_pairs(20)})
    assert cache_key(cfg, "train", tokenizer) != before


def test_the_training_cache_key_of_a_dataset_folder_follows_its_training_files_only(tmp_path):
    """A dataset folder (hub_name=DIR) was keyed by every file in it: a new test split (or a cache's hidden
    metadata) re-encoded the training data and trained another tokenizer."""
    import json

    from mt.config import DataConfig
    from mt.data.corpus import cache_key

    _, tokenizer = toy_corpus_and_tokenizer(tmp_path / "toy")
    folder = tmp_path / "dataset"
    folder.mkdir()

    def write(split, pairs):
        lines = [json.dumps({"translation": {"de": de, "en": en}}) for de, en in pairs]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")

    write("train", toy_pairs(30))
    write("test", toy_pairs(5, seed=3))
    cfg = DataConfig(name="folder", hub_name=str(folder), src_lang="de", tgt_lang="en")
    before = cache_key(cfg, "train", tokenizer)
    write("test", toy_pairs(6, seed=4))
    (folder / ".cache").mkdir()
    (folder / ".cache/train.jsonl.lock").write_text("")
    assert cache_key(cfg, "train", tokenizer) == before
    write("train", toy_pairs(31))
    assert cache_key(cfg, "train", tokenizer) != before


def test_the_cache_key_ignores_how_pairs_are_batched(tmp_path):
    """Batching fields (max_tokens, pad_to_multiple, loader and preprocessing workers, the cache folder) reuse
    the encoded corpus."""
    from dataclasses import replace

    from mt.data.corpus import cache_key

    cfg, tokenizer = toy_corpus_and_tokenizer(tmp_path)
    before = cache_key(cfg, "train", tokenizer)
    assert cfg.cache_dir is None and cfg.preprocess_workers == 1  # the values replaced below differ from these
    batched_otherwise = replace(
        cfg,
        max_tokens=2048,
        pad_to_multiple=8,
        num_workers=2,
        preprocess_workers=3,
        cache_dir=str(tmp_path / "another-cache"),
    )
    assert cache_key(batched_otherwise, "train", tokenizer) == before
    assert cache_key(replace(cfg, max_len=40), "train", tokenizer) != before  # cleaning does change the pairs
