"""Preprocessing of large corpora: a raw split becomes a cached, memory-mapped ``EncodedCorpus``.

The path never holds the corpus in Python lists:

1. ``raw_dataset``: the split as an Arrow dataset (columns ``src``, ``tgt``) on disk, streamed from
   the local files chunk by chunk into one Arrow file (or loaded from the hub and flattened),
   cached under ``cache_dir`` and keyed by the files' names, sizes and modification times.
2. ``prepare_split_arrow``: ``datasets.map`` encodes it in batches (in ``num_proc`` processes, each
   building its own SentencePiece processors from the models' bytes); the training split is cleaned
   with ``mt.data.corpus.cleaning_mask`` on lengths read from the Arrow list offsets; the flat arrays of
   ``EncodedCorpus`` are streamed into ``.npy`` files in a folder keyed by ``mt.data.corpus.cache_key`` and
   renamed into place when complete. Every rank and later run memory-maps those files.
3. ``sample_sentences``: a seeded reservoir sample of pairs, for training SentencePiece on
   ``input_sentence_size`` pairs.

The results equal those of a plain in-memory encoder (``tests/reference_encoder.py``: same ids, offsets
and index); only the token dtype may be narrower (``uint16`` when the vocabulary fits).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mt.compat import dataset_fingerprint, has_indices_mapping, set_dataset_fingerprint
from mt.config import DataConfig
from mt.data.corpus import CACHE_LAYOUT, SPLITS, EncodedCorpus, cache_key, cleaning_mask, hub_origin, open_hub_split
from mt.data.readers import LocalSplit, local_split
from mt.data.sampling import Reservoir
from mt.data.tokenizer import Tokenizer
from mt.errors import DataError

log = logging.getLogger(__name__)

BATCH_SIZE = 10_000  # pairs per datasets.map batch and per reservoir step
ARRAYS = ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "index")


def _fingerprint(files: LocalSplit) -> str:
    """Changes with the files (name, size, modification time), the languages and the layout."""
    paths = [files.src_path] + ([files.tgt_path] if files.tgt_path else [])
    stats = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in paths]
    payload = json.dumps([CACHE_LAYOUT, files.format, files.src_lang, files.tgt_lang, stats])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Raw Arrow datasets


def _raw_features():
    import datasets

    return datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})


def _check_split(cfg: DataConfig, split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {SPLITS}")
    if not cfg.path and not cfg.hub_name:
        raise DataError(
            f"data {cfg.name!r}: neither data.path nor data.hub_name is set "
            f"(for Multi30k, set MT_DATA_DIR to its directory)"
        )


def describe_source(cfg: DataConfig, split: str) -> str:
    """Where ``split`` is read from, for messages: its files or the hub dataset."""
    return local_split(cfg, split).origin if cfg.path else hub_origin(cfg, split)


def _flatten_translation(table: pa.Table, src_lang: str, tgt_lang: str) -> pa.Table:
    pairs = table.column("translation").combine_chunks()
    return _string_table(pairs.field(src_lang), pairs.field(tgt_lang))


def _flatten_columns(table: pa.Table, src_lang: str, tgt_lang: str) -> pa.Table:
    return _string_table(table.column(src_lang), table.column(tgt_lang))


def _string_table(src: pa.Array | pa.ChunkedArray, tgt: pa.Array | pa.ChunkedArray) -> pa.Table:
    """``src`` and ``tgt`` as strings, a missing value as "" (as ``mt.data.corpus.load_hub`` reads them)."""
    import pyarrow.compute as pc

    return pa.table({"src": pc.fill_null(src.cast(pa.string()), ""), "tgt": pc.fill_null(tgt.cast(pa.string()), "")})


def _hub_dataset(cfg: DataConfig, split: str, cache_dir: Path):
    dataset, _, nested = open_hub_split(cfg, split, cache_dir=Path(cache_dir) / "hub")
    columns = dataset.column_names
    flatten = _flatten_translation if nested else _flatten_columns
    fingerprint = hashlib.sha256(
        json.dumps([CACHE_LAYOUT, dataset_fingerprint(dataset), flatten.__name__, cfg.src_lang, cfg.tgt_lang]).encode()
    ).hexdigest()[:16]
    flat = dataset.with_format("arrow").map(
        flatten,
        batched=True,
        batch_size=BATCH_SIZE,
        fn_kwargs={"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang},
        remove_columns=columns,
        features=_raw_features(),
        new_fingerprint=fingerprint,
        desc=f"flatten {split}",
    )
    return flat.with_format(None)


def raw_dataset(cfg: DataConfig, split: str, *, cache_dir: str | Path):
    """One split as a ``datasets.Dataset`` with string columns ``src`` and ``tgt``, cached on disk.

    Local files are streamed (never read whole) into an Arrow file, opened memory-mapped; the
    hub dataset (``cfg.path`` null) is loaded and flattened. Both live under ``cache_dir`` (``raw/``,
    ``hub/``) and are reused while the source files are unchanged (name, size, modification time).

    Raises:
        DataError: a missing file, misaligned files (both named, with their line counts), invalid
            UTF-8 (file and line), a malformed TSV/JSONL line, an unknown language key, or an
            unreachable hub dataset.
    """
    _check_split(cfg, split)
    cache_dir = Path(cache_dir)
    if not cfg.path:
        return _hub_dataset(cfg, split, cache_dir)
    return _local_dataset(local_split(cfg, split), split, cache_dir / "raw")


def _local_dataset(files: LocalSplit, split: str, directory: Path):
    """The local split as an Arrow file ``directory/{split}-{fingerprint}.arrow``, written once.

    The pairs are streamed into the file chunk by chunk, as whole Arrow columns: ``from_generator``
    would encode them one by one (about 25 us a pair, two minutes for WMT14 en-de on one core).
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from filelock import FileLock

    fingerprint = _fingerprint(files)
    path = directory / f"{split}-{fingerprint}.arrow"
    features = _raw_features()
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
                try:
                    with (
                        ArrowWriter(features=features, path=str(tmp)) as writer,
                        tqdm(desc=f"read {split}", unit=" pairs", unit_scale=True, disable=None) as bar,
                    ):
                        for src, tgt in files.pair_chunks():
                            writer.write_table(
                                pa.table({"src": pa.array(src, pa.string()), "tgt": pa.array(tgt, pa.string())})
                            )
                            bar.update(len(src))
                        writer.finalize()
                    _fsync(tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
    dataset = datasets.Dataset.from_file(str(path), info=datasets.DatasetInfo(features=features))
    set_dataset_fingerprint(dataset, fingerprint)
    return dataset


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _arrow_batches(dataset) -> Iterator[pa.RecordBatch]:
    """The record batches of a dataset without an indices mapping, read from its Arrow files.

    The files are read with plain reads rather than memory-mapped, so a pass over a large corpus
    does not leave its pages resident in this process (they stay in the page cache).
    """
    files = [entry["filename"] for entry in dataset.cache_files]
    if has_indices_mapping(dataset) or not files:
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_SIZE):
            yield from table.to_batches()
        return
    rows = 0
    for filename in files:
        with pa.OSFile(filename) as source:
            for batch in pa.ipc.open_stream(source):
                rows += batch.num_rows
                yield batch
    if rows != len(dataset):
        raise RuntimeError(f"{files}: {rows} rows on disk but the dataset has {len(dataset)}")


