"""``python -m mt.evaluate checkpoint=PATH [source=F reference=F | references=[F,..]] [baseline=F] [output=F]``.

A checkpoint trained on several directions (``data.corpora``) takes ``tgt_lang=`` (the language to translate
into) and, for its own test split, ``src_lang=`` where several directions share that target.

Decodes the checkpoint's test split (or ``source``) with the search the checkpoint was trained and tuned
with (``search.*`` and ``beam=`` on the command line win) and prints one JSON line: BLEU, chrF and TER with
their sacreBLEU signatures, the search used and the sentence count. ``baseline=`` (another system's output of
the same sentences) adds sacreBLEU's paired bootstrap test against it. With ``output=`` the hypotheses are
written there, and the scores beside them in ``<output>.scores.json``.
"""

from __future__ import annotations

import json

from mt.cli import entry_point, set_on_command_line
from mt.config import EvaluateConfig, search_overrides
from mt.decode.scoring import score_checkpoint
from mt.device import set_threads


@entry_point("evaluate", EvaluateConfig)
def main(config: EvaluateConfig) -> None:
    set_threads(config.threads)
    result = score_checkpoint(
        config.checkpoint,
        search_overrides=search_overrides(config.search, set_on_command_line("search"), config.beam),
        split=config.split or "test",
        source=config.source,
        references=config.reference_files,
        output=config.output,
        overwrite=config.overwrite,
        ensemble=config.ensemble,
        baseline=config.baseline,
        bleu_tokenize=config.metrics.bleu_tokenize,
        src_lang=config.src_lang,
        tgt_lang=config.tgt_lang,
        precision=config.precision,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
