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


def rows(sweep: Path) -> list[str]:
    return [line for line in markdown(sweep, read_trials(sweep)).splitlines() if line[:2] == "| " and line[2].isdigit()]


def test_a_relaunch_that_failed_is_failed_not_its_earlier_value(tmp_path):
    """A finished trial launched again with resume=auto keeps the earlier launch's selection.json; the new launch
    failed (its error.txt, which every launch removes at its start): the row says so, ranked below the finished."""
    write_trial(tmp_path, 0, ["optim.lr=1000000.0", "resume=auto"], 1.76)
    (tmp_path / "0/test_scores.json").write_text(json.dumps({"bleu": 0.5}))
    (tmp_path / "0/error.txt").write_text("the loss was not finite for 10 steps in a row (steps 32-41)\n")
    write_trial(tmp_path, 1, ["optim.lr=0.01", "resume=auto"], 1.5)
    assert rows(tmp_path) == [
        "| 1 | `optim.lr=0.01` | 1.50 | 100 |  |",
        "| 0 | `optim.lr=1000000.0` | failed: the loss was not finite for 10 steps in a row (steps 32-41) "
        "(an earlier launch chose 1.76 at step 0) |  |  |",
    ]


def test_an_unreadable_record_is_named_in_its_row_and_the_others_listed(tmp_path):
    write_trial(tmp_path, 0, ["optim.lr=0.001"], 30.5)
    write_trial(tmp_path, 1, ["optim.lr=0.002"], 31.0)
    (tmp_path / "1/selection.json").write_text("# Trials: a table written over it\n")
    write_trial(tmp_path, 2, ["optim.lr=0.003"], 29.0)
    (tmp_path / "2/selection.json").write_text(json.dumps({"value": 29.0}))  # no metric: not a selection record
    write_trial(tmp_path, 3, None, None)
    (tmp_path / "3/.hydra").mkdir()
    (tmp_path / "3/.hydra/overrides.yaml").write_bytes(b"- optim.lr=\xff\n")
    write_trial(tmp_path, 4, ["optim.lr=0.004"], None)  # values of the wrong type
    (tmp_path / "4/selection.json").write_text(json.dumps({"metric": "val/bleu", "mode": "max", "value": "30.1"}))
    write_trial(tmp_path, 5, ["optim.lr=0.005"], 28.0)
    (tmp_path / "5/test_scores.json").write_text(json.dumps({"bleu": "n/a"}))
    assert rows(tmp_path) == [
        "| 0 | `optim.lr=0.001` | 30.50 | 0 |  |",
        "| 1 | `optim.lr=0.002` | unreadable: 1/selection.json: JSONDecodeError |  |  |",
        "| 2 | `optim.lr=0.003` | unreadable: 2/selection.json: expected a dict with metric, mode (max or min), "
        "value (a number or null) |  |  |",
        "| 3 |  | unreadable: 3/.hydra/overrides.yaml: UnicodeDecodeError |  |  |",
        "| 4 | `optim.lr=0.004` | unreadable: 4/selection.json: expected a dict with metric, mode (max or min), "
        "value (a number or null) |  |  |",
        "| 5 | `optim.lr=0.005` | unreadable: 5/test_scores.json: expected a dict whose bleu is a number |  |  |",
    ]


def test_a_trial_that_finished_without_validating_is_not_called_unfinished(tmp_path):
    write_trial(tmp_path, 0, ["trainer.max_steps=5"], None)
    selection = {"metric": "val/bleu", "mode": "max", "value": None, "step": None}
    (tmp_path / "0/selection.json").write_text(json.dumps(selection))
    table = markdown(tmp_path, read_trials(tmp_path))
    assert "| job | overrides | val/bleu | step | test BLEU |" in table
    assert rows(tmp_path) == ["| 0 |  | finished with no val/bleu (no validation ran) |  |  |"]
