"""Several corpora: resolving data.corpora, the pairs each epoch draws, the mixed token batches and their resume."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from mt.config import CorpusConfig, DataConfig
from mt.data import mixture
from mt.data.batching import MixtureBatchSampler
from mt.data.mixture import corpora, direction_corpus, draw_counts, epoch_draw, source_prefix, symbols
from mt.data.tokenizer import EOS_ID, SPECIAL_PIECES, train_tokenizer
from mt.errors import ConfigError, DataError
from tests.conftest import toy_pairs


def data(*entries: dict, **options) -> DataConfig:
    return DataConfig(name="mix", path="/data", corpora=[CorpusConfig(**entry) for entry in entries], **options)


# -- resolving data.corpora -------------------------------------------------------------------------------------


def test_corpora_inherit_what_they_do_not_set_and_are_named_by_direction():
    found = corpora(
        data(
            {"src_lang": "de", "tgt_lang": "en"},
            {"src_lang": "en", "tgt_lang": "de"},
            {"path": "/bt", "tag": "<BT>", "valid": False},  # de-en again: numbered
            lang_tokens=True,
        )
    )
    assert [c.name for c in found] == ["de-en.1", "en-de", "de-en.2"]
    assert [c.data.path for c in found] == ["/data", "/data", "/bt"]
    assert found[1].data.src_lang == "en" and found[1].data.tgt_lang == "de"
    assert all(not c.data.corpora and not c.data.lang_tokens for c in found)  # each is a corpus alone
    assert found[0].data.name == "mix.de-en.1"
    cfg = data(
        {"src_lang": "de"},
        {"src_lang": "en", "tgt_lang": "de"},
        {"path": "/bt", "tag": "<BT>", "valid": False},
        lang_tokens=True,
    )
    assert symbols(cfg) == ["<2de>", "<2en>", "<BT>"]
    bt = corpora(cfg)[2]
    assert source_prefix(cfg, bt, "train") == ["<2en>", "<BT>"]
    assert source_prefix(cfg, bt, "valid") == ["<2en>"]  # tags are for training only


def test_a_run_without_corpora_is_its_one_corpus():
    cfg = DataConfig(name="multi30k", path="/data")
    (only,) = corpora(cfg)
    assert only.name == "multi30k" and only.data == cfg and symbols(cfg) == []


@pytest.mark.parametrize(
    "entries,options,message",
    [
        (
            ({"name": "a"}, {"name": "a", "src_lang": "fr"}),
            {},
            "the name 'a' names data.corpora[0] and data.corpora[1];",
        ),
        (  # the name given once, and the direction's default name of another
            ({"name": "de-en"}, {"path": "/bt", "valid": False}),
            {},
            "the name 'de-en' names data.corpora[0] and data.corpora[1] (unnamed: its direction); give each",
        ),
        (({}, {"path": "/other"}), {}, "2 corpora validate direction de-en"),
        (({"valid": False},), {}, "every corpus has valid: false"),
        (({}, {"src_lang": "en", "tgt_lang": "de"}), {}, "translate into de, en: set data.lang_tokens=true"),
        (({"src_lang": "en", "tgt_lang": "en"},), {}, "data.corpora[0]: data.src_lang and data.tgt_lang are both"),
    ],
)
def test_inconsistent_corpora_are_refused_in_one_line(entries, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        corpora(data(*entries, **options))


@pytest.mark.parametrize(
    "entries,options,message",
    [
        (({"weight": 1.0}, {"src_lang": "fr"}), {}, "give a weight to every corpus or to none"),
        (({"weight": 1.0}, {"src_lang": "fr", "weight": 2.0}), {"temperature": 2.0}, "give one"),
        (({"weight": -1.0},), {}, r"data.corpora\[0\].weight=-1.0: expected a finite number > 0"),
        (
            ({"weight": 1.0}, {"src_lang": "fr", "weight": 1e400}),
            {},
            r"data.corpora\[1\].weight=inf: expected a finite",
        ),
        (({"weight": float("nan")},), {}, r"data.corpora\[0\].weight=nan: expected a finite number > 0"),
        (({"tag": "BT"},), {}, "expected a token such as <BT>"),
        (({"tag": "<2de>"},), {}, "target-language tokens"),
        ((), {"temperature": 0.0}, "data.temperature=0.0: expected a finite number > 0"),
        ((), {"temperature": -2.0}, "data.temperature=-2.0: expected a finite number > 0"),
        ((), {"temperature": float("inf")}, "data.temperature=inf: expected a finite number > 0"),
        ((), {"temperature": float("nan")}, "data.temperature=nan: expected a finite number > 0"),
        (({}, {"path": "/bt", "tag": "<pad>", "valid": False}), {}, r"data.corpora\[1\].tag='<pad>': .* SentencePiece"),
        (({"tag": "<unk>"},), {}, r"data.corpora\[0\].tag='<unk>': <pad>, <unk>, <s>, </s> are SentencePiece's"),
        (({"tag": "<s>"},), {}, r"data.corpora\[0\].tag='<s>': .* BOS and EOS tokens; choose another"),
        (({"tag": "</s>"},), {}, r"data.corpora\[0\].tag='</s>': .* BOS and EOS tokens; choose another"),
        (({"tag": "<2xx>"},), {}, r"data.corpora\[0\].tag='<2xx>': <2...> tokens are the target-language tokens"),
        (({"name": "a/b"},), {}, r"data.corpora\[0\].name='a/b': expected letters"),
        (({"tag": "<BT>"},), {"lang_tokens": True, "max_len": 100, "max_tokens": 103}, r"\+ 2 \+ 2 for the language"),
    ],
)
def test_bad_mixture_settings_are_refused_at_the_entry_point(entries, options, message):
    with pytest.raises(ConfigError, match=message):
        data(*entries, **options)


def test_direction_corpus_picks_the_one_direction_asked_for():
    cfg = data(
        *({"src_lang": s, "tgt_lang": t} for s, t in (("de", "en"), ("en", "de"), ("fr", "en"))), lang_tokens=True
    )
    assert direction_corpus(cfg, tgt_lang="de").direction == "en-de"
    assert direction_corpus(cfg, src_lang="fr").direction == "fr-en"
    with pytest.raises(ConfigError, match="tgt_lang=en: the data 'mix' has the directions de-en, en-de, fr-en; choose"):
        direction_corpus(cfg, tgt_lang="en")
    with pytest.raises(ConfigError, match="src_lang=cs tgt_lang=en: the data 'mix' has the directions"):
        direction_corpus(cfg, src_lang="cs", tgt_lang="en")


# -- what an epoch draws ------------------------------------------------------------------------------------------


def test_draw_counts_follow_weights_temperature_or_sizes():
    assert draw_counts([100, 300]) == [100, 300]  # every pair once an epoch
    assert draw_counts([100, 300], weights=[1, 1]) == [200, 200]
    assert draw_counts([100, 300], weights=[3, 1]) == [300, 100]
    # T=2: p proportional to sqrt(n): 10 and 17.32 of 27.32 -> 146.41 and 253.59 of 400
    assert draw_counts([100, 300], temperature=2.0) == [146, 254]
    assert draw_counts([100, 300], temperature=1.0) == [100, 300]
    assert sum(draw_counts([7, 11, 13], weights=[1, 1, 1])) == 31  # largest remainders: 10, 10, 11
    assert sorted(draw_counts([7, 11, 13], weights=[1, 1, 1])) == [10, 10, 11]


def test_draw_counts_hold_for_extreme_temperatures_and_weights():
    # T=0.01 on corpora of 30,000 and 30,300 pairs: n ** 100 overflows a float (~1e448), the ratio does not:
    # (30300/30000) ** 100 = 1.01 ** 100 = 2.7048138, so the larger takes 2.7048138/3.7048138 of 60,300 pairs =
    # 44,023.88, the smaller 16,276.12: floors 16,276 and 44,023, the leftover pair to the larger remainder.
    assert draw_counts([30000, 30300], temperature=0.01) == [16276, 44024]
    # T -> 0: every draw from the largest corpus, at least one from each other (the contract), on toy corpora ...
    assert draw_counts([100, 300], temperature=0.001) == [1, 400]  # (1/3) ** 1000 ~ 1e-477 of the draws: none
    assert draw_counts([29000, 1000], temperature=0.01) == [30000, 1]  # ... and at Multi30k's size
    assert draw_counts([300, 300, 100], temperature=1e-300) == [350, 350, 1]  # two largest: half each
    # T -> infinity: uniform (log ratios / 1e300 ~ 0).
    assert draw_counts([100, 300], temperature=1e300) == [200, 200]
    # Weights near the largest float: their sum would overflow; equal weights are still 1:1.
    assert draw_counts([100, 300], weights=[1e308, 1e308]) == [200, 200]
    assert draw_counts([100, 300], weights=[1e308, 1e307]) == [364, 36]  # 10/11 and 1/11 of 400: 363.6, 36.4


@pytest.mark.parametrize(
    "options,message",
    [
        ({"temperature": float("inf")}, "temperature inf: expected a finite number > 0"),
        ({"temperature": float("nan")}, "temperature nan: expected a finite number > 0"),
        ({"temperature": 0.0}, "temperature 0.0: expected a finite number > 0"),
        ({"weights": [1.0, float("inf")]}, r"corpus weights \[1.0, inf\]: expected finite numbers > 0"),
        ({"weights": [1.0, float("nan")]}, r"corpus weights \[1.0, nan\]: expected finite numbers > 0"),
        ({"weights": [1.0, 0.0]}, r"corpus weights \[1.0, 0.0\]: expected finite numbers > 0"),
    ],
)
def test_draw_counts_refuse_what_has_no_shares(options, message):
    with pytest.raises(ValueError, match=message):
        draw_counts([100, 300], **options)


def test_every_sentencepiece_built_in_piece_is_refused_as_a_tag():
    for piece in SPECIAL_PIECES:  # the tokenizer's own list: a piece it gains is refused too, or this fails
        with pytest.raises(ConfigError, match=f"data.corpora\\[1\\].tag='{piece}'"):
            data({}, {"path": "/bt", "tag": piece, "valid": False})


@pytest.mark.parametrize("entries", [(), ({"path": "/other"},)])
def test_a_temperature_with_one_corpus_is_logged_as_having_no_effect(entries, caplog, monkeypatch):
    monkeypatch.setattr(mixture, "_noted", set(), raising=False)  # logged once a process: forget earlier tests
    cfg = data(*entries, temperature=0.5)
    with caplog.at_level(logging.INFO, logger="mt.data.mixture"):
        corpora(cfg)
        corpora(cfg)  # resolved several times in one run: one line
    lines = [r.getMessage() for r in caplog.records if r.name == "mt.data.mixture"]
    assert lines == [
        "data.temperature=0.5 has no effect with one corpus: each epoch draws its every pair once "
        "(temperature shares out the draws of several data.corpora)"
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "mt.data.mixture")


def test_a_weight_on_a_single_corpus_is_logged_as_having_no_effect(caplog, monkeypatch):
    """It was ignored without a word: one corpus's share of the draws is all of them, whatever its weight."""
    monkeypatch.setattr(mixture, "_noted", set(), raising=False)
    cfg = DataConfig(name="one", path="/data", corpora=[CorpusConfig(path="/data", weight=3.0)])
    with caplog.at_level(logging.INFO, logger="mt.data.mixture"):
        corpora(cfg)
        corpora(cfg)
    lines = [r.getMessage() for r in caplog.records if r.name == "mt.data.mixture"]
    assert lines == [
        "data.corpora[0].weight=3.0 has no effect with one corpus: each epoch draws its every pair once "
        "(weights share out the draws of several data.corpora)"
    ]


