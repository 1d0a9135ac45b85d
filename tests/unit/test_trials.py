"""mt.trials' table from a sweep directory written by hand: the overrides common to the trials that have a
record, and a trial refused before it started (no .hydra/ record) shown as such."""

from __future__ import annotations

import json
from pathlib import Path

from mt.trials import markdown, read_trials


def write_trial(sweep: Path, job: int, overrides: list[str] | None, bleu: float | None) -> None:
    directory = sweep / str(job)
    directory.mkdir(parents=True)
    if overrides is not None:
        (directory / ".hydra").mkdir()
        (directory / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if bleu is not None:
        selection = {"metric": "val/bleu", "mode": "max", "value": bleu, "step": 100 * job}
        (directory / "selection.json").write_text(json.dumps(selection))


def test_a_trial_without_a_record_is_named_and_left_out_of_the_common_overrides(tmp_path):
    write_trial(tmp_path, 0, ["model=tiny", "optim.lr=0.001"], 30.5)
    write_trial(tmp_path, 1, ["model=tiny", "optim.lr=0.003"], 31.25)
    write_trial(tmp_path, 2, None, None)
    table = markdown(tmp_path, read_trials(tmp_path)).splitlines()
    assert "Common to all recorded trials: `model=tiny`." in table  # not "all": trial 2 may differ
    rows = [line for line in table if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 1 | `optim.lr=0.003` | 31.25 | 100 |  |",
        "| 0 | `optim.lr=0.001` | 30.50 | 0 |  |",
        "| 2 | (no record: refused before it started) | not finished |  |  |",
    ]


def test_a_failed_trial_shows_its_error_not_as_running(tmp_path):
    write_trial(tmp_path, 0, ["optim.lr=0.001"], 30.5)
    write_trial(tmp_path, 1, ["optim.lr=9"], None)
    (tmp_path / "1/error.txt").write_text("non-finite loss for 5 steps in a row (steps 3-7)\n")
    write_trial(tmp_path, 2, ["optim.lr=0.002"], None)  # still running: no error, no selection
    rows = [line for line in markdown(tmp_path, read_trials(tmp_path)).splitlines() if line[:3] in ("| 1", "| 2")]
    assert rows == [
        "| 1 | `optim.lr=9` | failed: non-finite loss for 5 steps in a row (steps 3-7) |  |  |",
        "| 2 | `optim.lr=0.002` | not finished |  |  |",
    ]


def test_trials_none_finished_or_ranked_by_different_metrics(tmp_path):
    import pytest

    from mt.errors import RunError

    write_trial(tmp_path / "running", 0, ["optim.lr=0.001"], None)
    table = markdown(tmp_path / "running", read_trials(tmp_path / "running"))
    assert "No trial has finished" in table and "| job | overrides | validation | step | test BLEU |" in table
    write_trial(tmp_path / "mixed", 0, ["optim.lr=0.001"], 30.5)
    write_trial(tmp_path / "mixed", 1, ["validation.metric=loss"], None)
    loss = {"metric": "val/loss", "mode": "min", "value": 2.5, "step": 100}
    (tmp_path / "mixed/1/selection.json").write_text(json.dumps(loss))
    with pytest.raises(RunError, match=r"different metrics \(val/bleu, val/loss\)"):
        markdown(tmp_path / "mixed", read_trials(tmp_path / "mixed"))
