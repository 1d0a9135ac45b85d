"""``python -m mt.trials dir=SWEEP_DIR [output=FILE]``: the table of a Hydra multirun's trials of ``mt.train``.

One row per trial (the numbered job directories of ``hydra.sweep.dir``): its overrides, the validation figure
that chose its best checkpoint (what a sweeper optimises, from ``selection.json``) and that checkpoint's step,
best first; the test BLEU where the trial scored one, for information only. A trial whose last launch failed is
listed as failed, with what an earlier launch chose, and a record that cannot be read as unreadable. Written as
markdown to ``DIR/trials.md`` (or ``output=``, an existing file only with ``overwrite=true``, and only an earlier
table) and printed; an Optuna sweep's own best trial (``optimization_results.yaml``) is named below the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mt.atomic import atomic_write, refuse_to_overwrite
from mt.cli import entry_point
from mt.config import TrialsConfig
from mt.errors import RunError

TITLE = "# Trials: "  # how a table starts: the one kind of file an output may replace


def read_trials(sweep_dir: Path) -> list[dict]:
    """Every trial of the sweep: job number, overrides, selection, test BLEU and the last launch's error (None
    where missing); a record that cannot be read is named in ``unreadable`` instead of failing the listing."""
    if not sweep_dir.is_dir():
        raise RunError(f"dir={sweep_dir}: no such directory")
    trials = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        trial: dict = {"job": int(job.name), "unreadable": None}
        try:
            # None: no record (a trial refused before it started, e.g. by an impossible value)
            trial["overrides"] = _record(job / ".hydra" / "overrides.yaml", _overrides)
            trial["selection"] = _record(job / "selection.json", _selection)
            test = _record(job / "test_scores.json", _test_scores)
            trial["test_bleu"] = None if test is None else test.get("bleu")
        except ValueError as error:
            trial.update(overrides=trial.get("overrides"), selection=None, test_bleu=None, unreadable=str(error))
        # the one-line error of the trial's last launch, which failed (mt.cli writes it; a launch removes it), or None
        error_file = job / "error.txt"
        trial["error"] = error_file.read_text(errors="replace").strip() if error_file.is_file() else None
        trials.append(trial)
    if not trials:
        raise RunError(f"dir={sweep_dir}: no trial directories (0/, 1/, ...): is it a multirun's hydra.sweep.dir?")
    return trials


def _trial_path(path: Path) -> str:
    """``path`` from its sweep directory: JOB/selection.json, JOB/.hydra/overrides.yaml."""
    job = next(parent for parent in path.parents if parent.name.isdigit())
    return str(path.relative_to(job.parent))


def _record(path: Path, valid: Callable[[Any], str | None]) -> Any:
    """A trial's JSON or YAML record, None where there is none; ValueError naming the file if it cannot be read or
    ``valid`` says what it should hold."""
    import yaml

    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
        content = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{_trial_path(path)}: {type(error).__name__}") from None
    expected = valid(content)
    if expected is not None:
        raise ValueError(f"{_trial_path(path)}: expected {expected}")
    return content


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _overrides(content: Any) -> str | None:
    return None if isinstance(content, list) and all(isinstance(o, str) for o in content) else "a list of overrides"


def _selection(content: Any) -> str | None:
    fits = (
        isinstance(content, dict)
        and isinstance(content.get("metric"), str)
        and content.get("mode") in ("max", "min")
        and (content.get("value") is None or _number(content["value"]))
        and (content.get("step") is None or _number(content["step"]))
    )
    return None if fits else "a dict with metric, mode (max or min), value (a number or null)"


def _test_scores(content: Any) -> str | None:
    fits = isinstance(content, dict) and (content.get("bleu") is None or _number(content["bleu"]))
    return None if fits else "a dict whose bleu is a number"


def markdown(sweep_dir: Path, trials: list[dict]) -> str:
    """The table: trials whose last launch chose a checkpoint, best first, then the others (failed, finished
    without a validation, unreadable, not finished)."""
    finished = [t for t in trials if t["selection"] and t["selection"]["value"] is not None and not t["error"]]
    chosen_by = sorted({(t["selection"]["metric"], t["selection"]["mode"]) for t in finished})
    if not chosen_by:  # the metric all the same, where trials recorded one
        chosen_by = sorted({(t["selection"]["metric"], t["selection"]["mode"]) for t in trials if t["selection"]})[:1]
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
        f"{TITLE}{sweep_dir}",
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
        figure = None if value is None else (f"{value:.2f}" if mode == "max" else f"{value:.4f}")
        if trial["unreadable"]:
            shown = f"unreadable: {trial['unreadable']}"
        elif trial["error"]:  # the last launch failed; what an earlier one chose stays on disk
            earlier = f" (an earlier launch chose {figure} at step {selection.get('step')})" if figure else ""
            shown = f"failed: {trial['error']}{earlier}"
            selection = {}
        elif figure is not None:
            shown = figure
        elif trial["selection"] is not None:
            shown = f"finished with no {selection.get('metric', 'validation')} (no validation ran)"
        else:
            shown = "not finished"
        test = "" if trial["test_bleu"] is None or selection == {} else f"{trial['test_bleu']:.2f}"
        overrides = (
            ("" if trial["unreadable"] else "(no record: refused before it started)")
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
    output = Path(config.output) if config.output else sweep_dir / "trials.md"
    if config.output:  # a name given: an existing file only with overwrite=true (the default is redone each time)
        refuse_to_overwrite(output, overwrite=config.overwrite)
    if output.is_file() and not output.read_bytes().startswith(TITLE.encode()):
        raise RunError(f"output={output}: not an earlier table of trials (it does not start {TITLE!r}); choose another")
    table = markdown(sweep_dir, read_trials(sweep_dir))
    with atomic_write(output) as handle:
        handle.write(table.encode("utf-8"))
    print(table, end="", flush=True)


if __name__ == "__main__":
    main()
