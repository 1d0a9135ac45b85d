"""scripts/bench_train.py's batches on a corpus smaller than the benchmark's steps: as many as asked, none empty."""

from __future__ import annotations

import numpy as np

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