def _rechunk(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of at least ``size`` rows (the last may be smaller) from a stream of record batches."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= size:
            yield pa.Table.from_batches(pending)
            pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending)


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_sentences(
    cfg: DataConfig, split: str, n: int, seed: int, *, cache_dir: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """A uniform random sample of ``n`` pairs (all of them if the split is smaller), as two lists.

    Streams the split once, holding only the sample. With ``cache_dir`` the stream is the cached
    raw Arrow dataset (built there if needed, and reused by ``prepare_split_arrow``); without it,
    local files are read directly (the hub dataset then goes to a temporary folder). Both give the
    same sample for the same seed.
    """
    if n < 0:
        raise ValueError(f"n={n}: expected >= 0")
    _check_split(cfg, split)
    reservoir: Reservoir[tuple[str, str]] = Reservoir(n, seed)
    if cache_dir is None and cfg.path:
        for src, tgt in local_split(cfg, split).pair_chunks():

            def take(rows: np.ndarray, src: list[str] = src, tgt: list[str] = tgt) -> list[tuple[str, str]]:
                return [(src[i], tgt[i]) for i in rows.tolist()]

            reservoir.add(len(src), take)
        return _unzip(reservoir.items)
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="mt-hub-") as temporary:
            return sample_sentences(cfg, split, n, seed, cache_dir=temporary)
    dataset = raw_dataset(cfg, split, cache_dir=cache_dir)
    for table in _rechunk(_arrow_batches(dataset), BATCH_SIZE):

        def take(rows: np.ndarray, table: pa.Table = table) -> list[tuple[str, str]]:
            indices = pa.array(rows)
            return list(
                zip(table.column("src").take(indices).to_pylist(), table.column("tgt").take(indices).to_pylist())
            )

        reservoir.add(table.num_rows, take)
    return _unzip(reservoir.items)


