"""Local corpus files (mt.data.readers): lines and aligned pairs, the same whatever the block size read."""

from __future__ import annotations

import gzip
import json

import pytest

import mt.data.readers as readers
from mt.config import DataConfig, from_dict
from mt.data.readers import local_split, read_lines
from mt.errors import DataError

CONTENT = "eins\r\nzwei\n\nüber straße\r\n\r\n" + "x" * 20 + "\nlast line without newline"
LINES = ["eins", "zwei", "", "über straße", "", "x" * 20, "last line without newline"]
BLOCK_SIZES = [1, 3, 7, 1 << 20]  # bytes decoded at once: splitting lines, CRLF and UTF-8 characters


def data_config(path, **values) -> DataConfig:
    return from_dict(DataConfig, {"name": "t", "path": str(path), **values})


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_lines_of_plain_and_gzip_files_with_any_block_size(tmp_path, monkeypatch, block_bytes):
    (tmp_path / "a.txt").write_text(CONTENT, encoding="utf-8")
    with gzip.open(tmp_path / "a.txt.gz", "wb") as handle:
        handle.write(CONTENT.encode())
    monkeypatch.setattr(readers, "READ_BYTES", block_bytes)
    for path in (tmp_path / "a.txt", tmp_path / "a.txt.gz"):
        assert read_lines(path) == LINES
        chunks = list(readers.line_chunks(path))
        assert all(chunks) and [line for chunk in chunks for line in chunk] == LINES


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_invalid_utf8_names_file_line_and_byte_with_any_block_size(tmp_path, monkeypatch, block_bytes):
    (tmp_path / "bad.de").write_bytes("gut\nüber\r\n".encode() + b"schlecht \xff\n")
    monkeypatch.setattr(readers, "READ_BYTES", block_bytes)
    with pytest.raises(DataError) as error:
        read_lines(tmp_path / "bad.de")
    assert str(error.value) == f"{tmp_path / 'bad.de'}:3: invalid UTF-8 (invalid start byte at byte 20)"


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(DataError, match=r"nope.txt: no such file"):
        read_lines(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"data.path=.*absent: no such directory"):
        local_split(data_config(tmp_path / "absent"), "train")


@pytest.mark.parametrize("block_bytes", [2, 1 << 20])
def test_pairs_of_every_format_agree_in_chunks(tmp_path, monkeypatch, block_bytes):
    pairs = [("ein Haus", "a house"), ("", "empty source"), ("über", "above")]
    (tmp_path / "train.de").write_text("".join(f"{s}\n" for s, _ in pairs))
    (tmp_path / "train.en").write_text("".join(f"{t}\n" for _, t in pairs))
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    records = [{"translation": {"de": s, "en": t}} for s, t in pairs[:2]] + [{"de": pairs[2][0], "en": pairs[2][1]}]
    (tmp_path / "train.jsonl").write_text("\n\n".join(json.dumps(r) for r in records) + "\n")  # blank lines skipped
    monkeypatch.setattr(readers, "READ_BYTES", block_bytes)
    for fmt in ("text", "tsv", "jsonl"):
        files = local_split(data_config(tmp_path, format=fmt), "train")
        src, tgt = [], []
        for src_chunk, tgt_chunk in files.pair_chunks():
            assert len(src_chunk) == len(tgt_chunk) > 0
            src += src_chunk
            tgt += tgt_chunk
        assert list(zip(src, tgt)) == pairs, fmt


def test_misaligned_text_files_are_counted_to_the_end(tmp_path, monkeypatch):
    (tmp_path / "train.de").write_text("a\nb\nc\nd\n")
    (tmp_path / "train.en").write_text("a\n")
    monkeypatch.setattr(readers, "READ_BYTES", 2)
    with pytest.raises(DataError, match=r"train.de has 4 lines but .*train.en has 1"):
        list(local_split(data_config(tmp_path), "train").pair_chunks())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"train.jsonl:1: invalid JSON"),
        ("[1, 2]", r"train.jsonl:1: expected a JSON object, found list"),
        ('{"translation": {"de": "x"}}', r"train.jsonl:1: no language key 'en' \(found \['de'\]\)"),
        ('{"translation": "x"}', r"train.jsonl:1: no language key 'de' \(found str\)"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    (tmp_path / "train.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        list(local_split(data_config(tmp_path, format="jsonl"), "train").pair_chunks())


def test_tsv_line_without_two_columns_is_named(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tb\nonly one\n")
    with pytest.raises(DataError, match=r"train.tsv:2: expected 2 tab-separated columns, found 1"):
        list(local_split(data_config(tmp_path, format="tsv"), "train").pair_chunks())


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_a_leading_byte_order_mark_is_dropped(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(readers, "READ_BYTES", block_bytes)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + CONTENT.encode())
    assert read_lines(tmp_path / "bom.txt") == LINES
    (tmp_path / "only.txt").write_bytes(b"\xef\xbb\xbf")
    assert read_lines(tmp_path / "only.txt") == []
    (tmp_path / "bad.txt").write_bytes(b"\xef\xbb\xbfok\n\xff\n")  # byte offsets still count the mark
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8 \(invalid start byte at byte 6\)"):
        read_lines(tmp_path / "bad.txt")


def test_truncated_corrupt_or_misnamed_gzip_files_are_named(tmp_path):
    whole = gzip.compress(CONTENT.encode() * 50)
    (tmp_path / "truncated.de.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "plain.de.gz").write_text(CONTENT)
    (tmp_path / "corrupt.de.gz").write_bytes(whole[:20] + bytes(40) + whole[60:])
    for name in ("truncated.de.gz", "plain.de.gz", "corrupt.de.gz"):
        with pytest.raises(DataError, match=rf"{name}: not a readable gzip file \("):
            read_lines(tmp_path / name)
