"""Decoding settings chosen on the validation split: beam size × GNMT length penalty, per checkpoint.

Decodes the run's ``best.ckpt`` (and the average of its last N step checkpoints) on the data's
validation split (never a test set) under every combination of ``--beams`` and ``--alphas``, and
prints a table of BLEU and chrF with the best setting marked. Decodes go through ``mt.report``'s
cache (``<run>/report_cache/``), so a rerun, or a later ``mt.report`` with the same settings, is free.

    python scripts/tune_search.py --run outputs/recipes/multi30k_de_en --average-last 3
    python scripts/tune_search.py --run RUN --beams 1,5,10 --alphas 0,0.6,1.0,1.5 --split val
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt.config import ReportConfig, SearchConfig  # noqa: E402
from mt.errors import USER_ERRORS  # noqa: E402
from mt.report import averaged_checkpoint, checkpoint_info, decode_scores, load_test_sets  # noqa: E402


def beam_sizes(text: str) -> list[int]:
    """``--beams``: comma-separated beam sizes, at least one, each >= 1."""
    try:
        beams = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 1,5,10") from None
    if not beams or min(beams) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more beam sizes >= 1")
    return beams


def alphas(text: str) -> list[float]:
    """``--alphas``: comma-separated finite numbers (none is allowed here: only beams > 1 need them)."""
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0,0.6,1.0") from None
    if not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected finite numbers")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a training run directory")
    parser.add_argument("--average-last", type=int, default=0, help="also the average of the last N step checkpoints")
    parser.add_argument("--split", default="val", help="a split name of the run's data (default: val)")
    parser.add_argument("--beams", type=beam_sizes, default="1,5,10")
    parser.add_argument("--alphas", type=alphas, default="0,0.6,1.0,1.5", help="GNMT length penalty alphas (beam > 1)")
    args = parser.parse_args(argv)
    if args.split.startswith("test"):
        sys.exit(f"--split={args.split}: tune on a validation split, not a test set")
    if args.average_last < 0:
        parser.error(f"--average-last {args.average_last}: expected >= 0")
    if max(args.beams) > 1 and not args.alphas:
        parser.error("--alphas is empty: beams > 1 need at least one alpha")
    if not args.run.is_dir():
        parser.error(f"--run {args.run}: no such directory")
    if not (args.run / "checkpoints" / "best.ckpt").is_file():
        parser.error(f"--run {args.run}: no checkpoints/best.ckpt (not a training run, or one not validated yet)")
    try:
        tune(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def tune(args: argparse.Namespace) -> None:
    checkpoints = {"best": args.run / "checkpoints" / "best.ckpt"}
    if args.average_last:
        checkpoints[f"avg_last{args.average_last}"] = averaged_checkpoint(args.run, args.average_last)
    data = checkpoint_info(checkpoints["best"])["data"]
    report_config = ReportConfig(run=str(args.run), test_splits=[args.split])
    (test_set,) = load_test_sets(report_config, data)
    settings = [(1, 0.0)] if 1 in args.beams else []
    settings += [(b, a) for b in args.beams if b > 1 for a in args.alphas]

    rows = []
    for label, path in checkpoints.items():
        for beam, alpha in settings:
            search = SearchConfig(beam=beam, length_penalty=alpha, length_penalty_type="gnmt" if alpha else "none")
            start = time.perf_counter()
            result = decode_scores(path, test_set, search, args.run / "report_cache", report_config.metrics)
            seconds = time.perf_counter() - start
            rows.append((label, beam, alpha, result["bleu"], result["chrf"], seconds))
            print(f"{label} beam {beam} alpha {alpha}: BLEU {result['bleu']:.2f} ({seconds:.0f} s)", file=sys.stderr)

    best = max(rows, key=lambda row: row[3])
    print(f"\n{args.run}: {args.split} ({len(test_set.sources)} sentences), GNMT length penalty\n")
    print(f"| checkpoint | beam | alpha | {args.split} BLEU | {args.split} chrF |")
    print("|---|---|---|---|---|")
    for row in rows:
        mark = " **best**" if row is best else ""
        print(f"| {row[0]} | {row[1]} | {row[2]:g} | {row[3]:.2f}{mark} | {row[4]:.2f} |")


if __name__ == "__main__":
    main()
