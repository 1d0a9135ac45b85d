"""scripts/plot_runs.py: a run's validations across its resumes, shifted by @MINUTES, and one-line refusals of a
run, offset, metric or output that is not there (a misspelt #METRIC drew an empty BLEU panel with status 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
HEADER = "step,time/train_hours,train/loss,val/loss,val/bleu\n"


def write_run(run_dir: Path) -> Path:
    (run_dir / "csv/resume_1").mkdir(parents=True)
    (run_dir / "csv/metrics.csv").write_text(HEADER + "5,0.05,4.0,,\n10,0.1,,3.5,12.5\n")
    (run_dir / "csv/resume_1/metrics.csv").write_text(HEADER + "20,0.2,,3.0,20.0\n")
    return run_dir


def test_the_validations_of_a_resumed_run_shifted_by_its_offset(tmp_path):
    plot_runs = load_script("plot_runs")
    run = write_run(tmp_path / "run")
    assert plot_runs.parse_run(f"fine-tuned={run}@30") == ("fine-tuned", run, 30.0, "val/bleu")
    assert plot_runs.curve(run, 30.0) == [(36.0, 3.5, 12.5), (42.0, 3.0, 20.0)]  # 30 + 0.1 h and 30 + 0.2 h


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{run}#val/blue", "no column 'val/blue' (it has val/bleu)"),
        ("{run}@thirty", "@thirty is not a number of minutes"),
        ("{run}/nope", "nope/csv: no such directory"),
    ],
)
def test_a_run_that_is_not_there_is_refused_in_one_line(tmp_path, capsys, spec, message):
    plot_runs = load_script("plot_runs")
    run = write_run(tmp_path / "run")
    with pytest.raises(SystemExit) as stopped:
        label, directory, offset, metric = plot_runs.parse_run("A=" + spec.format(run=run))
        plot_runs.curve(directory, offset, metric)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_runs.parse_run(str(run))
    assert "expected LABEL=DIR" in capsys.readouterr().err


def test_the_figure_is_written_and_a_bad_output_refused(tmp_path):
    run = write_run(tmp_path / "run")
    script = [sys.executable, str(ROOT / "scripts/plot_runs.py"), "--run", f"A={run}"]
    done = subprocess.run([*script, "--output", str(tmp_path / "f.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for output, message in (
        (tmp_path / "f.xyz", "expected a name ending .png, .pdf, .svg"),
        (tmp_path, "a folder; expected a file name ending .png, .pdf, .svg"),  # drew the figure, then a traceback
    ):
        refused = subprocess.run([*script, "--output", str(output)], capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stderr.strip() == f"error: --output {output}: {message}"
