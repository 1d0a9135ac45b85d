"""A run's tokenizer and its record: ``RUN/tokenizer`` holds the SentencePiece model(s) and ``settings.json``, the
``tokenizer.*`` settings it was trained with and the training files it learnt from (``mt.data.provenance``), or,
for a run started from a trained model (``init_from=``), where it came from and what it is.

A run's tokenizer is loaded from its directory (refused if it was trained with other settings or on other files:
a start that failed before its first checkpoint and was relaunched otherwise), else taken from ``data.cache_dir``,
where runs with the same data, settings and seed leave theirs, else trained on a seeded sample of every corpus's
training split.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from mt.atomic import atomic_write
from mt.config import DataConfig, TokenizerConfig
from mt.data.corpus import data_identity
from mt.data.mixture import corpora, symbols
from mt.data.preprocess import describe_source, sample_sentences
from mt.data.provenance import files_difference, same_files
from mt.data.tokenizer import Tokenizer, train_tokenizer
from mt.errors import DataError, TokenizerError

log = logging.getLogger(__name__)

RECORD = "settings.json"


def run_tokenizer(
    data: DataConfig,
    settings: TokenizerConfig,
    *,
    directory: Path,
    cache_dir: Path,
    shared: bool,
    seed: int,
    files: list,
    from_checkpoint: bool = False,
) -> Tokenizer:
    """The run's tokenizer in ``directory``: loaded; else from the shared cache under ``cache_dir`` (``shared``:
    ``data.cache_dir`` is set, so other runs may have left one there); else trained on a sample of the training
    splits (``tokenizer.input_sentence_size`` pairs, read through ``cache_dir``). Saved in the run (and the shared
    cache). ``files``: the training files as the run started with them (``mt.data.provenance.train_files``).
    ``from_checkpoint``: this launch keeps a checkpoint's tokenizer (``init_from=``, or a resume), so one that came
    from ``init_from`` is this run's; a launch without either is refused one."""
    tokenizer = Tokenizer.load(directory)
    wanted = asdict(settings)
    record = directory / RECORD  # runs before it was written have none: trusted
    saved = json.loads(record.read_text()) if tokenizer is not None and record.is_file() else None
    if saved is not None and "init_from" in saved and not from_checkpoint:
        raise TokenizerError(
            f"{directory} holds the tokenizer of init_from={saved['init_from']} (a start that failed before its "
            f"first checkpoint?): pass init_from= again to fine-tune, or train in another hydra.run.dir"
        )
    if saved is not None and "init_from" not in saved:  # init_from's tokenizer: no tokenizer.* settings apply
        _check_record(saved, wanted, files, directory)
    learnt = tokenizer is None  # from this run's data (trained, or a cached one keyed by the same data)
    cached = _shared_directory(data, settings, seed, cache_dir) if shared else None
    if tokenizer is None and cached is not None and (tokenizer := Tokenizer.load(cached)) is not None:
        log.info("tokenizer from the cache: %s", cached)
        tokenizer.save(directory)
    if tokenizer is None:
        src, tgt = _sample(data, settings.input_sentence_size, seed, cache_dir)
        log.info(
            "training SentencePiece (%s, %d, %s) on %d pairs of %s train",
            settings.model_type,
            settings.vocab_size,
            "joint" if settings.joint else "separate",
            len(src),
            data.name,
        )
        tokenizer = train_tokenizer(
            src,
            tgt,
            vocab_size=settings.vocab_size,
            joint=settings.joint,
            model_type=settings.model_type,
            character_coverage=settings.character_coverage,
            input_sentence_size=settings.input_sentence_size,
            seed=seed,
            symbols=symbols(data),
        )
        tokenizer.save(directory)
        if cached is not None:
            tokenizer.save(cached)
    if not record.is_file():
        _write_record(record, {**wanted, "trained_on": files} if learnt else wanted)
    for symbol in symbols(data):  # a tokenizer of an earlier run without them fails now
        tokenizer.symbol_id(symbol)
    return tokenizer


def record_init_from(directory: Path, tokenizer: Tokenizer, checkpoint: Path) -> None:
    """Record a tokenizer taken from ``init_from``'s checkpoint, unless one is recorded: where it came from and
    what it is, not the ``tokenizer.*`` settings it was never trained with."""
    record = directory / RECORD
    if not record.is_file():
        sizes = {"src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}
        _write_record(record, {"init_from": str(checkpoint), "joint": tokenizer.joint, **sizes})


def _check_record(saved: dict, wanted: dict, files: list, directory: Path) -> None:
    changed = [f"tokenizer.{k}={wanted[k]} (it has {saved.get(k)})" for k in wanted if saved.get(k) != wanted[k]]
    if changed:
        raise TokenizerError(
            f"{directory} was trained with other settings: this run asks for {', '.join(changed)}; "
            f"keep them, or train in another hydra.run.dir"
        )
    if saved.get("trained_on") is not None and not same_files(saved["trained_on"], files):
        # e.g. a start that failed before its first checkpoint, relaunched on other data
        raise TokenizerError(
            f"{directory} was trained on other training files ({files_difference(saved['trained_on'], files)}); "
            f"train in another hydra.run.dir, or remove {directory} to train it again"
        )


def _write_record(path: Path, record: dict) -> None:
    with atomic_write(path) as handle:
        handle.write(json.dumps(record, sort_keys=True).encode())


def _sample(data: DataConfig, size: int, seed: int, cache_dir: Path) -> tuple[list[str], list[str]]:
    """Sentence pairs to train SentencePiece on: a seeded sample of each corpus's training split, an equal share
    of ``size`` each."""
    found = corpora(data)
    share = max(1, size // len(found))
    src: list[str] = []
    tgt: list[str] = []
    for corpus in found:
        cfg = corpus.data
        corpus_src, corpus_tgt = sample_sentences(cfg, "train", share, seed, cache_dir=cache_dir)
        if not corpus_src:
            raise DataError(f"{describe_source(cfg, 'train')}: the train split is empty")
        for lang, side in ((cfg.src_lang, corpus_src), (cfg.tgt_lang, corpus_tgt)):
            if not any(line.strip() for line in side):
                raise DataError(
                    f"{describe_source(cfg, 'train')}: every {lang} line of the train split (of "
                    f"{len(side)} sampled) is blank: expected one sentence a line"
                )
        src += corpus_src
        tgt += corpus_tgt
    return src, tgt


def _shared_directory(data: DataConfig, settings: TokenizerConfig, seed: int, cache_dir: Path) -> Path:
    """Where runs sharing ``data.cache_dir`` keep tokenizers, keyed by what determines one."""
    key = {
        "data": data_identity(data, "train"),
        "corpora": [data_identity(corpus.data, "train") for corpus in corpora(data)],
        "tokenizer": asdict(settings),
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / "tokenizers" / digest
