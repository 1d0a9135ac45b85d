"""sacreBLEU and chrF on detokenized text, each with its signature.

Cased, detokenized sacreBLEU with its default ``13a`` tokenizer is the headline number; the
signature says exactly how it was computed, so it can be published beside the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Score:
    score: float
    signature: str


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus sacreBLEU (cased, 13a) of ``hypotheses`` against one reference each."""
    _check(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score(result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus chrF (character 6-grams, beta 2)."""
    _check(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score(result.score, str(metric.get_signature()))


def scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """BLEU and chrF rounded to 2 decimals, with their signatures: the fields every result reports."""
    bleu_score, chrf_score = bleu(hypotheses, references), chrf(hypotheses, references)
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": bleu_score.signature,
        "chrf_signature": chrf_score.signature,
    }
