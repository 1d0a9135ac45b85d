"""Parallel corpora: loading splits (local files or the Hugging Face hub), the encoded corpus, cleaning rules
and cache keys.

Local corpora are read by ``mt.data.readers`` (aligned text files, TSV or JSONL, optionally ``.gz``).
Hub corpora are read through ``datasets.load_dataset``, with records of the hub's shape
``{"translation": {"de": ..., "en": ...}}`` or one column per language.

Encoded splits are flat token arrays with offsets (``EncodedCorpus``), written by ``mt.data.preprocess``
under a key of the data and tokenizer (``cache_key``), so later runs and other ranks reuse them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mt.config import DataConfig
from mt.data.readers import is_folder_name, local_split
from mt.data.tokenizer import Tokenizer
from mt.errors import DataError

SPLITS = ("train", "valid", "test")
# Bump when the cached data changes meaning (the raw Arrow tables, the encoded arrays): old caches are then rebuilt.
CACHE_LAYOUT = 2


@dataclass
class ParallelText:
    """Aligned raw sentences of one split."""

    src: list[str]
    tgt: list[str]
    origin: str  # where it came from, for messages

    def __len__(self) -> int:
        return len(self.src)


# ---------------------------------------------------------------------------------------------
# Reading


def load_local(cfg: DataConfig, split: str) -> ParallelText:
    """One split from ``cfg.path`` in ``cfg.format``."""
    files = local_split(cfg, split)
    src: list[str] = []
    tgt: list[str] = []
    for src_chunk, tgt_chunk in files.pair_chunks():
        src += src_chunk
        tgt += tgt_chunk
    return ParallelText(src, tgt, origin=files.origin)


def open_hub_split(cfg: DataConfig, split: str, cache_dir: str | Path | None = None):
    """One split of a Hugging Face dataset (``cfg.hub_name``, a hub id or a local dataset folder),
    checked for the two language keys.

    Returns:
        the ``datasets.Dataset``, a description for messages, and whether its records have the
        hub's ``{"translation": {lang: text}}`` shape (else one column per language).
    """
    import datasets

    split_name = getattr(cfg.hub_splits, split)
    origin = hub_origin(cfg, split)
    if is_folder_name(cfg.hub_name) and not Path(cfg.hub_name).expanduser().is_dir():
        # a folder (as mt.train records one): never looked up on the Hub, nor in its cache of another dataset
        raise DataError(f"data.hub_name={cfg.hub_name}: no such folder (a dataset saved on disk was expected there)")
    try:
        dataset = datasets.load_dataset(
            cfg.hub_name, cfg.hub_config, split=split_name, cache_dir=None if cache_dir is None else str(cache_dir)
        )
    except (ConnectionError, OSError) as error:
        raise DataError(
            f"{origin}: cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]}); "
            f"without network, set data.path (or MT_DATA_DIR) to local files"
        ) from None
    except ValueError as error:  # unknown split
        raise DataError(f"{origin}: {str(error).splitlines()[0]}") from None
    columns = dataset.column_names
    nested = "translation" in columns
    found = (dataset[0]["translation"] if len(dataset) else None) if nested else columns
    for lang in (cfg.src_lang, cfg.tgt_lang):
        if found is not None and lang not in found:
            raise DataError(f"{origin}: no language key {lang!r} (found {sorted(found)})")
    return dataset, origin, nested


def hub_origin(cfg: DataConfig, split: str) -> str:
    """The hub dataset of ``split``, for messages."""
    config = f" ({cfg.hub_config})" if cfg.hub_config else ""
    return f"{cfg.hub_name}{config} split {getattr(cfg.hub_splits, split)!r}"


def load_hub(cfg: DataConfig, split: str) -> ParallelText:
    """One split of a Hugging Face dataset, as lists (for test sets; training splits go through mt.data.preprocess)."""
    dataset, origin, nested = open_hub_split(cfg, split)
    if nested:
        pairs = dataset["translation"]
        return ParallelText([p[cfg.src_lang] or "" for p in pairs], [p[cfg.tgt_lang] or "" for p in pairs], origin)
    return ParallelText([s or "" for s in dataset[cfg.src_lang]], [t or "" for t in dataset[cfg.tgt_lang]], origin)


def load_split(cfg: DataConfig, split: str) -> ParallelText:
    """Raw sentence pairs of ``split`` (train, valid or test), from local files or the hub."""
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {SPLITS}")
    if cfg.path:
        return load_local(cfg, split)
    if cfg.hub_name:
        return load_hub(cfg, split)
    raise DataError(
        f"data {cfg.name!r}: neither data.path nor data.hub_name is set "
        f"(for Multi30k, set MT_DATA_DIR to its directory)"
    )


# ---------------------------------------------------------------------------------------------
# Encoding and cleaning


@dataclass
class EncodedCorpus:
    """Token ids of a split as flat arrays: pair ``i`` is ``src_tokens[src_offsets[i]:src_offsets[i+1]]``.

    ``index`` maps each pair to its line in the raw split (cleaning drops some lines).
    """

    src_tokens: np.ndarray  # (total_src_tokens,) int32
    src_offsets: np.ndarray  # (n + 1,) int64
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    index: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.index)

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def src(self, i: int) -> np.ndarray:
        return self.src_tokens[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]


@dataclass
class CleaningReport:
    total: int
    empty: int
    too_short: int
    too_long: int
    bad_ratio: int

    @property
    def kept(self) -> int:
        return self.total - self.empty - self.too_short - self.too_long - self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept:,} of {self.total:,} pairs; dropped {self.empty:,} empty, "
            f"{self.too_short:,} too short, {self.too_long:,} too long, {self.bad_ratio:,} over the length ratio"
        )


def cleaning_mask(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, *, min_len: int, max_len: int, max_ratio: float
) -> tuple[np.ndarray, CleaningReport]:
    """Which pairs to keep, by subword lengths; each dropped pair is counted under its first reason."""
    src_lengths = np.asarray(src_lengths)
    tgt_lengths = np.asarray(tgt_lengths)
    empty = (src_lengths == 0) | (tgt_lengths == 0)
    short = ~empty & ((src_lengths < min_len) | (tgt_lengths < min_len))
    long = ~empty & ~short & ((src_lengths > max_len) | (tgt_lengths > max_len))
    ratio = np.maximum(src_lengths, tgt_lengths) / np.maximum(np.minimum(src_lengths, tgt_lengths), 1)
    bad_ratio = ~empty & ~short & ~long & (ratio > max_ratio)
    keep = ~(empty | short | long | bad_ratio)
    report = CleaningReport(len(keep), int(empty.sum()), int(short.sum()), int(long.sum()), int(bad_ratio.sum()))
    return keep, report


def data_identity(cfg: DataConfig, split: str) -> dict:
    """What decides the pairs of ``split``: the config fields that choose and clean them (not those
    that batch or cache them) and, for local files, each file's name, size and modification time."""
    batching_only = ("max_tokens", "num_workers", "cache_dir", "preprocess_workers", "pad_to_multiple")
    identity: dict = {k: v for k, v in asdict(cfg).items() if k not in batching_only}
    identity["layout"] = CACHE_LAYOUT
    if cfg.path and Path(cfg.path).expanduser().is_dir():
        directory = Path(cfg.path).expanduser()
        stem = directory / getattr(cfg.splits, split)  # a split name may hold folders: tr/train, or be absolute
        files = (
            sorted(p for p in stem.parent.iterdir() if p.name.startswith(f"{stem.name}."))
            if stem.parent.is_dir()
            else []
        )
        identity["files"] = [[_relative(p, directory), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    elif cfg.hub_name and Path(cfg.hub_name).expanduser().is_dir():  # a hub-format dataset folder on disk
        files = dataset_split_files(cfg, split)  # (another split's files changed: this one's cache still holds)
        identity["files"] = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return identity


def dataset_split_files(cfg: DataConfig, split: str) -> list[Path]:
    """The files of a dataset folder (``cfg.hub_name``) that hold ``split`` (``cfg.hub_splits``' name starts a
    part of their path: ``train.jsonl``, ``train/data-00000-of-00001.arrow``, ``data/train-00000.parquet``), else
    all of them; hidden ones (``.git/``, ``.cache/``) never."""
    folder = Path(cfg.hub_name).expanduser()
    name = getattr(cfg.hub_splits, split)
    parts = {p: p.relative_to(folder).parts for p in folder.rglob("*") if p.is_file()}
    files = sorted(p for p, names in parts.items() if not any(part.startswith(".") for part in names))
    own = [p for p in files if any(part.startswith(name) for part in parts[p])]
    return own or files


def _relative(path: Path, directory: Path) -> str:
    """``path`` below ``directory`` as a relative name (a file directly in it: its name), else in full."""
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


def cache_key(cfg: DataConfig, split: str, tokenizer: Tokenizer, src_prefix: Sequence[int] = ()) -> str:
    """A key that changes whenever the data source (its files included), its cleaning, the tokenizer or the ids
    put before each source change."""
    digest = hashlib.sha256(json.dumps(data_identity(cfg, split), sort_keys=True, default=str).encode())
    digest.update(split.encode())
    if src_prefix:
        digest.update(json.dumps(list(src_prefix)).encode())
    digest.update(tokenizer.src_model)
    digest.update(tokenizer.tgt_model)
    if tokenizer.vocab is not None:  # "codes once": sources' own language codes no longer doubled (2026-12-07)
        digest.update(json.dumps(["codes once", tokenizer.vocab]).encode())
    return digest.hexdigest()[:16]
