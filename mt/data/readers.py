"""Reading local corpus files, streamed: the lines of a text file, and the aligned pairs of a split.

A split is aligned text files ``{split}.{lang}`` (optionally ``.gz``), or one ``{split}.tsv``
(source TAB target) or ``{split}.jsonl``, whose lines are ``{"translation": {"de": ..., "en": ...}}``
(the hub's shape) or ``{"de": ..., "en": ...}``. Files are decoded in blocks of ``READ_BYTES``, so
that ``mt.data.preprocess`` streams corpora of any size; ``mt.data.corpus`` reads small splits into lists with
the same functions. Every error is a ``DataError`` naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mt.config import DataConfig
from mt.errors import DataError

READ_BYTES = 16 << 20  # bytes of text decoded at once
BOM = "\ufeff".encode()  # a UTF-8 byte order mark, dropped at the start of a file


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (``.gz`` transparently), without line endings (``\\n``, ``\\r\\n``)."""
    return [line for chunk in line_chunks(path) for line in chunk]


def line_chunks(path: str | Path) -> Iterator[list[str]]:
    """The lines of ``read_lines(path)`` in non-empty chunks, streamed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines_before = bytes_before = 0
    pending = b""
    with _open_binary(path) as handle:
        while True:
            block = _read_block(handle, path)
            data = pending + block if pending else block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no complete line yet
                    pending = data
                    continue
                complete, pending = data[:cut], data[cut:]
            elif data:  # a last line without a newline
                complete, pending = data, b""
            else:
                return
            if not bytes_before and complete.startswith(BOM):  # the file's first bytes: as some editors write
                complete, bytes_before = complete[len(BOM) :], len(BOM)
                if not complete:
                    continue
            try:
                text = complete.decode("utf-8")
            except UnicodeDecodeError as error:
                line = lines_before + complete[: error.start].count(b"\n") + 1
                raise DataError(
                    f"{path}:{line}: invalid UTF-8 ({error.reason} at byte {bytes_before + error.start})"
                ) from None
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
            if "\r" in text:
                lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            lines_before += len(lines)
            bytes_before += len(complete)
            yield lines


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_block(handle: BinaryIO, path: Path) -> bytes:
    try:
        return handle.read(READ_BYTES)
    except (EOFError, OSError, zlib.error) as error:  # a truncated, corrupt or misnamed .gz file
        raise DataError(f"{path}: not a readable gzip file ({error})") from None


@dataclass(frozen=True)
class LocalSplit:
    """The files of one local split, and the languages to read from them."""

    format: str  # text | tsv | jsonl
    src_path: str
    tgt_path: str  # "" unless format == "text"
    src_lang: str
    tgt_lang: str

    @property
    def origin(self) -> str:
        """The files, for messages."""
        return f"{self.src_path} + {self.tgt_path}" if self.format == "text" else self.src_path

    def pair_chunks(self) -> Iterator[tuple[list[str], list[str]]]:
        """The (source, target) sentences in aligned chunks, streamed."""
        if self.format == "text":
            return _text_pairs(Path(self.src_path), Path(self.tgt_path))
        if self.format == "tsv":
            return _tsv_pairs(Path(self.src_path))
        return _jsonl_pairs(Path(self.src_path), self.src_lang, self.tgt_lang)


def is_folder_name(hub_name: str) -> bool:
    """Whether a ``hub_name`` is written as a folder (``/``, ``./``, ``../``, ``~``), which is never a hub id."""
    return hub_name.startswith(("/", "./", "../", "~"))


def local_split(cfg: DataConfig, split: str) -> LocalSplit:
    """The files of ``split`` (train, valid or test; named by ``cfg.splits``) under ``cfg.path``."""
    directory = Path(cfg.path).expanduser()
    if not directory.is_dir():
        raise DataError(f"data.path={directory}: no such directory")
    split_stem = getattr(cfg.splits, split)
    if cfg.format == "text":
        src_path = _find_file(directory, f"{split_stem}.{cfg.src_lang}")
        tgt_path = _find_file(directory, f"{split_stem}.{cfg.tgt_lang}")
        return LocalSplit("text", str(src_path), str(tgt_path), cfg.src_lang, cfg.tgt_lang)
    path = _find_file(directory, f"{split_stem}.{cfg.format}")
    return LocalSplit(cfg.format, str(path), "", cfg.src_lang, cfg.tgt_lang)


def _find_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory / stem}[.gz]: no such file")


def _text_pairs(src_path: Path, tgt_path: Path) -> Iterator[tuple[list[str], list[str]]]:
    """Aligned chunks of two line-aligned files; ``DataError`` with both line counts if they differ."""
    streams = (line_chunks(src_path), line_chunks(tgt_path))
    buffers: list[list[str]] = [[], []]
    counts = [0, 0]
    while True:
        for side in (0, 1):
            if not buffers[side]:
                chunk = next(streams[side], None)
                if chunk is not None:
                    buffers[side] = chunk
                    counts[side] += len(chunk)
        if not (buffers[0] and buffers[1]):
            break
        n = min(len(buffers[0]), len(buffers[1]))
        yield buffers[0][:n], buffers[1][:n]
        buffers = [buffers[0][n:], buffers[1][n:]]
    for side in (0, 1):  # one side has ended: count what is left of the other
        counts[side] += sum(len(chunk) for chunk in streams[side])
    if counts[0] != counts[1]:
        raise DataError(f"misaligned corpus: {src_path} has {counts[0]} lines but {tgt_path} has {counts[1]}")


def _tsv_pairs(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    number = 0
    for lines in line_chunks(path):
        src, tgt = [], []
        for line in lines:
            number += 1
            columns = line.split("\t")
            if len(columns) != 2:
                raise DataError(f"{path}:{number}: expected 2 tab-separated columns, found {len(columns)}")
            src.append(columns[0])
            tgt.append(columns[1])
        yield src, tgt


def _jsonl_pairs(path: Path, src_lang: str, tgt_lang: str) -> Iterator[tuple[list[str], list[str]]]:
    """Blank lines are skipped."""
    number = 0
    for lines in line_chunks(path):
        src, tgt = [], []
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg})") from None
            src.append(_pick(record, src_lang, f"{path}:{number}"))
            tgt.append(_pick(record, tgt_lang, f"{path}:{number}"))
        if src:
            yield src, tgt


def _pick(record: object, lang: str, origin: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected a JSON object, found {type(record).__name__}")
    fields = record.get("translation", record)
    if not isinstance(fields, dict) or lang not in fields:
        keys = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        raise DataError(f"{origin}: no language key {lang!r} (found {keys})")
    value = fields[lang]
    return "" if value is None else str(value)
