"""sacreBLEU's BLEU, chrF and TER on detokenized text, each with its signature, and paired significance tests.

Cased, detokenized BLEU is the headline number. Its tokenizer follows the target language as sacreBLEU
chooses it (``zh`` for Chinese, ``ja-mecab`` for Japanese, ``ko-mecab`` for Korean, ``13a`` for the rest)
unless one is given; the language is also known by the names OPUS-MT and FLORES give it (``cmn_Hans``,
``zho_Hant``, ``jpn``, ``kor_Hang``, ``zh-TW``: ``sacrebleu_language``). The signature says exactly how each
score was computed, so it can be published beside it. Every function takes one or more reference streams:
``references[k][i]`` is the k-th reference of sentence i.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from mt.compat import sacrebleu_tokenizer_for
from mt.errors import ConfigError, DataError

BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's default for --paired-bs

# ISO 639-3 codes of the languages sacreBLEU tokenizes apart, by their ISO 639-1 code (Chinese: the macrolanguage,
# its written varieties, and Classical Chinese), for OPUS-MT's and FLORES's names of them.
_ISO_639_1 = {
    **dict.fromkeys(("zho", "chi", "cmn", "yue", "wuu", "gan", "hak", "hsn", "nan", "cjy", "lzh"), "zh"),
    "jpn": "ja",
    "kor": "ko",
}


@dataclass
class Score:
    score: float
    signature: str


def sacrebleu_language(lang: str | None) -> str:
    """The code sacreBLEU chooses a BLEU tokenizer by (``zh``, ``ja``, ``ko``, or another) for a target language
    written with a script or region (``zh_Hans``, ``zh-TW``, ``kor_Hang``) or as ISO 639-3 (``cmn_Hans``, ``jpn``):
    sacreBLEU knows the two-letter codes only, and would give those languages ``13a``, which does not split Chinese
    or Japanese into words. Romanized (``jpn_Latn``, ``ja-Latn``) they are left as they are, so ``13a`` it is."""
    base, *subtags = re.split(r"[_\-]", (lang or "").strip().lower())
    return (lang or "") if "latn" in subtags else _ISO_639_1.get(base, base)


def bleu_metric(tgt_lang: str | None = None, tokenize: str | None = None) -> BLEU:
    """sacreBLEU's BLEU with ``tokenize``, or the tokenizer sacreBLEU picks for ``tgt_lang``.

    A tokenizer whose package is missing (``ja-mecab``: ``pip install 'sacrebleu[ja]'``; ``ko-mecab``:
    ``'sacrebleu[ko]'``) or whose model cannot be fetched offline (``flores200``, ``spm``) is a ``ConfigError``.
    """
    try:
        metric = BLEU(tokenize=tokenize, trg_lang=sacrebleu_language(tgt_lang))
        metric.corpus_score(["a"], [["a"]])  # loads the tokenizer (a dictionary, a model) now, not mid-evaluation
    except (ImportError, RuntimeError, OSError, AssertionError) as error:
        chosen = tokenize or f"{metric_name(None, tgt_lang)} (sacreBLEU's choice for target language {tgt_lang!r})"
        hint = {"ja-mecab": "pip install 'sacrebleu[ja]'", "ko-mecab": "pip install 'sacrebleu[ko]'"}.get(
            metric_name(tokenize, tgt_lang), "choose another with metrics.bleu_tokenize="
        )
        raise ConfigError(f"BLEU tokenizer {chosen}: unavailable here ({first_line(error)}); {hint}") from None
    except KeyError:
        raise ConfigError(f"metrics.bleu_tokenize={tokenize!r}: expected one of {', '.join(BLEU.TOKENIZERS)}") from None
    return metric


def metric_name(tokenize: str | None, tgt_lang: str | None) -> str:
    """The name of the BLEU tokenizer used: ``tokenize``, else sacreBLEU's choice for ``tgt_lang``."""
    return tokenize or sacrebleu_tokenizer_for(sacrebleu_language(tgt_lang))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    if not references:
        raise DataError("no references")
    for k, stream in enumerate(references):
        if isinstance(stream, str):
            raise TypeError("references: expected a list of reference streams (lists of sentences), got a string")
        if len(stream) != len(hypotheses):
            raise DataError(f"reference {k + 1} has {len(stream)} lines but there are {len(hypotheses)} hypotheses")
    return [list(stream) for stream in references]


