"""The learning curve: validation BLEU and loss against training time, from the CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

from mt.atomic import atomic_write


def read_metric_rows(metrics_csv: Path, metric: str) -> list[dict[str, float]]:
    """Rows of the CSV log that hold ``metric`` (e.g. ``val/loss``), their filled fields as floats."""
    rows = []
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(metric):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def read_run_rows(csv_dir: Path, metric: str = "val/loss") -> list[dict[str, float]]:
    """The rows holding ``metric`` of a run's CSV log, ``csv_dir/metrics.csv`` and, for a resumed run,
    ``csv_dir/resume_K/metrics.csv``, in order of training time."""
    files = [csv_dir / "metrics.csv"] + sorted(
        csv_dir.glob("resume_*/metrics.csv"), key=lambda p: int(p.parent.name[7:])
    )
    return sorted(
        (row for f in files if f.is_file() for row in read_metric_rows(f, metric)),
        key=lambda r: r.get("time/train_hours", 0.0),
    )


def save_figure(fig, output: Path) -> None:
    """Write the figure in the format its name says; a kill while it is drawn leaves the previous one, whole."""
    with atomic_write(output) as handle:
        fig.savefig(handle, format=Path(output).suffix.lstrip(".") or "png")


def plot_learning_curve(csv_dir: Path, output: Path) -> bool:
    """Write a PNG of val BLEU and val loss against training minutes; ``False`` if nothing to plot.

    Reads ``csv_dir/metrics.csv`` and, for resumed runs, ``csv_dir/resume_K/metrics.csv``.
    """
    rows = read_run_rows(csv_dir)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r.get("time/train_hours", 0.0) * 60 for r in rows]
    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=110)
    loss_axis.plot(minutes, [r["val/loss"] for r in rows], color="tab:red", marker="o", label="val loss")
    loss_axis.set_xlabel("training time (minutes)")
    loss_axis.set_ylabel("validation loss (label-smoothed)", color="tab:red")
    if any("val/bleu" in r for r in rows):
        bleu_axis = loss_axis.twinx()
        points = [(m, r["val/bleu"]) for m, r in zip(minutes, rows) if "val/bleu" in r]
        bleu_axis.plot(*zip(*points), color="tab:blue", marker="s", label="val BLEU")
        bleu_axis.set_ylabel("validation sacreBLEU", color="tab:blue")
    loss_axis.grid(alpha=0.3)
    fig.suptitle("learning curve")
    fig.tight_layout()
    save_figure(fig, output)
    plt.close(fig)
    return True