def test_a_temperature_with_several_corpora_is_not_logged(caplog):
    with caplog.at_level(logging.INFO, logger="mt.data.mixture"):
        corpora(data({}, {"path": "/bt", "valid": False}, temperature=0.5))
    assert not [r for r in caplog.records if r.name == "mt.data.mixture"]


def test_a_corpus_drawn_below_its_size_shows_every_pair_before_repeating_one():
    draws = np.concatenate([epoch_draw(10, 3, seed=5, corpus=1, epoch=e) for e in range(10)])  # 30 = 3 cycles
    for cycle in range(3):
        assert sorted(draws[cycle * 10 : (cycle + 1) * 10].tolist()) == list(range(10))
    assert draws[:10].tolist() != draws[10:20].tolist()  # each cycle its own permutation
    np.testing.assert_array_equal(epoch_draw(10, 3, seed=5, corpus=1, epoch=4), draws[12:15])  # (seed, epoch) alone
    assert epoch_draw(10, 3, seed=6, corpus=1, epoch=4).tolist() != draws[12:15].tolist()


def test_an_upsampled_corpus_repeats_each_pair_as_evenly_as_it_can():
    drawn = epoch_draw(4, 10, seed=0, corpus=0, epoch=0)
    assert sorted(np.bincount(drawn, minlength=4).tolist()) == [2, 2, 3, 3]


