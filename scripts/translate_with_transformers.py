"""Translate a test set with ``transformers`` alone, from a directory ``mt.convert`` exported: the proof that an
``mt`` model works where Hugging Face users deploy. Prints a few translations and sacreBLEU.

    python -m mt.convert input=outputs/RUN/checkpoints/best.ckpt output=outputs/RUN/hf
    python scripts/translate_with_transformers.py --model outputs/RUN/hf \\
        --source ../shared/data/multi30k/test_2016_flickr.de.gz \\
        --reference ../shared/data/multi30k/test_2016_flickr.en.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path


def read(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--reference")
    parser.add_argument("--beam", type=int, default=None, help="default: the exported generation config's")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--output")
    args = parser.parse_args()

    import sacrebleu
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    model = MarianMTModel.from_pretrained(args.model).eval()
    tokenizer = MarianTokenizer.from_pretrained(args.model)
    sources = read(args.source)
    settings = {} if args.beam is None else {"num_beams": args.beam}
    start = time.perf_counter()
    hypotheses: list[str] = []
    with torch.inference_mode():
        for first in range(0, len(sources), args.batch):
            batch = tokenizer(sources[first : first + args.batch], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=256, **settings)
            hypotheses += tokenizer.batch_decode(out, skip_special_tokens=True)
    seconds = time.perf_counter() - start
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    for source, hypothesis in list(zip(sources, hypotheses))[:3]:
        print(f"{source}\n  -> {hypothesis}")
    beams = args.beam or model.generation_config.num_beams
    result = {"sentences": len(sources), "seconds": round(seconds, 1), "num_beams": beams}
    if args.reference:
        bleu = sacrebleu.corpus_bleu(hypotheses, [read(args.reference)])
        chrf = sacrebleu.corpus_chrf(hypotheses, [read(args.reference)])
        result |= {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
