"""Search against references: a scripted decoder with hand-computed beams, greedy, teacher forcing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from mt.data.tokenizer import BOS_ID, EOS_ID
from mt.decode.search import beam_search, filter_logits, greedy_search, sample
from tests.conftest import random_batch, random_model

A, B = 4, 5  # the scripted vocabulary: PAD UNK BOS EOS A B
VOCAB = 6

# Next-token probabilities given the prefix (tokens after BOS); unlisted tokens get probability 0.
SCRIPT = {
    (): {A: 0.6, B: 0.3, EOS_ID: 0.1},
    (A,): {EOS_ID: 0.2, A: 0.1, B: 0.7},
    (B,): {EOS_ID: 0.9, A: 0.05, B: 0.05},
    (A, B): {EOS_ID: 1.0},
    (A, A): {EOS_ID: 0.5, A: 0.5},
}


class ScriptedCache:
    def __init__(self) -> None:
        self.reorders: list[list[int]] = []

    def reorder(self, row_idx):
        self.reorders.append(row_idx.tolist())

    def select_sources(self, src_idx, row_idx):
        self.reorder(row_idx)


class ScriptedDecoder:
    """log p(next | prefix) from SCRIPT, ignoring the source; unknown prefixes always end."""

    def encode(self, src_ids, src_pad_mask):
        return torch.zeros(src_ids.size(0), 1, 1)

    def decode_step(self, tgt_ids, memory, src_pad_mask, cache, *, normalize=True):
        cache = cache or ScriptedCache()
        log_probs = torch.full((tgt_ids.size(0), VOCAB), -math.inf)
        for row, prefix in enumerate(tgt_ids[:, 1:].tolist()):
            for token, p in SCRIPT.get(tuple(prefix), {EOS_ID: 1.0}).items():
                log_probs[row, token] = math.log(p)
        return log_probs, cache


def scripted_source(count: int = 1):
    src_ids = torch.full((count, 4), 7)
    return src_ids, torch.zeros_like(src_ids, dtype=torch.bool)


def test_scripted_beam_gives_hand_computed_nbest():
    hyps = beam_search(
        ScriptedDecoder(), *scripted_source(), beam=2, nbest=2, length_penalty_type="none", max_len_b=10
    )[0]
    assert [h.tokens for h in hyps] == [[A, B], [B]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.6 * 0.7 * 1.0), math.log(0.3 * 0.9)])
    assert [h.score for h in hyps] == pytest.approx([h.log_prob for h in hyps])


def test_scripted_beam_with_average_length_penalty():
    hyps = beam_search(
        ScriptedDecoder(), *scripted_source(), beam=2, nbest=2, length_penalty_alpha=1.0, length_penalty_type="average"
    )[0]
    # (A, B, EOS) has 3 tokens, (B, EOS) 2: scores are log-probabilities divided by those lengths.
    assert [h.tokens for h in hyps] == [[A, B], [B]]
    assert [h.score for h in hyps] == pytest.approx([math.log(0.42) / 3, math.log(0.27) / 2])


def test_scripted_beam_forces_eos_at_max_length():
    # At most 2 tokens including EOS: the second step may only end the hypotheses.
    hyps = beam_search(
        ScriptedDecoder(), *scripted_source(), beam=2, nbest=2, length_penalty_type="none", max_len_a=0.0, max_len_b=2
    )[0]
    assert [h.tokens for h in hyps] == [[B], [A]]
    assert [h.log_prob for h in hyps] == pytest.approx([math.log(0.3 * 0.9), math.log(0.6 * 0.2)])


def test_scripted_greedy_follows_the_argmax():
    (hyp,) = greedy_search(ScriptedDecoder(), *scripted_source())
    assert hyp.tokens == [A, B]
    assert hyp.log_prob == pytest.approx(math.log(0.42))


def test_scripted_batch_of_sources_each_gets_its_nbest():
    results = beam_search(ScriptedDecoder(), *scripted_source(3), beam=2, nbest=2, length_penalty_type="none")
    assert [[h.tokens for h in hyps] for hyps in results] == [[[A, B], [B]]] * 3
    assert [[h.log_prob for h in hyps] for hyps in results] == [pytest.approx([math.log(0.42), math.log(0.27)])] * 3


@pytest.mark.parametrize("alpha,kind", [(0.0, "none"), (1.0, "gnmt"), (0.6, "average")])
def test_beam_one_equals_greedy_in_tokens_and_scores(alpha, kind):
    model = random_model(21, vocab=30)
    src_ids, src_pad_mask = random_batch(22, [3, 8, 5, 1], vocab=30)
    options = dict(max_len_a=1.5, max_len_b=4, length_penalty_alpha=alpha, length_penalty_type=kind)
    greedy = greedy_search(model, src_ids, src_pad_mask, **options)
    beam = beam_search(model, src_ids, src_pad_mask, beam=1, **options)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.score for h in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-5)
    assert [h.log_prob for h in greedy] == pytest.approx([b[0].log_prob for b in beam], abs=1e-5)


@pytest.mark.parametrize("alpha,kind", [(0.0, "none"), (1.0, "gnmt")])
def test_beam_scores_equal_teacher_forced_log_probabilities(alpha, kind):
    model = random_model(23, vocab=30)
    src_ids, src_pad_mask = random_batch(24, [4, 7], vocab=30)
    results = beam_search(
        model,
        src_ids,
        src_pad_mask,
        beam=4,
        nbest=4,
        length_penalty_alpha=alpha,
        length_penalty_type=kind,
        max_len_a=1.0,
        max_len_b=5,
    )
    assert len(results) == 2  # one n-best list per source
    for row, nbest in enumerate(results):
        assert len(nbest) == 4
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        for hyp in nbest:
            tgt = torch.tensor([[BOS_ID, *hyp.tokens, EOS_ID]])
            log_probs = torch.log_softmax(model(src_ids[row : row + 1], src_pad_mask[row : row + 1], tgt[:, :-1]), -1)
            forced = log_probs[0].gather(-1, tgt[0, 1:, None]).sum().item()
            assert hyp.log_prob == pytest.approx(forced, abs=1e-4)
            length = len(hyp.tokens) + 1  # EOS counts
            by_hand = ((5 + length) / 6) ** alpha if kind == "gnmt" else 1.0  # GNMT (Wu et al. 2016), or none
            assert hyp.score == pytest.approx(forced / by_hand, abs=1e-4)


def test_padded_batch_decodes_like_each_sentence_alone():
    model = random_model(25, vocab=30)
    lengths = [6, 2, 9]
    src_ids, src_pad_mask = random_batch(26, lengths, vocab=30)
    batched = beam_search(model, src_ids, src_pad_mask, beam=3, nbest=3)
    for row, length in enumerate(lengths):
        alone = src_ids[row : row + 1, : length + 1]
        (single,) = beam_search(model, alone, alone == 0, beam=3, nbest=3)
        assert [h.tokens for h in single] == [h.tokens for h in batched[row]]
        assert_close(torch.tensor([h.score for h in single]), torch.tensor([h.score for h in batched[row]]))


def test_outputs_respect_max_length():
    model = random_model(27, vocab=30)
    src_ids, src_pad_mask = random_batch(28, [2, 5], vocab=30)
    results = beam_search(model, src_ids, src_pad_mask, beam=3, nbest=3, max_len_a=1.0, max_len_b=1)
    assert [len(nbest) for nbest in results] == [3, 3]
    for nbest, length in zip(results, [4, 7]):  # |src| counts EOS
        for hyp in nbest:
            assert len(hyp.tokens) + 1 <= length
    greedy = greedy_search(model, src_ids, src_pad_mask, max_len_a=0.0, max_len_b=2)
    assert len(greedy) == 2
    for hyp, length in zip(greedy, [2, 2]):
        assert len(hyp.tokens) + 1 <= length


def test_a_huge_max_len_a_leaves_only_the_ceiling():
    """``floor(a * |src| + b)`` for an ``a`` past int64 once overflowed to 1: every output was EOS alone."""
    from mt.decode.search import max_output_lengths

    pad_mask = torch.tensor([[False, False, True], [False, False, False]])
    assert max_output_lengths(pad_mask, 1e30, 10, 512).tolist() == [512, 512]
    assert max_output_lengths(pad_mask, 1e30, 10).tolist() == [2**31, 2**31]
    assert max_output_lengths(pad_mask, 1.5, 2, 512).tolist() == [5, 6]  # floor(1.5 * 2 + 2), floor(1.5 * 3 + 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"length_penalty": math.nan}, "search.length_penalty=nan: expected a finite number"),
        ({"max_len_a": math.inf}, "search.max_len_a=inf: expected a finite number >= 0"),
        ({"max_len_a": math.nan}, "search.max_len_a=nan: expected a finite number >= 0"),
        ({"sampling": True, "temperature": math.inf}, "temperature=inf: expected a finite number >= 1e-6"),
        ({"sampling": True, "temperature": 1e-45}, "temperature=1e-45: expected a finite number >= 1e-6"),
        ({"sampling": True, "seed": 2**64}, "search.seed=18446744073709551616: expected 0 <= seed < 2\\*\\*32"),
        ({"seed": -1}, "search.seed=-1: expected 0 <= seed"),
    ],
)
def test_search_values_that_cannot_decode_are_refused(options, message):
    """NaN length penalties sorted n-best lists at random (and wrote NaN into JSON), an infinite temperature
    or a seed past 64 bits ended in tracebacks mid-decode."""
    from mt.config import SearchConfig
    from mt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        SearchConfig(**options)


def test_nbest_larger_than_beam_is_refused():
    with pytest.raises(ValueError, match="nbest"):
        beam_search(ScriptedDecoder(), *scripted_source(), beam=2, nbest=3)


def test_sampling_with_top_k_one_or_a_tiny_nucleus_equals_greedy():
    model = random_model(29, vocab=30)
    src_ids, src_pad_mask = random_batch(30, [3, 6, 2], vocab=30)
    greedy = greedy_search(model, src_ids, src_pad_mask)
    for options in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = sample(model, src_ids, src_pad_mask, generator=torch.Generator().manual_seed(0), **options)
        assert [h.tokens for h in sampled] == [h.tokens for h in greedy]
        assert [h.log_prob for h in sampled] == pytest.approx([h.log_prob for h in greedy], abs=1e-5)


def test_sampling_is_reproducible_from_its_seed():
    model = random_model(31, vocab=30)
    src_ids, src_pad_mask = random_batch(32, [5, 5, 5, 5], vocab=30)

    def draw(seed):
        hyps = sample(model, src_ids, src_pad_mask, temperature=2.0, generator=torch.Generator().manual_seed(seed))
        return [h.tokens for h in hyps]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_sampling_batches_of_one_call_draw_different_numbers_and_the_call_is_reproducible():
    """Batches of one decoding run continue one random stream: the same sentence in the same row of
    two batches gets its own draw (a stream seeded again at each batch would repeat it)."""
    import mt.decode.translator
    from mt.config import SearchConfig

    model = random_model(33, vocab=30)
    sources = [[7, 8, 9, 10]] * 12  # 5 tokens with EOS: batches of 2 sources at max_tokens=10
    search = SearchConfig(sampling=True, temperature=3.0, max_tokens=10, max_len_a=0.0, max_len_b=8, seed=5)

    def draw():
        return [nbest[0].tokens for nbest in mt.decode.translator.decode_ids(model, sources, search)]

    first = draw()
    assert draw() == first
    assert len({tuple(tokens) for tokens in first[0::2]}) > 1  # row 0 of each of the 6 batches
    # a run continued across calls (mt.translate's chunks) goes on drawing, rather than starting again
    generator = mt.decode.translator.sampling_generator(search, "cpu")
    halves = [mt.decode.translator.decode_ids(model, sources[:6], search, generator=generator) for _ in range(2)]
    assert [nbest[0].tokens for half in halves for nbest in half] == first


def test_filter_logits_keeps_top_k_and_the_nucleus():
    log_probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_logits(log_probs, top_k=2)).tolist() == [[True, True, False, False]]
    # 0.5 + 0.3 reaches 0.8: the nucleus for top_p=0.8 is the first two tokens, for 0.81 the first three.
    assert torch.isfinite(filter_logits(log_probs, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(log_probs, top_p=0.81)).tolist() == [[True, True, True, False]]
    shuffled = log_probs[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True]]


class EosFirst:
    """A decoder that prefers EOS above all (so without ``min_len`` every output is empty)."""

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, src_ids, src_pad_mask):
        return self.model.encode(src_ids, src_pad_mask)

    def decode_step(self, tgt_ids, memory, src_pad_mask, cache=None, *, normalize=True):
        log_probs, cache = self.model.decode_step(tgt_ids, memory, src_pad_mask, cache)
        log_probs[:, EOS_ID] += 50.0
        return torch.log_softmax(log_probs, dim=-1), cache


@pytest.mark.parametrize("beam", [1, 3])
def test_min_len_delays_eos_and_max_len_still_wins(beam):
    model = EosFirst(random_model(31, vocab=30))
    src_ids, src_pad_mask = random_batch(32, [3, 5, 4], vocab=30)

    def decode(**options):
        if beam == 1:
            return greedy_search(model, src_ids, src_pad_mask, max_len_a=0.0, **options)
        return [h[0] for h in beam_search(model, src_ids, src_pad_mask, beam=beam, max_len_a=0.0, **options)]

    assert [h.tokens for h in decode(max_len_b=12)] == [[], [], []]
    assert [len(h.tokens) for h in decode(min_len=6, max_len_b=12)] == [6, 6, 6]  # EOS as soon as allowed
    assert [len(h.tokens) for h in decode(min_len=20, max_len_b=9)] == [8, 8, 8]  # the maximum (EOS included) wins


class EosLeaning(EosFirst):
    """A decoder whose outputs end after a few tokens, at lengths that differ between sources."""

    def decode_step(self, tgt_ids, memory, src_pad_mask, cache=None, *, normalize=True):
        log_probs, cache = self.model.decode_step(tgt_ids, memory, src_pad_mask, cache)
        log_probs[:, EOS_ID] += 0.8 * tgt_ids.size(1)
        return torch.log_softmax(log_probs, dim=-1), cache


def test_greedy_batch_whose_outputs_end_apart_decodes_like_each_sentence_alone():
    model = EosLeaning(random_model(33, vocab=30))
    lengths = [6, 2, 9, 4, 7]
    src_ids, src_pad_mask = random_batch(34, lengths, vocab=30)
    batched = greedy_search(model, src_ids, src_pad_mask, max_len_a=2.0, max_len_b=10)
    assert len({len(h.tokens) for h in batched}) > 1  # outputs left the batch at different steps
    for row, length in enumerate(lengths):
        alone = src_ids[row : row + 1, : length + 1]
        (single,) = greedy_search(model, alone, alone == 0, max_len_a=2.0, max_len_b=10)
        assert single.tokens == batched[row].tokens
        assert single.log_prob == pytest.approx(batched[row].log_prob, abs=1e-5)


@pytest.mark.parametrize("beam", [4, 7])  # 2K above the vocabulary of 6; K above it
def test_beam_wider_than_the_vocabulary_still_finds_the_hand_computed_best(beam):
    hyps = beam_search(ScriptedDecoder(), *scripted_source(2), beam=beam, nbest=2, length_penalty_type="none")
    assert len(hyps) == 2  # one n-best list per source
    for nbest in hyps:
        assert [h.tokens for h in nbest] == [[A, B], [B]]
        assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.42), math.log(0.27)])


@pytest.mark.parametrize(
    ("sources", "width", "vocab", "k"),
    [(3, 5, 8000, 10), (4, 1, 8000, 10), (2, 4, 4000, 8), (5, 5, 640, 10), (3, 2, 97, 4), (2, 2, 64, 4)],
)
def test_top_sums_equals_topk_over_all_the_sums(sources, width, vocab, k):
    """The block-pruned top-k (token blocks of 64, 50 ...; plain topk for a vocabulary no block divides,
    97, or too few blocks, 2 x 1) gives topk's values and indices over the flattened sums, with masked
    tokens, a row where only EOS is allowed and a hypothesis already impossible."""
    from mt.decode.search import _top_sums

    generator = torch.Generator().manual_seed(vocab + width)
    log_probs = torch.randn(sources * width, vocab, generator=generator).log_softmax(dim=-1)
    log_probs[:, :3] = -math.inf  # PAD, UNK, BOS masked
    log_probs[0, :] = -math.inf  # a row forced to end
    log_probs[0, EOS_ID] = -0.5
    scores = torch.randn(sources, width, generator=generator) * 3
    scores[-1, -1] = -math.inf
    values, flat = _top_sums(scores, log_probs, k)
    expected = (scores.reshape(-1, 1) + log_probs).view(sources, width * vocab).topk(k, dim=-1)
    assert torch.equal(values, expected.values)
    finite = torch.isfinite(values)  # -inf candidates tie: any of them may be returned
    assert torch.equal(flat[finite], expected.indices[finite])


def test_beam_search_over_token_blocks_finds_what_plain_top_k_finds(monkeypatch):
    """A vocabulary of 320 takes the block-pruned top-k (5 blocks of 64 per row); with block sizes
    switched off the same search takes topk over all sums: same n-best, same scores."""
    import mt.decode.search

    model = random_model(3, vocab=320)
    src_ids, src_pad_mask = random_batch(3, [5, 9, 2, 7], vocab=320)
    block_maxima = []  # Tensor.amax runs in the block path only (the model never calls it)
    amax = torch.Tensor.amax
    monkeypatch.setattr(torch.Tensor, "amax", lambda self, *a, **k: block_maxima.append(1) or amax(self, *a, **k))
    blocked = beam_search(model, src_ids, src_pad_mask, beam=5, nbest=5, max_len_a=1.5, max_len_b=4)
    assert block_maxima, "the block path did not run"
    taken = len(block_maxima)
    monkeypatch.setattr(mt.decode.search, "_BLOCK_SIZES", ())
    plain = beam_search(model, src_ids, src_pad_mask, beam=5, nbest=5, max_len_a=1.5, max_len_b=4)
    assert len(block_maxima) == taken, "the plain path ran blocks"
    assert [[h.tokens for h in nbest] for nbest in blocked] == [[h.tokens for h in nbest] for nbest in plain]
    assert [[h.score for h in nbest] for nbest in blocked] == [[h.score for h in nbest] for nbest in plain]


@pytest.mark.parametrize("beam, sampling", [(1, False), (2, False), (4, False), (4, True)])
def test_decode_budget_counts_each_source_as_beam_rows(monkeypatch, beam, sampling):
    """``search.max_tokens`` bounds padded source tokens x rows a source: ``beam`` rows in beam search,
    one in sampling (whatever ``beam`` says); every source is decoded once, results in input order."""
    import mt.decode.translator
    from mt.config import SearchConfig

    batch_rows: list[int] = []
    search_batch = mt.decode.translator.search_batch
    rows_per_source = 1 if sampling else beam

    def recording(model, src_ids, src_pad_mask, search, generator=None, **options):
        batch_rows.append(src_ids.size(0) * rows_per_source)
        assert src_ids.size(1) * src_ids.size(0) * rows_per_source <= 80
        return search_batch(model, src_ids, src_pad_mask, search, generator, **options)

    monkeypatch.setattr(mt.decode.translator, "search_batch", recording)
    model = random_model()
    generator = torch.Generator().manual_seed(0)
    sources = [torch.randint(4, 40, (9,), generator=generator).tolist() for _ in range(8)]  # 10 tokens with EOS
    search = SearchConfig(
        beam=beam, sampling=sampling, top_k=1, max_tokens=80, max_len_a=0.0, max_len_b=4, parallel_batches=1
    )
    hyps = mt.decode.translator.decode_ids(model, sources, search)
    # 80 // rows tokens: 8 // rows sources of 10 tokens, so 8 rows a batch
    assert batch_rows == [8] * rows_per_source
    alone = [mt.decode.translator.decode_ids(model, [source], search)[0] for source in sources]
    assert [[h.tokens for h in nbest] for nbest in hyps] == [[h.tokens for h in nbest] for nbest in alone]


@pytest.fixture
def restore_threads():
    """torch's thread count as it was before the test (set_num_threads is process-wide)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("beam", [1, 3])
