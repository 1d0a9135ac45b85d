"""Token-bucket batches: budget, coverage, determinism, sharding, collation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mt.data.batching import TokenBatchSampler, collate
from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def lengths(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(1, 60, n)
    return src, np.clip(src + rng.integers(-5, 6, n), 1, None)


def test_batches_respect_max_tokens_and_cover_every_pair_once():
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3)
    batches = list(sampler)
    for batch in batches:
        assert len(batch) * (max(max(src[batch]), max(tgt[batch])) + 1) <= 400
    assert sorted(i for batch in batches for i in batch) == list(range(len(src)))


def test_batches_are_deterministic_per_seed_and_epoch():
    src, tgt = lengths()
    a = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3)
    b = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3)
    assert list(a) == list(b)
    first_epoch = list(a)
    a.set_epoch(1)
    assert list(a) != first_epoch
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(TokenBatchSampler(src, tgt, 400, shuffle=True, seed=4)) != first_epoch


def test_unshuffled_batches_are_sorted_and_fixed():
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, 400, shuffle=False)
    batches = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == batches
    maxima = [max(tgt[b]) for b in batches]
    assert maxima == sorted(maxima)


@pytest.mark.parametrize("world", [2, 3])
def test_sharding_is_disjoint_complete_and_even(world):
    src, tgt = lengths(301)
    shards = [
        list(TokenBatchSampler(src, tgt, 300, shuffle=True, seed=1, num_replicas=world, rank=r)) for r in range(world)
    ]
    assert len({len(shard) for shard in shards}) == 1  # no rank waits for another at a collective
    all_batches = TokenBatchSampler(src, tgt, 300, shuffle=True, seed=1).all_batches()
    dealt = [tuple(b) for shard in shards for b in shard]
    assert set(dealt) == {tuple(b.tolist()) for b in all_batches}  # complete
    assert len(dealt) - len(all_batches) < world  # only the wrap-around padding repeats


@pytest.mark.parametrize("world", [1, 2])
def test_a_batch_multiple_pads_each_ranks_epoch_to_whole_windows_by_wrapping_around(world):
    src, tgt = lengths(301)
    plain = TokenBatchSampler(src, tgt, 300, shuffle=True, seed=1).all_batches()
    shards = [
        list(TokenBatchSampler(src, tgt, 300, shuffle=True, seed=1, num_replicas=world, rank=r, batch_multiple=3))
        for r in range(world)
    ]
    assert len(plain) % (3 * world) != 0  # so that padding is needed
    assert {len(shard) for shard in shards} == {-(-len(plain) // (3 * world)) * 3}  # the next multiple of 3
    dealt = [tuple(b) for shard in shards for b in shard]
    assert set(dealt) == {tuple(b.tolist()) for b in plain}  # every batch; the extra ones are repeats
    assert len(dealt) - len(plain) < 3 * world


@pytest.mark.parametrize("world,pairs", [(2, 301), (3, 301), (8, 12)])
def test_validation_sharding_counts_every_batch_exactly_once(world, pairs):
    """Every rank gets batches (even when there are fewer than ranks); the real ones cover each pair once."""
    src, tgt = lengths(pairs)
    samplers = [TokenBatchSampler(src, tgt, 300, shuffle=False, num_replicas=world, rank=r) for r in range(world)]
    shards = [list(sampler) for sampler in samplers]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) >= 1
    real = sorted(i for sampler, shard in zip(samplers, shards) for b in shard[: sampler.num_real_batches] for i in b)
    assert real == list(range(pairs))


def test_max_tokens_below_the_longest_pair_is_an_error():
    with pytest.raises(ValueError, match="max_tokens=10 is below the longest pair"):
        TokenBatchSampler(np.array([3, 20]), np.array([3, 4]), 10, shuffle=False)


def test_a_validation_pair_longer_than_max_tokens_gets_a_batch_of_its_own():
    """``oversize_alone`` (validation): each pair above max_tokens alone, the others batched as before, every pair
    once; the batches of the others stay within max_tokens."""
    src = np.array([3, 40, 5, 4, 60, 6])
    tgt = np.array([4, 30, 5, 3, 70, 6])
    sampler = TokenBatchSampler(src, tgt, 24, shuffle=False, oversize_alone=True)
    batches = [list(b) for b in sampler]
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [1] in batches and [4] in batches  # 41 and 71 tokens with EOS, above 24
    for batch in batches:
        if batch not in ([1], [4]):
            assert len(batch) * max(max(src[i], tgt[i]) + 1 for i in batch) <= 24


def test_padding_share_is_small_with_length_buckets():
    src, tgt = lengths(2000)
    bucketed = TokenBatchSampler(src, tgt, 2000, shuffle=True, seed=0).padding_share()
    assert 0.0 <= bucketed < 0.15


def test_collate_adds_bos_eos_and_pads():
    batch = collate([[5, 6], [7]], [[8], [9, 10, 11]], [4, 2])
    assert batch.src_ids.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.src_pad_mask.tolist() == [[False, False, False], [False, False, True]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]
    assert batch.corpus_positions.tolist() == [4, 2]
    assert int(batch.num_tgt_tokens) == 6
    assert batch.to("cpu").src_ids.dtype == torch.long


def consume(samplers: list[TokenBatchSampler], steps: int) -> list[tuple[int, ...]]:
    """The batches the ranks train on in ``steps`` updates (each rank's ``steps`` first), rank-interleaved
    as they stand in the epoch's order."""
    shards = [[tuple(b) for b in sampler] for sampler in samplers]
    for sampler in samplers:
        sampler.position = steps  # what ResumableLoader counts
    return [shard[step] for step in range(steps) for shard in shards]


@pytest.mark.parametrize(("before", "after", "steps"), [(2, 3, 6), (2, 4, 5), (4, 2, 3), (3, 1, 4), (2, 2, 7)])
def test_resume_on_another_number_of_ranks_goes_on_in_the_epoch_order(before, after, steps):
    src, tgt = lengths(301)

    def ranks(world):
        return [
            TokenBatchSampler(src, tgt, 300, shuffle=True, seed=1, num_replicas=world, rank=r) for r in range(world)
        ]

    old, new = ranks(before), ranks(after)
    for sampler in old:
        sampler.set_epoch(2)
    seen_before = consume(old, steps)
    order = [tuple(b.tolist()) for b in old[0].all_batches()]
    assert seen_before == order[: steps * before]
    for sampler in new:
        sampler.load_state_dict(old[0].state_dict())
        sampler.set_epoch(2)  # what Lightning does at the resumed epoch's start: the position stays
    resumed_at = steps * before // after * after  # the last multiple of the new rank count
    firsts = [list(sampler) for sampler in new]
    seen_after = [tuple(firsts[r][i]) for i in range(min(map(len, firsts))) for r in range(after)]
    assert seen_after[: len(order) - resumed_at] == order[resumed_at:]


def test_resume_with_another_seed_or_budget_is_refused_in_one_line():
    from mt.errors import DataError

    src, tgt = lengths()
    state = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3).state_dict()
    for other in (
        TokenBatchSampler(src, tgt, 400, shuffle=True, seed=4),
        TokenBatchSampler(src, tgt, 600, shuffle=True, seed=3),
    ):
        with pytest.raises(DataError, match=r"checkpoint's data order \(seed 3, \d+ batches an epoch\) differs"):
            other.load_state_dict(state)


