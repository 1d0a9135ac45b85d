"""Validation BLEU and loss of several runs against training time, on one figure.

Each ``--run LABEL=DIR[@MINUTES][#METRIC]`` is a run directory; ``@MINUTES`` shifts its clock (a fine-tuning run
that started from a 30-minute checkpoint: ``@30``); ``#METRIC`` plots another BLEU than ``val/bleu``, such as one
direction of a multilingual run (``#val/bleu/de-en``). Reads ``DIR/csv/metrics.csv`` (and ``resume_K/`` of resumed
runs).

    python scripts/plot_runs.py --output docs/finetune_curve.png \\
        --run "resumed=outputs/demo/resumed" --run "init_from, fresh schedule=outputs/demo/finetuned@30"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt.training.plots import read_metric_rows  # noqa: E402


def curve(run_dir: Path, offset: float, metric: str = "val/bleu") -> list[tuple[float, float, float | None]]:
    csv_dir = run_dir / "csv"
    files = [
        csv_dir / "metrics.csv",
        *sorted(csv_dir.glob("resume_*/metrics.csv"), key=lambda p: int(p.parent.name[7:])),
    ]
    rows = [row for path in files if path.is_file() for row in read_metric_rows(path, "val/loss")]
    points = sorted((offset + r.get("time/train_hours", 0.0) * 60, r["val/loss"], r.get(metric)) for r in rows)
    if not points:
        raise SystemExit(f"{csv_dir}: no validation rows (val/loss) to plot")
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=DIR[@MINUTES]")
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="validation BLEU and loss against training time")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for spec in args.run:
        label, _, rest = spec.partition("=")
        rest, _, metric = rest.partition("#")
        directory, _, offset = rest.partition("@")
        points = curve(Path(directory), float(offset or 0), metric or "val/bleu")
        minutes = [p[0] for p in points]
        loss_axis.plot(minutes, [p[1] for p in points], marker="o", label=label)
        bleu = [(m, p[2]) for m, p in zip(minutes, points) if p[2] is not None]
        if bleu:
            bleu_axis.plot(*zip(*bleu), marker="s", label=label)
    for axis, name in ((bleu_axis, "validation sacreBLEU (greedy)"), (loss_axis, "validation loss (label-smoothed)")):
        axis.set_xlabel("training time (minutes)")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
