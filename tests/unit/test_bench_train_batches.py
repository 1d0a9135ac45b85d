"""scripts/bench_train.py's batches on a corpus smaller than the benchmark's steps: as many as asked, none empty."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import load_script


class _Corpus:
    """Ten pairs: source i is [4 + i] * (i + 1), its target [5 + i] * (10 - i)."""

    src_lengths = np.arange(1, 11)
    tgt_lengths = np.arange(10, 0, -1)

    def __len__(self) -> int:
        return 10

    def src(self, i: int) -> np.ndarray:
        return np.full(i + 1, 4 + i)

    def tgt(self, i: int) -> np.ndarray:
        return np.full(10 - i, 5 + i)


def test_batches_wrap_around_a_small_corpus():
    bench = load_script("bench_train")
    corpus = _Corpus()
    ours = bench.mt_batches(corpus, max_tokens=24, count=25, seed=1)  # 11 tokens a pair with EOS: 2 a batch
    assert len(ours) == 25
    seen = {int(i) for b in ours for i in b.corpus_positions}
    assert seen == set(range(10)) and all(len(b) >= 1 for b in ours)
    assert ours[0].src_ids[0, 0].item() == 4 + ours[0].corpus_positions[0].item()  # rows are the pairs they name

    theirs = bench.hf_batches(corpus, sentences=3, count=9, seed=1)  # 27 pairs: three orders of the ten
    assert len(theirs) == 9 and all(b["input_ids"].shape[0] == 3 for b in theirs)
    firsts = [int(row[0]) - 4 for b in theirs for row in b["input_ids"]]  # the pair of each row
    assert sorted(firsts[:10]) == list(range(10)) and sorted(firsts[10:20]) == list(range(10))


def test_the_peers_optimizer_is_the_one_the_module_builds():
    """The plain loop and HF got torch's per-tensor AdamW on a CPU (no weight-decay groups), mt a fused one, so the
    mt / torch ratio measured the optimizers too: now the peers get the module's own recipe."""
    from mt.training.module import TranslationModule

    bench = load_script("bench_train")
    shape = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0}
    module = TranslationModule(
        shape, {**bench.OPTIM, "weight_decay": 0.01}, {}, {"decode": "none"}, src_vocab_size=30, tgt_vocab_size=30
    )
    bench.OPTIM = {**bench.OPTIM, "weight_decay": 0.01}  # groups told apart
    theirs, _ = bench.adamw_with_schedule(module.model)
    ours = module.configure_optimizers()["optimizer"]
    for mine, peer in zip(ours.param_groups, theirs.param_groups, strict=True):
        assert [id(p) for p in mine["params"]] == [id(p) for p in peer["params"]]
        for key in ("lr", "betas", "eps", "weight_decay", "fused"):
            assert mine[key] == peer[key], key
    assert theirs.param_groups[0]["fused"] is True and theirs.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.slow  # a process that imports torch, Lightning and transformers: about 8 s
def test_counts_below_one_are_refused_in_one_line():
    """--warmup 0 timed from the machine's boot (ms/step in the millions, ratios of 1.000 that passed)."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_train.py"), "--synthetic", "10", "--warmup", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.splitlines()[-1].endswith("error: --warmup 0: expected 1 or more")


def test_each_variant_runs_first_once_every_three_rounds():
    """Alternating (mt, torch, hf) and (hf, torch, mt) left the plain loop second every round: never the first to
    meet a round's batch shapes, whose kernels the CPU prepares on first use."""
    order = [load_script("bench_train").round_order(r) for r in range(3)]
    assert order == [("mt", "torch", "hf"), ("torch", "hf", "mt"), ("hf", "mt", "torch")]