# -- mixed batches ------------------------------------------------------------------------------------------------


def two_corpora(sizes=(300, 100), seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    return rng.integers(1, 30, n), rng.integers(1, 30, n), list(sizes)


def sampler(weights=(1.0, 3.0), rank=0, replicas=1, epoch=0, seed=3, max_tokens=200):
    src, tgt, sizes = two_corpora()
    draws = draw_counts(sizes, weights=list(weights))
    return MixtureBatchSampler(
        src, tgt, max_tokens, corpus_sizes=sizes, draws=draws, seed=seed, num_replicas=replicas, rank=rank, epoch=epoch
    )


def test_an_epoch_draws_each_corpus_in_proportion_to_its_weight():
    mixture = sampler(weights=(1.0, 3.0))  # 400 pairs an epoch: 100 of the first corpus, 300 of the second
    for epoch in range(3):
        mixture.set_epoch(epoch)
        chosen = np.concatenate(mixture.all_batches())
        first, second = int((chosen < 300).sum()), int((chosen >= 300).sum())
        assert abs(first / 400 - 0.25) <= 1 / 400 and abs(second / 400 - 0.75) <= 1 / 400
        assert mixture.drawn_counts() == [first, second]
        assert len(set(chosen[chosen < 300].tolist())) == first  # drawn below its size: no pair twice
        assert sorted(np.bincount(chosen[chosen >= 300] - 300, minlength=100).tolist()) == [3] * 100  # 3x each
        for batch in mixture.all_batches():
            cost = np.maximum(mixture.src_lengths[batch], mixture.tgt_lengths[batch]) + 1
            assert len(batch) * cost.max() <= 200
    mixture.set_epoch(0)
    zero = [b.tolist() for b in mixture.all_batches()]
    mixture.set_epoch(1)
    assert [b.tolist() for b in mixture.all_batches()] != zero
    assert [b.tolist() for b in sampler(weights=(1.0, 3.0)).all_batches()] == zero  # (seed, epoch) alone


def test_ranks_share_an_epoch_between_them():
    whole = sampler(epoch=2)
    shards = [sampler(rank=r, replicas=2, epoch=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    got = sorted(tuple(b) for s in shards for b in list(s)[: s.num_real_batches])
    assert got == sorted(tuple(b.tolist()) for b in whole.all_batches())


def test_resume_mid_epoch_continues_with_the_same_batches():
    straight = sampler()
    straight.set_epoch(1)
    expected = list(straight)
    interrupted = sampler()
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    for _ in range(5):
        next(iterator)
    interrupted.position = 5  # as ResumableLoader counts them
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["position"] == 5
    resumed = sampler(epoch=0)  # the trainer builds it at its epoch, then restores the saved state
    resumed.load_state_dict(state)
    assert list(resumed) == expected[5:]
    assert len(resumed) == len(expected)


def test_a_checkpoint_after_an_epoch_s_last_batch_resumes_at_the_next_epoch():
    # seed 6: epoch 0 has 56 batches, epoch 1 has 55
    straight = sampler(seed=6)
    straight.set_epoch(1)
    next_epoch = list(straight)
    finished = sampler(seed=6)
    finished.position = len(list(finished))  # all of epoch 0 consumed
    state = finished.state_dict()
    # Epoch 0 with all its batches, as the trainer restored with it counts them (the next epoch may have fewer).
    assert state["epoch"] == 0 and state["position"] == len(finished) != len(next_epoch)
    resumed = sampler(epoch=0, seed=6)
    resumed.load_state_dict(state)
    assert len(resumed) == len(finished) and list(resumed) == []
    resumed.set_epoch(1)  # as Lightning does at the start of the epoch
    assert list(resumed) == next_epoch and len(resumed) == len(next_epoch)


def test_draw_counts_are_earlier_versions_where_their_arithmetic_is_finite():
    """The log-space shares are a fallback: where n^(1/T) and the weights' sum are finite the counts are those of
    the plain formula (written out here), so epochs drawn before, and resumes across versions, stay the same."""
    import numpy as np

    def plain(sizes, weights=None, temperature=None):
        n = np.asarray(sizes, dtype=np.float64)
        shares = np.asarray(weights, dtype=np.float64) if weights else n ** (1.0 / temperature)
        exact = shares / shares.sum() * int(n.sum())
        counts = np.floor(exact).astype(np.int64)
        counts[np.argsort(-(exact - counts), kind="stable")[: int(n.sum()) - int(counts.sum())]] += 1
        return np.maximum(counts, 1).tolist()

    # a case whose largest remainders tie-break differently under weights divided by their largest
    assert draw_counts([136768, 304946, 663684], weights=[7, 1, 2]) == plain([136768, 304946, 663684], [7, 1, 2])
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(1, 10**6, 3).tolist()
        assert draw_counts(sizes, temperature=0.5) == plain(sizes, temperature=0.5)


def test_resume_with_other_weights_is_refused_in_one_line():
    state = sampler(weights=(1.0, 3.0)).state_dict()
    with pytest.raises(
        DataError, match=r"the checkpoint's corpora \(pairs \[300, 100\], drawn an epoch \[100, 300\]\)"
    ):
        sampler(weights=(1.0, 1.0)).load_state_dict(state)


# -- tags and language tokens -------------------------------------------------------------------------------------


def test_tags_and_language_tokens_are_single_ids_never_text():
    pairs = toy_pairs(200)
    tokenizer = train_tokenizer(
        [s for s, _ in pairs], [t for _, t in pairs], vocab_size=60, symbols=["<2de>", "<2en>", "<BT>"]
    )
    ids = {symbol: tokenizer.symbol_id(symbol) for symbol in ("<2de>", "<2en>", "<BT>")}
    assert sorted(ids.values()) == [EOS_ID + 1, EOS_ID + 2, EOS_ID + 3]
    assert tokenizer.language_tokens() == {"de": ids["<2de>"], "en": ids["<2en>"]}
    text = "Der hund sieht <BT> der katze <2de>."
    assert not set(ids.values()) & set(tokenizer.encode_src([text])[0])  # written in text, they are text
    plain = tokenizer.encode_tgt(["The dog sees the cat."])[0]
    with_symbols = [ids["<2en>"], plain[0], ids["<BT>"], *plain[1:], ids["<2de>"]]
    assert tokenizer.decode_tgt([with_symbols]) == tokenizer.decode_tgt([plain]) == ["The dog sees the cat."]
    with pytest.raises(Exception, match=r"has no symbol <2fr> \(it was trained with \['<2de>', '<2en>', '<BT>'\]\)"):
        tokenizer.symbol_id("<2fr>")


def test_a_checkpoint_knows_the_languages_its_corpora_translate_into():
    from mt.model.checkpoint import Checkpoint

    def checkpoint(data):
        return Checkpoint(model=None, tokenizer=None, model_config=None, data=data)

    # de→en data whose corpora are en→de (e.g. a back-translation model trained on data=multi30k)
    reversed_data = {
        "tgt_lang": "en",
        "corpora": [{"src_lang": "en", "tgt_lang": "de"}, {"src_lang": "en", "tgt_lang": "de", "tag": "<BT>"}],
    }
    assert checkpoint(reversed_data).target_languages == ["de"] and checkpoint(reversed_data).tgt_lang == "de"
    several = {"tgt_lang": "en", "corpora": [{}, {"src_lang": "en", "tgt_lang": "fr"}]}
    assert checkpoint(several).target_languages == ["en", "fr"] and checkpoint(several).tgt_lang is None
    assert checkpoint({"tgt_lang": "en"}).tgt_lang == "en" and checkpoint(None).target_languages == []
