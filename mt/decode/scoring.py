"""Scoring a checkpoint on a test set: decode, detokenize, BLEU and chrF, optionally write the outputs.

Used by ``mt.evaluate`` and by ``mt.train`` after training (``test_after_training``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mt.atomic import atomic_write, refuse_to_overwrite
from mt.config import DataConfig, SearchConfig, from_dict
from mt.data.corpus import load_split
from mt.data.readers import read_lines
from mt.decode.metrics import scores
from mt.decode.translator import translate
from mt.device import best_device
from mt.errors import DataError, RunError
from mt.model.checkpoint import load_translator


def score_checkpoint(
    checkpoint: str | Path,
    *,
    search: SearchConfig,
    split: str = "test",
    source: str | None = None,
    reference: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    ensemble: Sequence[str | Path] = (),
) -> dict:
    """Translate ``source`` (default: ``split`` of the checkpoint's data) and score it.

    Every check that needs no decoding (outputs that exist, unreadable, empty or misaligned input
    files) runs before the checkpoint is loaded, and nothing is written unless decoding succeeds.
    """
    outputs = [] if output is None else [Path(output), Path(f"{output}.scores.json")]
    for path in outputs:  # refuse before spending time decoding
        refuse_to_overwrite(path, overwrite=overwrite)
    if source is not None:  # read and check the input before loading the checkpoint
        sources, references = read_source_and_reference(source, reference)
        origin = source
    model, loaded = load_translator(checkpoint, ensemble)
    device = best_device()
    if source is None:
        if not loaded.data:
            raise RunError(f"checkpoint {checkpoint} records no data config: pass source= (and reference=)")
        data = from_dict(DataConfig, loaded.data)
        text = load_split(data, split)
        if len(text) == 0:
            raise DataError(f"{text.origin}: the {split} split is empty, so there is nothing to translate")
        sources, references, origin = text.src, text.tgt, f"{data.name} {split} ({data.src_lang}-{data.tgt_lang})"
    hypotheses = [
        nbest[0][0]
        for nbest in translate(
            model.to(device), loaded.tokenizer, sources, search, device=device, progress=progress, return_scores=False
        )
    ]
    result: dict = {
        "checkpoint": str(checkpoint),
        **({"ensemble": [str(checkpoint), *map(str, ensemble)]} if ensemble else {}),
        "data": origin,
        "sentences": len(sources),
        "beam": search.beam,
        "length_penalty": search.length_penalty,
    }
    if references is not None:
        result.update(scores(hypotheses, references))
    if output is not None:
        with atomic_write(output) as handle:
            handle.write("".join(h + "\n" for h in hypotheses).encode("utf-8"))
        with atomic_write(f"{output}.scores.json") as handle:
            handle.write((json.dumps(result, indent=2) + "\n").encode("utf-8"))
    return result


def read_source_and_reference(source: str, reference: str | None) -> tuple[list[str], list[str] | None]:
    """The lines of ``source`` (at least one) and of ``reference`` (as many), else a ``DataError``."""
    sources = read_lines(source)
    if not sources:
        raise DataError(f"source {source} is empty: expected one sentence a line")
    if reference is None:
        return sources, None
    references = read_lines(reference)
    if len(references) != len(sources):
        raise DataError(f"reference {reference} has {len(references)} lines but source {source} has {len(sources)}")
    return sources, references