def test_parallel_batches_equal_one_batch_at_a_time(monkeypatch, restore_threads, beam):
    """Batches decoded at once on threads of one core give the same outputs as batches decoded in turn,
    under the caller's autocast too; max_tokens bounds the batches in flight; torch's threads come back."""
    import mt.decode.translator
    from mt.config import SearchConfig

    model = random_model(35, vocab=40)
    generator = torch.Generator().manual_seed(1)
    sources = [torch.randint(4, 40, (int(n),), generator=generator).tolist() for n in torch.randint(2, 12, (30,))]
    search = SearchConfig(beam=beam, nbest=beam, max_tokens=120, max_len_a=1.0, max_len_b=3)
    torch.set_num_threads(2)
    batches: list[tuple[int, int]] = []  # padded source tokens, torch threads
    search_batch = mt.decode.translator.search_batch

    def recording(model, src_ids, src_pad_mask, search, generator=None, **options):
        batches.append((src_ids.numel(), torch.get_num_threads()))
        return search_batch(model, src_ids, src_pad_mask, search, generator, **options)

    monkeypatch.setattr(mt.decode.translator, "search_batch", recording)

    def decode(workers: int, bf16: bool = False):
        parallel = dataclasses.replace(search, parallel_batches=workers)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            nbests = mt.decode.translator.decode_ids(model, sources, parallel)
        return [[h.tokens for h in nbest] for nbest in nbests], [h.score for nbest in nbests for h in nbest]

    in_turn, in_turn_scores = decode(1)
    assert {threads for _, threads in batches} == {2}
    batches.clear()
    at_once, at_once_scores = decode(3)  # other batches (a third of the budget): the same up to rounding
    assert at_once == in_turn and at_once_scores == pytest.approx(in_turn_scores, abs=1e-4)
    assert len(batches) > 3 and {threads for _, threads in batches} == {1}
    assert max(tokens for tokens, _ in batches) <= max(120 // (3 * beam), 12)  # a third of the budget each
    assert torch.get_num_threads() == 2
    bf16_at_once, bf16_scores = decode(2, bf16=True)
    assert bf16_at_once == decode(1, bf16=True)[0]
    assert bf16_scores != pytest.approx(in_turn_scores, abs=1e-4)  # the workers decoded in bf16 too


@pytest.mark.parametrize("sampling, ensemble", [(False, False), (True, False), (False, True), (True, True)])
def test_unscored_search_gives_the_scored_outputs(sampling, ensemble):
    """``return_scores=False`` skips the log-softmax of each step, not a choice: the same outputs (and,
    sampling, the same draws from the same seed), with scores ``None``; an ensemble's too."""
    from mt.model.ensemble import Ensemble

    model = (
        Ensemble([random_model(37, vocab=30), random_model(39, vocab=30)]) if ensemble else random_model(37, vocab=30)
    )
    src_ids, src_pad_mask = random_batch(38, [3, 8, 5, 1, 6], vocab=30)
    options = dict(max_len_a=1.5, max_len_b=4, min_len=2)

    def decode(return_scores: bool):
        if sampling:
            generator = torch.Generator().manual_seed(5)
            return sample(
                model,
                src_ids,
                src_pad_mask,
                top_k=12,
                top_p=0.9,
                temperature=1.3,
                generator=generator,
                return_scores=return_scores,
                **options,
            )
        return greedy_search(model, src_ids, src_pad_mask, return_scores=return_scores, **options)

    scored, unscored = decode(True), decode(False)
    assert [h.tokens for h in unscored] == [h.tokens for h in scored]
    assert all(h.score is None and h.log_prob is None for h in unscored)
    assert all(isinstance(h.score, float) for h in scored)


def brute_force_outputs(model, src_ids, src_pad_mask, *, vocab: int, max_len: int) -> list[tuple[list[int], float]]:
    """Every output a search may give (tokens other than PAD/BOS, EOS last, at most ``max_len`` tokens), each
    with its log-probability from one teacher-forced forward pass (no cache, no search code), best first."""
    import itertools

    body_tokens = [t for t in range(vocab) if t not in (0, BOS_ID, EOS_ID)]  # PAD is 0
    outputs = [[*body, EOS_ID] for length in range(max_len) for body in itertools.product(body_tokens, repeat=length)]
    scored = []
    with torch.no_grad():
        for output in outputs:
            tgt_in = torch.tensor([[BOS_ID, *output[:-1]]])
            log_probs = model(src_ids, src_pad_mask, tgt_in).log_softmax(-1)[0]
            scored.append((output, sum(log_probs[i, token].item() for i, token in enumerate(output))))
    return sorted(scored, key=lambda item: -item[1])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_beam_wide_enough_returns_the_brute_force_ranking_of_every_output(alpha):
    """On a small real model (6 tokens, outputs of at most 4), a beam wider than every set of candidates
    keeps all of them: its n-best list is the exhaustive ranking, by log-probability, or with the GNMT
    length penalty ((5 + length) / 6) ** alpha computed here by hand."""
    model = random_model(3, vocab=6)
    src_ids = torch.tensor([[4, 5, 4, EOS_ID]])
    src_pad_mask = src_ids == 0
    everything = brute_force_outputs(model, src_ids, src_pad_mask, vocab=6, max_len=4)
    assert len(everything) == 1 + 3 + 9 + 27

    def gnmt(output: list[int], log_prob: float) -> float:
        return log_prob / ((5 + len(output)) / 6) ** alpha

    expected = sorted(everything, key=lambda item: -gnmt(*item))[:10]
    (nbest,) = beam_search(
        model,
        src_ids,
        src_pad_mask,
        beam=128,
        nbest=10,
        max_len_a=0.0,
        max_len_b=4,
        length_penalty_alpha=alpha,
        length_penalty_type="gnmt",
    )
    assert [hyp.tokens for hyp in nbest] == [output[:-1] for output, _ in expected]  # tokens leave out EOS
    assert_close(torch.tensor([hyp.score for hyp in nbest]), torch.tensor([gnmt(*item) for item in expected]))
    (greedy,) = greedy_search(model, src_ids, src_pad_mask, max_len_a=0.0, max_len_b=4)
    assert greedy.tokens == greedy_by_hand(model, src_ids, max_len=4)


def greedy_by_hand(model, src_ids, *, max_len: int) -> list[int]:
    """The most probable allowed token at each step, from full (uncached) forward passes; EOS at the limit."""
    prefix, output = [BOS_ID], []
    with torch.no_grad():
        while not output or output[-1] != EOS_ID:
            log_probs = model(src_ids, src_ids == 0, torch.tensor([prefix]))[0, -1].log_softmax(-1)
            log_probs[[0, BOS_ID]] = -torch.inf
            output.append(EOS_ID if len(output) == max_len - 1 else int(log_probs.argmax()))
            prefix.append(output[-1])
    return output[:-1]  # as hypotheses hold them: without EOS
