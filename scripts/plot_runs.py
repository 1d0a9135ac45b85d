"""Validation BLEU and loss of several runs against training time, on one figure.

Each ``--run LABEL=DIR[@MINUTES][#METRIC]`` is a run directory; ``@MINUTES`` shifts its clock (a fine-tuning run
that started from a 30-minute checkpoint: ``@30``); ``#METRIC`` plots another BLEU than ``val/bleu``, such as one
direction of a multilingual run (``#val/bleu/de-en``). Reads ``DIR/csv/metrics.csv`` (and ``resume_K/`` of resumed
runs). A run, offset or metric that is not there is refused in one line, before anything is drawn.

    python scripts/plot_runs.py --output docs/finetune_curve.png \\
        --run "resumed=outputs/demo/resumed" --run "init_from, fresh schedule=outputs/demo/finetuned@30"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt.training.plots import read_run_rows, save_figure  # noqa: E402

FORMATS = ("png", "pdf", "svg")


def refuse(message: str) -> None:
    """Stop with ``error: message`` and status 2, as the other scripts' refusals."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_run(spec: str) -> tuple[str, Path, float, str]:
    """``LABEL=DIR[@MINUTES][#METRIC]`` as (label, directory, offset in minutes, metric)."""
    label, equals, rest = spec.partition("=")
    if not equals or not label:
        refuse(f"--run {spec!r}: expected LABEL=DIR[@MINUTES][#METRIC]")
    rest, _, metric = rest.partition("#")
    directory, _, offset = rest.partition("@")
    try:
        minutes = float(offset or 0)
    except ValueError:
        refuse(f"--run {spec!r}: @{offset} is not a number of minutes")
    if not (Path(directory) / "csv").is_dir():
        refuse(f"--run {spec!r}: {directory}/csv: no such directory (is {directory!r} a run directory?)")
    return label, Path(directory), minutes, metric or "val/bleu"


def curve(run_dir: Path, offset: float, metric: str = "val/bleu") -> list[tuple[float, float, float | None]]:
    """(minutes, validation loss, ``metric`` or None) of each validation of the run."""
    rows = read_run_rows(run_dir / "csv")
    if not rows:
        refuse(f"{run_dir / 'csv'}: no validation rows (val/loss) to plot")
    if not any(metric in row for row in rows):
        found = sorted({key for row in rows for key in row if key.startswith("val/bleu")})
        refuse(f"{run_dir / 'csv'}: no column {metric!r} (it has {', '.join(found) or 'no val/bleu'})")
    return [(offset + r.get("time/train_hours", 0.0) * 60, r["val/loss"], r.get(metric)) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL=DIR[@MINUTES][#METRIC]")
    parser.add_argument("--output", required=True, help=f"the figure: .{', .'.join(FORMATS)}")
    parser.add_argument("--title", default="validation BLEU and loss against training time")
    args = parser.parse_args()
    output = Path(args.output)
    if output.is_dir():
        refuse(f"--output {output}: a folder; expected a file name ending .{', .'.join(FORMATS)}")
    if output.suffix.lstrip(".") not in FORMATS:
        refuse(f"--output {output}: expected a name ending .{', .'.join(FORMATS)}")
    if not output.parent.is_dir():
        refuse(f"--output {output}: {output.parent} is not a folder")
    runs = [(label, curve(directory, offset, metric)) for label, directory, offset, metric in map(parse_run, args.run)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for label, points in runs:
        minutes = [p[0] for p in points]
        loss_axis.plot(minutes, [p[1] for p in points], marker="o", label=label)
        bleu = [(m, p[2]) for m, p in zip(minutes, points) if p[2] is not None]
        bleu_axis.plot(*zip(*bleu), marker="s", label=label)
    for axis, name in ((bleu_axis, "validation sacreBLEU"), (loss_axis, "validation loss (label-smoothed)")):
        axis.set_xlabel("training time (minutes)")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    save_figure(fig, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
