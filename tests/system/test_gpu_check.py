"""``scripts/gpu_check.sh`` in its CPU check mode (``TRAINER=cpu``): the phases a lent GPU runs, at toy sizes.

A device is lent for minutes, in one prepared call; a change that breaks the script (a renamed setting, a report
that reads a metric no longer logged) would cost that call. Here it costs a failed test instead. The figures are
not checked (a CPU's), only that each phase ran and reported them."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the system tier: about 2 minutes on 2 cores


def test_every_phase_of_the_gpu_check_runs_and_keeps_its_logs(tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MT_FAULT", "WORLD_SIZE", "RANK")},
        "TRAINER": "cpu",
        "MODEL": "tiny",
        "STEPS": "50",
        "PAIRS": "3000",
        "VOCAB": "1000",
        "DECODE": "1",
        "DECODE_TIMEOUT": "120",
        "DECODE_SENTENCES": "200",
        "SWEEP_TOKENS": "2000",
        "PEERS": "1",
        "PEER_TOKENS": "2000",
        "PEER_STEPS": "5",
        "WORK": str(work),
        "LOGS": str(logs),
    }
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    output = (logs / "gpu_check.log").read_text()
    assert result.returncode == 0, output[-4000:]
    assert output.rstrip().endswith(")") and "== done, status 0" in output
    for run in ("eager", "tokens2000"):  # gpu_report's line for each training run
        assert f"train {run}: 50 steps, median " in output, output[-4000:]
    assert "profile: 10 training steps" in output and "host-device syncs a step" in output  # the profile summary
    assert "decode 200 sentences on cpu" in output
    assert output.count(" sent/s ") == 8 and "bfloat16 beam 5  32000 source tokens a batch" in output  # 2x2x2
    assert "mt / torch " in output and "mt / hf " in output  # bench_train's ratios against both peers
    with tarfile.open(logs / "logs.tgz") as archive:
        kept = set(archive.getnames())
    assert {"./eager.log", "./eager/csv/metrics.csv", "./eager/profile/summary.txt"} <= kept, sorted(kept)
    assert (logs / "trace.json.gz").stat().st_size > 0
