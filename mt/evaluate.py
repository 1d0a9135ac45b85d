"""``python -m mt.evaluate checkpoint=PATH [source=F reference=F] [beam=N] [output=F]``.

Decodes the checkpoint's test split (or ``source``) with beam search and prints one JSON line:
BLEU and chrF with their sacreBLEU signatures and the sentence count. With ``output=`` the
hypotheses are written there, and the scores beside them in ``<output>.scores.json``.
"""

from __future__ import annotations

import json

from mt.cli import entry_point
from mt.config import EvaluateConfig, with_beam
from mt.decode.scoring import score_checkpoint
from mt.device import set_threads


@entry_point("evaluate", EvaluateConfig)
def main(config: EvaluateConfig) -> None:
    set_threads(config.threads)
    result = score_checkpoint(
        config.checkpoint,
        search=with_beam(config.search, config.beam),
        split=config.split,
        source=config.source,
        reference=config.reference,
        output=config.output,
        overwrite=config.overwrite,
        ensemble=config.ensemble,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