def _score(metric: Metric, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Score:
    result = metric.corpus_score(list(hypotheses), _streams(hypotheses, references))
    return Score(result.score, str(metric.get_signature()))


def bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tgt_lang: str | None = None,
    tokenize: str | None = None,
) -> Score:
    """Corpus BLEU (cased; the tokenizer as in ``bleu_metric``)."""
    return _score(bleu_metric(tgt_lang, tokenize), hypotheses, references)


def chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Score:
    """Corpus chrF (character 6-grams, beta 2)."""
    return _score(CHRF(), hypotheses, references)


def ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Score:
    """Corpus TER (translation edit rate, lower is better) with sacreBLEU's defaults (case-insensitive)."""
    return _score(TER(), hypotheses, references)


def scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tgt_lang: str | None = None,
    bleu_tokenize: str | None = None,
) -> dict:
    """BLEU, chrF and TER rounded to 2 decimals, with their signatures: the fields every result reports."""
    found = {
        "bleu": bleu(hypotheses, references, tgt_lang=tgt_lang, tokenize=bleu_tokenize),
        "chrf": chrf(hypotheses, references),
        "ter": ter(hypotheses, references),
    }
    return {
        **{name: round(score.score, 2) for name, score in found.items()},
        **{f"{name}_signature": score.signature for name, score in found.items()},
        "references": len(references),
    }


def paired_bootstrap(
    baseline: Sequence[str],
    system: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tgt_lang: str | None = None,
    bleu_tokenize: str | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict:
    """Paired bootstrap resampling (Koehn 2004) of ``system`` against ``baseline``, by sacreBLEU's ``PairedTest``
    (what ``sacrebleu REF -i BASELINE SYSTEM --paired-bs`` computes; its seed: ``SACREBLEU_SEED``, default 12345).

    For BLEU and chrF: each system's score, its bootstrap mean and 95% confidence half-width, and the p-value of
    the difference (small: unlikely to be chance); ``identical_to_baseline``: False. Translations that are the
    baseline's, line for line, are not tested (``{"identical_to_baseline": True}`` alone): sacreBLEU gives
    identical systems p = 1 / (samples + 1), a difference that is not there.
    """
    from sacrebleu.significance import PairedTest

    streams = _streams(system, references)
    if len(baseline) != len(system):
        raise DataError(f"the baseline has {len(baseline)} lines but there are {len(system)} hypotheses")
    if list(baseline) == list(system):
        return {"identical_to_baseline": True}
    metrics = {"BLEU": bleu_metric(tgt_lang, bleu_tokenize), "chrF": CHRF()}
    test = PairedTest(
        [("baseline", list(baseline)), ("system", list(system))], metrics, streams, test_type="bs", n_samples=samples
    )
    signatures, results = test()
    report: dict = {"test": "paired bootstrap resampling", "samples": samples, "identical_to_baseline": False}
    for key, name in zip(("bleu", "chrf"), signatures):  # sacreBLEU's names: BLEU, chrF2
        base, ours = results[name]
        report[key] = {  # sacreBLEU's means and intervals are numpy float32: plain floats, for JSON
            "baseline": round(float(base.score), 2),
            "baseline_mean": round(float(base.mean), 2),
            "baseline_ci95": round(float(base.ci), 2),
            "system": round(float(ours.score), 2),
            "system_mean": round(float(ours.mean), 2),
            "system_ci95": round(float(ours.ci), 2),
            "p_value": round(float(ours.p_value), 4),
            "signature": str(signatures[name]),
        }
    return report
