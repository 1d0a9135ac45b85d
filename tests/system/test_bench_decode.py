"""``scripts/bench_decode.py`` end to end on a tiny checkpoint: it prints its table (it crashed at the end of every
run when the references were passed as one stream), and CTranslate2 decodes the same work as ``mt``: the same
weights and length limits give the same greedy outputs, so the same tokens per sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import toy_pairs
from tests.helpers import ROOT, fit_tiny

pytestmark = pytest.mark.slow  # the system tier: about 30 s on 2 cores


def test_the_table_prints_and_ct2_decodes_the_same_work(toy_corpus_dir, tmp_path):
    pytest.importorskip("ctranslate2")
    _, trainer = fit_tiny(toy_corpus_dir, tmp_path / "run", max_steps=40)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    # One source, 40 times: a batch's sources are then as long as each other, so CTranslate2's cap for a batch (its
    # longest source's) is mt's for each sentence, also where a 40-step model's outputs run to the cap.
    src, tgt = toy_pairs(1, seed=3)[0]
    (tmp_path / "src.de").write_text(f"{src}\n" * 40)
    (tmp_path / "ref.en").write_text(f"{tgt}\n" * 40)
    script = [sys.executable, str(ROOT / "scripts/bench_decode.py"), "--checkpoint", str(tmp_path / "model.ckpt")]
    sizes = ["--rounds", "1", "--batch", "8", "--forced-sentences", "8", "--threads", "1"]
    done = subprocess.run(
        [*script, "--source", str(tmp_path / "src.de"), "--reference", str(tmp_path / "ref.en"), *sizes],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line[:32].strip(): line[32:].split() for line in done.stdout.splitlines() if line[:3] in ("mt ", "ct2")}
    # columns: sentences/s, (min-max), tokens/s, tokens a sentence, BLEU
    assert rows["mt greedy, batch"][3] == rows["ct2 fp32 greedy"][3], done.stdout
    assert rows["mt greedy, batch"][4] == rows["ct2 fp32 greedy"][4], done.stdout  # the same outputs' BLEU
    assert "mt beam 5, batch / ct2 fp32 beam 5:" in done.stdout
    refused = subprocess.run([*script, "--source", str(tmp_path / "src.de"), *sizes], capture_output=True, text=True)
    assert refused.returncode == 2 and "--source and --reference go together" in refused.stderr.splitlines()[-1]
