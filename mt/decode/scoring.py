"""Scoring a checkpoint on a test set: decode, detokenize, BLEU, chrF and TER (and a paired bootstrap test
against a baseline), optionally write the outputs.

Used by ``mt.evaluate`` and by ``mt.train`` after training (``test_after_training``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Sequence
from pathlib import Path

from mt.atomic import atomic_write, refuse_to_overwrite
from mt.config import DataConfig, SearchConfig, from_dict, saved_search
from mt.data.corpus import load_split
from mt.data.mixture import check_folders, direction_corpus
from mt.data.readers import read_lines
from mt.decode.metrics import bleu_metric, paired_bootstrap, scores
from mt.decode.translator import translate
from mt.device import best_device
from mt.errors import DataError, RunError
from mt.model.checkpoint import load_translator


def score_checkpoint(
    checkpoint: str | Path,
    *,
    search: SearchConfig | None = None,
    search_overrides: dict | None = None,
    split: str = "test",
    source: str | None = None,
    references: Sequence[str] = (),
    output: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    ensemble: Sequence[str | Path] = (),
    baseline: str | None = None,
    bleu_tokenize: str | None = None,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    precision: str = "32",
) -> dict:
    """Translate ``source`` (default: ``split`` of the checkpoint's data) and score it against ``references``
    (files, one or several; default: the split's target side). A checkpoint trained on several directions
    translates into ``tgt_lang`` and, without ``source``, reads the split of direction ``src_lang``-``tgt_lang``.

    Decodes with ``search``, else with the checkpoint's saved search and ``search_overrides`` over it. BLEU's
    tokenizer is ``bleu_tokenize`` or sacreBLEU's choice for the checkpoint's target language. ``precision``: of
    the decoding, 32 or bf16 (recorded in the result). ``baseline``
    (another system's output of the same sentences) adds a paired bootstrap test against it. Every check that
    needs no decoding (outputs that exist, unreadable, empty or misaligned input files) runs before the
    checkpoint is loaded, and nothing is written unless decoding succeeds.
    """
    outputs = [] if output is None else [Path(output), Path(f"{output}.scores.json")]
    for path in outputs:  # refuse before spending time decoding
        refuse_to_overwrite(path, overwrite=overwrite)
    streams: list[list[str]] | None = None
    if source is not None:  # read and check the input before loading the checkpoint
        sources, streams = read_source_and_references(source, references)
        origin = source
    model, loaded = load_translator(checkpoint, ensemble)
    if search is None:
        search = saved_search(loaded.search, search_overrides or {})
    device = best_device()
    if source is None:
        if not loaded.data:
            raise RunError(f"checkpoint {checkpoint} records no data config: pass source= (and reference=)")
        corpus = direction_corpus(from_dict(DataConfig, loaded.data), src_lang=src_lang, tgt_lang=tgt_lang)
        check_folders(corpus, f"as {checkpoint} records it: the data moved? pass source= and reference=")
        data = corpus.data
        tgt_lang = data.tgt_lang
        text = load_split(data, split)
        if len(text) == 0:
            raise DataError(f"{text.origin}: the {split} split is empty, so there is nothing to translate")
        sources, streams, origin = text.src, [text.tgt], f"{data.name} {split} ({data.src_lang}-{data.tgt_lang})"
    prefix = loaded.source_prefix(tgt_lang)
    language = loaded.target_language(tgt_lang)
    baseline_lines = read_baseline(baseline, len(sources), streams)
    bleu_metric(language, bleu_tokenize)  # an unavailable tokenizer fails now, not after decoding
    hypotheses = [
        nbest[0][0]
        for nbest in translate(
            model.to(device),
            loaded.tokenizer,
            sources,
            search,
            device=device,
            progress=progress,
            return_scores=False,
            src_prefix=prefix,
            origin=origin,
            precision=precision,
        )
    ]
    result: dict = {
        "checkpoint": str(checkpoint),
        **({"ensemble": [str(checkpoint), *map(str, ensemble)]} if ensemble else {}),
        "data": origin,
        "sentences": len(sources),
        "beam": search.beam,
        "length_penalty": search.length_penalty,
        "search": dataclasses.asdict(search),
        "precision": precision,
    }
    if streams is not None:
        result.update(scores(hypotheses, streams, tgt_lang=language, bleu_tokenize=bleu_tokenize))
    if baseline_lines is not None:
        result["paired_bootstrap"] = {
            "baseline": baseline,
            **paired_bootstrap(baseline_lines, hypotheses, streams, tgt_lang=language, bleu_tokenize=bleu_tokenize),
        }
    if output is not None:
        text = "".join(h + "\n" for h in hypotheses).encode("utf-8")
        with atomic_write(output) as handle:  # output=hyp.en.gz: compressed, as the inputs may be
            handle.write(gzip.compress(text, mtime=0) if str(output).endswith(".gz") else text)
        with atomic_write(f"{output}.scores.json") as handle:
            handle.write((json.dumps(result, indent=2) + "\n").encode("utf-8"))
    return result


def read_baseline(baseline: str | None, count: int, references: list[list[str]] | None) -> list[str] | None:
    """The lines of another system's output, as many as there are sources, else a ``DataError``."""
    if baseline is None:
        return None
    if references is None:
        raise DataError(f"baseline={baseline}: a significance test needs references (pass reference=)")
    lines = read_lines(baseline)
    if len(lines) != count:
        raise DataError(f"baseline {baseline} has {len(lines)} lines but there are {count} sentences to translate")
    return lines


def read_source_and_references(source: str, references: Sequence[str]) -> tuple[list[str], list[list[str]] | None]:
    """The lines of ``source`` (at least one) and of each reference file (as many), else a ``DataError``."""
    sources = read_lines(source)
    if not sources:
        raise DataError(f"source {source} is empty: expected one sentence a line")
    if not any(line.strip() for line in sources):
        raise DataError(f"source {source}: its {len(sources)} lines are all blank: expected one sentence a line")
    if not references:
        return sources, None
    streams = []
    for reference in references:
        lines = read_lines(reference)
        if len(lines) != len(sources):
            raise DataError(f"reference {reference} has {len(lines)} lines but source {source} has {len(sources)}")
        streams.append(lines)
    return sources, streams
