"""``python -m mt.trials dir=SWEEP_DIR [output=FILE]``: the table of a Hydra multirun's trials of ``mt.train``.

One row per trial (the numbered job directories of ``hydra.sweep.dir``): its overrides, the validation figure
that chose its best checkpoint (what a sweeper optimises, from ``selection.json``) and that checkpoint's step,
best first; the test BLEU where the trial scored one, for information only. Written as markdown to
``DIR/trials.md`` (or ``output=``) and printed; an Optuna sweep's own best trial
(``optimization_results.yaml``) is named below the table.
"""

from __future__ import annotations

import json
from pathlib import Path

from mt.atomic import atomic_write
from mt.cli import entry_point
from mt.config import TrialsConfig
from mt.errors import RunError


def read_trials(sweep_dir: Path) -> list[dict]:
    """Every trial of the sweep: job number, overrides, selection and test BLEU (None where missing)."""
    import yaml

    if not sweep_dir.is_dir():
        raise RunError(f"dir={sweep_dir}: no such directory")
    trials = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        selection_file, test_file = job / "selection.json", job / "test_scores.json"
        trials.append(
            {
                "job": int(job.name),
                # None: no record (a trial refused before it started, e.g. by an impossible value)
                "overrides": yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None,
                "selection": json.loads(selection_file.read_text()) if selection_file.is_file() else None,
                "test_bleu": json.loads(test_file.read_text()).get("bleu") if test_file.is_file() else None,
                # the one-line error of a trial that failed (mt.cli writes it), else None
                "error": (job / "error.txt").read_text().strip() if (job / "error.txt").is_file() else None,
            }
        )
    if not trials:
        raise RunError(f"dir={sweep_dir}: no trial directories (0/, 1/, ...): is it a multirun's hydra.sweep.dir?")
    return trials


def markdown(sweep_dir: Path, trials: list[dict]) -> str:
    finished = [t for t in trials if t["selection"] and t["selection"]["value"] is not None]
    chosen_by = sorted({(t["selection"]["metric"], t["selection"]["mode"]) for t in finished})
    if len(chosen_by) > 1:  # one column cannot rank them
        raise RunError(
            f"dir={sweep_dir}: its trials chose their checkpoints by different metrics "
            f"({', '.join(metric for metric, _ in chosen_by)}); list the trials of one metric at a time"
        )
    metric, mode = chosen_by[0] if chosen_by else ("validation", "max")
    finished.sort(key=lambda t: t["selection"]["value"], reverse=mode == "max")
    unfinished = [t for t in trials if t not in finished]
    recorded = [t for t in trials if t["overrides"] is not None]
    common = set.intersection(*(set(t["overrides"]) for t in recorded)) if recorded else set()
    shared = [o for o in recorded[0]["overrides"] if o in common] if recorded else []  # in the order given
    lines = [
        f"# Trials: {sweep_dir}",
        "",
        (
            f"Best first by {metric} ({mode}), the validation figure that chose each trial's best checkpoint. "
            "Test BLEU is shown for information; it chose nothing."
            if finished
            else "No trial has finished: none has chosen a best checkpoint yet."
        ),
        "",
        f"Common to all {'recorded ' if len(recorded) < len(trials) else ''}trials: "
        f"{' '.join(f'`{o}`' for o in shared) or 'nothing'}.",
        "",
        f"| job | overrides | {metric} | step | test BLEU |",
        "|---|---|---|---|---|",
    ]
    for trial in finished + unfinished:
        selection = trial["selection"] or {}
        value = selection.get("value")
        if value is not None:
            shown = f"{value:.2f}" if mode == "max" else f"{value:.4f}"
        else:
            shown = f"failed: {trial['error']}" if trial.get("error") else "not finished"
        test = "" if trial["test_bleu"] is None else f"{trial['test_bleu']:.2f}"
        overrides = (
            "(no record: refused before it started)"
            if trial["overrides"] is None
            else " ".join(f"`{o}`" for o in trial["overrides"] if o not in common)
        )
        step = "" if selection.get("step") is None else selection["step"]
        lines.append(f"| {trial['job']} | {overrides} | {shown} | {step} | {test} |")
    optuna = sweep_dir / "optimization_results.yaml"
    if optuna.is_file():
        import yaml

        results = yaml.safe_load(optuna.read_text())
        lines += ["", f"Optuna's best: {results.get('best_value')} with `{results.get('best_params')}`."]
    return "\n".join(lines) + "\n"


@entry_point("trials", TrialsConfig)
def main(config: TrialsConfig) -> None:
    sweep_dir = Path(config.dir)
    table = markdown(sweep_dir, read_trials(sweep_dir))
    output = Path(config.output) if config.output else sweep_dir / "trials.md"
    with atomic_write(output) as handle:
        handle.write(table.encode("utf-8"))
    print(table, end="", flush=True)


if __name__ == "__main__":
    main()