def _unzip(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [src for src, _ in pairs], [tgt for _, tgt in pairs]


# ---------------------------------------------------------------------------------------------
# Encoding into a memory-mapped EncodedCorpus


def _list_array(sequences: list[list[int]], dtype: np.dtype) -> pa.ListArray:
    """An Arrow list array from Python lists of ids, built through numpy."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(sequences), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class _Encoder:
    """The batched ``datasets.map`` function: picklable, it ships the SentencePiece models as bytes
    and builds the ``Tokenizer`` once per worker process, on first use."""

    def __init__(
        self, tokenizer_state: dict, dtype: str, num_threads: int, src_prefix: list[int] = (), origin: str = ""
    ) -> None:
        self.tokenizer_state = tokenizer_state
        self.src_prefix = list(src_prefix)
        self.origin = origin
        self.dtype = dtype
        self.num_threads = num_threads
        self._tokenizer: Tokenizer | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, batch: pa.Table, indices: list[int]) -> pa.Table:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_state(self.tokenizer_state)
        tokenizer, dtype = self._tokenizer, np.dtype(self.dtype)
        texts = batch.column("src").to_pylist()
        src = tokenizer.encode_src(texts, num_threads=self.num_threads)  # threads only when running in one process
        prefixed = []  # tags and language tokens: ids of their own before the text (a source's own code once)
        for index, ids, text in zip(indices, src, texts):
            try:
                prefixed.append(tokenizer.prefixed(ids, text, self.src_prefix))
            except DataError as error:
                raise DataError(f"{self.origin}: pair {index + 1}: {error}") from None
        tgt = tokenizer.encode_tgt(batch.column("tgt").to_pylist(), num_threads=self.num_threads)
        return pa.table({"src_ids": _list_array(prefixed, dtype), "tgt_ids": _list_array(tgt, dtype)})


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """``uint16`` when every id fits, else ``int32``."""
    return np.dtype(np.uint16 if max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size) <= 1 << 16 else np.int32)


def cache_folder(
    cfg: DataConfig, split: str, tokenizer: Tokenizer, cache_dir: str | Path, src_prefix: Sequence[int] = ()
) -> Path:
    """Where ``prepare_split_arrow`` keeps the encoded split: one folder of ``.npy`` files per key."""
    key = cache_key(cfg, split, tokenizer, src_prefix)
    return Path(cache_dir) / f"{cfg.name}.{split}.{cfg.src_lang}-{cfg.tgt_lang}.{key}.arrays"


def load_cached(folder: str | Path) -> EncodedCorpus:
    """The ``EncodedCorpus`` in ``folder``, memory-mapped read-only (ranks share the pages)."""
    folder = Path(folder)
    return EncodedCorpus(**{name: _load_array(folder / f"{name}.npy") for name in ARRAYS})


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


def _ragged_parts(column: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and the flat values of a list column (one chunk), vectorised."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return np.diff(offsets).astype(np.int64), values


def _write_arrays(
    encoded, folder: Path, keep: np.ndarray | None, src_lengths: np.ndarray, tgt_lengths: np.ndarray, dtype: np.dtype
) -> None:
    """Write the five arrays of the kept pairs; tokens stream batch by batch into preallocated ``.npy`` files."""
    index = np.arange(len(src_lengths), dtype=np.int64) if keep is None else np.flatnonzero(keep).astype(np.int64)
    np.save(folder / "index.npy", index)
    totals = {}
    for side, lengths in (("src", src_lengths), ("tgt", tgt_lengths)):
        kept = lengths if keep is None else lengths[keep]
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
        np.save(folder / f"{side}_offsets.npy", offsets)
        totals[side] = int(offsets[-1])
    with contextlib.ExitStack() as stack:
        files = {}
        for side, total in totals.items():
            path = folder / f"{side}_tokens.npy"
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(total,))
            header = array.offset
            del array  # filled with plain writes below, so the pages do not count against this process
            files[side] = stack.enter_context(open(path, "r+b"))
            files[side].seek(header)
        written = dict.fromkeys(totals, 0)
        start = 0
        for batch in _arrow_batches(encoded):
            stop = start + batch.num_rows
            chosen = None if keep is None else keep[start:stop]
            for side, handle in files.items():
                lengths, values = _ragged_parts(batch.column(f"{side}_ids"))
                if chosen is not None:
                    values = values[np.repeat(chosen, lengths)]
                values.astype(dtype, copy=False).tofile(handle)
                written[side] += len(values)
            start = stop
        for side, handle in files.items():
            if written[side] != totals[side]:
                raise RuntimeError(f"wrote {written[side]} {side} tokens, expected {totals[side]}")
            handle.flush()
            os.fsync(handle.fileno())


def prepare_split_arrow(
    cfg: DataConfig,
    split: str,
    tokenizer: Tokenizer,
    *,
    cache_dir: str | Path,
    num_proc: int = 1,
    src_prefix: Sequence[int] = (),
) -> EncodedCorpus:
    """Encode one split (cleaning the training split) into a memory-mapped ``EncodedCorpus``.

    ``src_prefix``: ids put before every source (a corpus's tag, the target-language token); the cleaning rules
    count the text's subwords only.

    Same pairs, ids, offsets and index as a plain in-memory encoder (``tests/reference_encoder.py``), without
    loading the corpus into Python: the raw split is encoded by ``datasets.map`` in ``num_proc`` processes and
    written as ``.npy`` files in ``cache_folder(...)``; a later call (any rank, any run) only memory-maps them.
    Concurrent callers wait on a file lock, and one of them does the work.

    Raises:
        DataError: the split cannot be read, is empty, or has no pair left after cleaning.
    """
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    folder = cache_folder(cfg, split, tokenizer, cache_dir, src_prefix)
    if folder.is_dir():
        return load_cached(folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.is_dir():  # another process finished it while this one waited
            return load_cached(folder)
        raw = raw_dataset(cfg, split, cache_dir=cache_dir)
        origin = describe_source(cfg, split)
        if len(raw) == 0:
            raise DataError(f"{origin}: the {split} split is empty")
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _encode_into(cfg, split, tokenizer, raw, tmp, origin, num_proc, list(src_prefix))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_cached(folder)


def _encode_into(
    cfg: DataConfig, split: str, tokenizer: Tokenizer, raw, folder: Path, origin: str, num_proc: int, src_prefix: list
) -> None:
    import datasets

    dtype = token_dtype(tokenizer)
    arrow_type = pa.from_numpy_dtype(dtype)
    features = datasets.Features(
        {
            "src_ids": datasets.Sequence(datasets.Value(str(arrow_type))),
            "tgt_ids": datasets.Sequence(datasets.Value(str(arrow_type))),
        }
    )
    threads = 1 if num_proc > 1 else -1
    encoder = _Encoder(tokenizer.to_state(), dtype.name, num_threads=threads, src_prefix=src_prefix, origin=origin)
    encoded = raw.with_format("arrow").map(
        encoder,
        batched=True,
        with_indices=True,
        batch_size=BATCH_SIZE,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=raw.column_names,
        features=features,
        cache_file_name=str(folder / "encoded.arrow"),
        new_fingerprint=f"{dataset_fingerprint(raw)}-{cache_key(cfg, split, tokenizer, src_prefix)}-{CACHE_LAYOUT}",
        desc=f"encode {split}",
    )
    src_lengths = np.empty(len(raw), dtype=np.int64)
    tgt_lengths = np.empty(len(raw), dtype=np.int64)
    start = 0
    for batch in _arrow_batches(encoded):  # lengths from the list offsets
        stop = start + batch.num_rows
        src_lengths[start:stop] = _ragged_parts(batch.column("src_ids"))[0]
        tgt_lengths[start:stop] = _ragged_parts(batch.column("tgt_ids"))[0]
        start = stop
    keep = None
    report = None
    if split == "train":
        keep, report = cleaning_mask(
            src_lengths - len(src_prefix),
            tgt_lengths,
            min_len=cfg.min_len,
            max_len=cfg.max_len,
            max_ratio=cfg.max_len_ratio,
        )
        log.info("cleaning %s: %s", origin, report)
        if report.kept == 0:
            raise DataError(
                f"{origin}: no pair is left after cleaning ({report}); check data.min_len, "
                f"data.max_len and data.max_len_ratio"
            )
        if report.kept == report.total:
            keep = None
    _write_arrays(encoded, folder, keep, src_lengths, tgt_lengths, dtype)
    del encoded
    for path in folder.glob("*.arrow"):
        path.unlink()
    meta = {
        "origin": origin,
        "split": split,
        "pairs": int(len(src_lengths) if keep is None else keep.sum()),
        "raw_pairs": len(src_lengths),
        "token_dtype": dtype.name,
        "cleaning": str(report) if report else None,
        "layout_version": CACHE_LAYOUT,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for path in folder.iterdir():  # the token files are synced already; the rename must not outrun the rest
        if not path.name.endswith("_tokens.npy"):
            _fsync(path)
