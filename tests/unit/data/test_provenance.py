"""How a refusal over other training files says what differs: one file, or a few names, never the whole record
(a dataset folder may hold thousands of shards); and the memo that hashes an unchanged file once, not at every start
of every rank."""

import hashlib
import json
import os
import time

import mt.data.provenance as provenance
from mt.config import DataConfig, from_dict
from mt.data.provenance import files_difference, same_files, train_files


def shards(count: int, *, size: int = 100) -> list[list]:
    return [[f"train/data-{i:05d}.arrow", size, f"{i:032x}"] for i in range(count)]


def test_a_folder_of_many_shards_is_summed_up_in_a_few_names():
    recorded = [shards(2000)]
    found = [shards(2000)[:1999] + [["train/data-99999.arrow", 100, "f" * 32]]]
    assert not same_files(recorded, found)
    message = files_difference(recorded, found)
    assert message == (
        "the training data: 2000 files here but 2000 recorded "
        "(missing train/data-01999.arrow; new train/data-99999.arrow)"
    )
    fewer = [shards(2000)[5:]]
    message = files_difference(recorded, fewer)
    assert message == (
        "the training data: 1995 files here but 2000 recorded (missing train/data-00000.arrow, "
        "train/data-00001.arrow, train/data-00002.arrow and 2 more)"
    )


def test_a_changed_file_is_named_with_its_size_and_digest_and_the_corpus_counted():
    recorded = [[["train.de", 10, "a" * 32], ["train.en", 12, "b" * 32]], ["wmt14", "de-en"]]
    changed = [[["train.de", 10, "a" * 32], ["train.en", 12, "c" * 32]], ["wmt14", "de-en"]]
    assert files_difference(recorded, changed) == (
        f"corpus 0: train.en is 12 bytes, digest {'c' * 12} here but was 12 bytes, digest {'b' * 12}"
    )
    older = [[["train.de", 10], ["train.en", 11]], ["wmt14", "de-en"]]  # a checkpoint from before the digests
    assert (
        files_difference(older, changed) == "corpus 0: train.en is 12 bytes, digest cccccccccccc here but was 11 bytes"
    )
    other_hub = [recorded[0], ["wmt14", "fr-en"]]
    assert files_difference(recorded, other_hub) == "corpus 1: ['wmt14', 'fr-en'] here but ['wmt14', 'de-en'] recorded"
    assert files_difference(recorded, recorded[:1]) == "1 corpora here but 2 recorded"


CLOCK_REALTIME_COARSE = 5  # Linux's clock of file times (Python names no constant for it)


def corpus(tmp_path) -> DataConfig:
    tmp_path.mkdir()
    (tmp_path / "train.de").write_text("eins\nzwei\n")
    (tmp_path / "train.en").write_text("one\ntwo\n")
    return from_dict(DataConfig, {"name": "t", "path": str(tmp_path), "src_lang": "de", "tgt_lang": "en"})


def counted_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = provenance._digest
    monkeypatch.setattr(provenance, "_digest", lambda path: reads.append(path.name) or real(path))
    return reads


def blake2b(path) -> str:  # the digest, computed here independently
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def next_file_clock_tick(path) -> None:
    """Wait (no sleep) until the clock file times are taken from has moved past ``path``'s change time, so that a
    rewrite now gets another one."""
    changed = os.stat(path).st_ctime_ns
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= changed:
        pass


def test_an_unchanged_file_is_hashed_once_and_a_rewrite_restoring_its_time_is_hashed_again(tmp_path, monkeypatch):
    data = corpus(tmp_path / "data")
    monkeypatch.setattr(provenance, "SETTLE_NS", -(10**9))  # the files count as settled at once
    reads = counted_reads(monkeypatch)
    first = train_files(data, memo=tmp_path / "cache")
    assert first == [
        [["train.de", 10, blake2b(tmp_path / "data/train.de")], ["train.en", 8, blake2b(tmp_path / "data/train.en")]]
    ]
    assert sorted(reads) == ["train.de", "train.en"]
    reads.clear()
    assert train_files(data, memo=tmp_path / "cache") == first  # a later start, or another rank
    assert reads == []
    # Shuffled in place to the same size, its modification time set back as rsync -t or cp -p would
    target = tmp_path / "data/train.en"
    times = os.stat(target)
    next_file_clock_tick(target)
    target.write_text("two\none\n")
    os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert os.stat(target).st_mtime_ns == times.st_mtime_ns and os.stat(target).st_size == times.st_size
    again = train_files(data, memo=tmp_path / "cache")
    assert reads == ["train.en"]
    assert again[0][1] == ["train.en", 8, blake2b(target)] != first[0][1]


def test_a_file_changed_just_now_is_not_memoised_and_a_damaged_memo_is_not_trusted(tmp_path, monkeypatch):
    data = corpus(tmp_path / "data")
    reads = counted_reads(monkeypatch)
    monkeypatch.setattr(provenance, "SETTLE_NS", 10**15)  # every file changed "just now" (within 11 days)
    first = train_files(data, memo=tmp_path / "cache")
    train_files(data, memo=tmp_path / "cache")  # a rewrite in the same clock tick could share its times
    assert sorted(reads) == ["train.de", "train.de", "train.en", "train.en"]
    assert not (tmp_path / "cache/digests.json").exists()
    (tmp_path / "cache").mkdir(exist_ok=True)
    de, en = (str((tmp_path / "data" / name).resolve()) for name in ("train.de", "train.en"))
    identity = provenance._identity(tmp_path / "data/train.de")
    damaged = {de: [identity, 7], en: [[1, 2, 3], "0" * 32]}  # a digest that is no digest; a short identity
    (tmp_path / "cache/digests.json").write_text(json.dumps(damaged))
    monkeypatch.setattr(provenance, "SETTLE_NS", -(10**9))
    reads.clear()
    assert train_files(data, memo=tmp_path / "cache") == first
    assert sorted(reads) == ["train.de", "train.en"]


def test_a_memo_that_cannot_be_written_costs_only_the_hashing(tmp_path, monkeypatch):
    """A read-only cache, or another user's, was a refusal of every start (its lock could not be opened)."""
    data = corpus(tmp_path / "data")
    monkeypatch.setattr(provenance, "SETTLE_NS", -(10**9))
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    expected = [
        [
            [name, (tmp_path / "data" / name).stat().st_size, blake2b(tmp_path / "data" / name)]
            for name in ("train.de", "train.en")
        ]
    ]
    assert train_files(data, memo=tmp_path / "cache") == expected