def test_resume_from_a_checkpoint_before_epoch_batches_was_saved():
    src, tgt = lengths()
    sampler = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3)
    sampler.load_state_dict({"epoch": 1, "position": 4, "seed": 3, "batches": len(sampler)})
    assert (sampler.epoch, sampler.position) == (1, 4)


def test_padding_to_a_multiple_rounds_every_width_and_max_tokens_counts_the_rounded_widths():
    src, tgt = lengths(700, seed=5)
    sampler = TokenBatchSampler(src, tgt, 512, shuffle=True, seed=2, pad_to_multiple=8)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(src)))
    widths = set()
    for ids in batches:
        batch = collate([[5] * src[i] for i in ids], [[6] * tgt[i] for i in ids], ids, pad_to_multiple=8)
        longest_src, longest_tgt = max(src[ids]) + 1, max(tgt[ids]) + 1  # + EOS (source), + BOS/EOS (target)
        assert batch.src_ids.size(1) == -(-longest_src // 8) * 8  # the smallest multiple of 8 that holds it
        assert batch.tgt_in.size(1) == batch.tgt_out.size(1) == -(-longest_tgt // 8) * 8
        assert len(ids) * max(batch.src_ids.size(1), batch.tgt_in.size(1)) <= 512
        assert int(batch.num_tgt_tokens) == sum(tgt[ids]) + len(ids)
        widths.add(batch.tgt_in.size(1))
    assert widths <= set(range(8, 73, 8)) and len(widths) > 3
    padded = TokenBatchSampler(src, tgt, 512, shuffle=True, seed=2, pad_to_multiple=8).padding_share()
    plain = TokenBatchSampler(src, tgt, 512, shuffle=True, seed=2).padding_share()
    assert plain < padded < plain + 0.25


def test_resume_with_another_pad_to_multiple_is_refused_by_name():
    from mt.errors import DataError

    src, tgt = lengths()
    state = TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3).state_dict()
    with pytest.raises(DataError, match=r"padded to multiples of 1, this run's to 8: .*data.pad_to_multiple=1"):
        TokenBatchSampler(src, tgt, 400, shuffle=True, seed=3, pad_to_multiple=8).load_state_dict(state)


def test_pin_memory_keeps_every_tensor_and_the_host_fields():
    """``Batch.pin_memory`` is what the DataLoader calls with ``pin_memory=True`` (on CUDA runs)."""
    batch = collate([[5, 6], [7]], [[8], [9, 10, 11]], [4, 2])
    pinned = []

    def pin(t):  # records the call: pinning itself needs a CUDA host allocator
        pinned.append(t)
        return t.clone()

    for name in ("src_ids", "src_pad_mask", "tgt_in", "tgt_out"):
        tensor = getattr(batch, name)
        tensor.pin_memory = functools.partial(pin, tensor)
    moved = batch.pin_memory()
    assert len(pinned) == 4
    for name in ("src_ids", "src_pad_mask", "tgt_in", "tgt_out"):
        assert torch.equal(getattr(moved, name), getattr(batch, name))
    assert moved.corpus_positions is batch.corpus_positions
