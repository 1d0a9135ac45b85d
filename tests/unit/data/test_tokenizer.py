"""SentencePiece: round trip, special ids, storage in run directories and checkpoints."""

from __future__ import annotations

import pytest

from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from mt.errors import TokenizerError
from tests.conftest import toy_pairs


@pytest.fixture(scope="module")
def pairs():
    return toy_pairs(300)


@pytest.fixture(scope="module")
def joint(pairs):
    return train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=80)


def test_round_trip_and_special_ids(joint, pairs):
    targets = [t for _, t in pairs[:20]]
    assert joint.decode_tgt(joint.encode_tgt(targets)) == targets
    assert (joint.src.pad_id(), joint.src.unk_id(), joint.src.bos_id(), joint.src.eos_id()) == (
        PAD_ID,
        UNK_ID,
        BOS_ID,
        EOS_ID,
    )
    assert joint.joint and joint.src_vocab_size == joint.tgt_vocab_size
    # Special ids in decoder output are dropped, not printed.
    ids = joint.encode_tgt(["The dog."])[0]
    assert joint.decode_tgt([[BOS_ID, *ids, EOS_ID, PAD_ID]]) == ["The dog."]


def test_unknown_characters_map_to_unk(joint):
    assert UNK_ID in joint.encode_src(["ж"])[0]


def test_separate_vocabularies(pairs):
    tokenizer = train_tokenizer(
        [s for s, _ in pairs], [t for _, t in pairs], vocab_size=60, joint=False, model_type="bpe"
    )
    assert not tokenizer.joint
    assert tokenizer.src.id_to_piece(list(range(4, 60))) != tokenizer.tgt.id_to_piece(list(range(4, 60)))
    restored = Tokenizer.from_state(tokenizer.to_state())
    assert restored.encode_tgt(["The cat."]) == tokenizer.encode_tgt(["The cat."])


def test_save_load_and_state(tmp_path, joint):
    joint.save(tmp_path)
    assert (tmp_path / "spm.model").is_file()
    loaded = Tokenizer.load(tmp_path)
    assert loaded.encode_src(["Der Hund sieht der Ball."]) == joint.encode_src(["Der Hund sieht der Ball."])
    assert Tokenizer.load(tmp_path / "nothing") is None
    assert Tokenizer.from_state(joint.to_state()).src_model == joint.src_model


def test_corrupt_model_is_a_clear_error():
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        Tokenizer(b"\x00garbage")
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        Tokenizer.from_state({})


def test_round_trip_on_real_multi30k_lines_with_umlauts_quotes_and_nfkc(multi30k_dir):
    """German and English Multi30k lines come back as written, up to NFKC and runs of spaces (computed here
    with unicodedata, not SentencePiece's normaliser); text with characters the model never saw comes back
    with its unknown pieces marked, and everything around them intact."""
    import gzip
    import unicodedata

    def lines(name: str, count: int) -> list[str]:
        with gzip.open(multi30k_dir / name, "rt", encoding="utf-8") as handle:
            return [line.rstrip("\n") for line, _ in zip(handle, range(count))]

    de, en = lines("train.de.gz", 3000), lines("train.en.gz", 3000)
    tokenizer = train_tokenizer(de, en, vocab_size=2000, joint=False)
    umlauts = [s for s in de if any(c in s for c in "äöüÄÖÜß")]
    assert len(umlauts) > 100
    quoted = [s for s in de if "„" in s]  # typographic quotes, as Multi30k writes them
    extra = [
        "Ein Hund\u00a0läuft  im   Park.",
        "Ｅｉｎ Ｍａｎｎ ﬁndet einen Ball.",
    ]  # NBSP, spaces, fullwidth, ligature
    assert quoted
    for side, texts in (("src", umlauts[:300] + quoted + extra), ("tgt", en[:300])):
        model = getattr(tokenizer, side)
        decoded = [model.decode(ids) for ids in getattr(tokenizer, f"encode_{side}")(texts)]
        expected = [" ".join(unicodedata.normalize("NFKC", t).split()) for t in texts]
        assert decoded == expected
    (ids,) = tokenizer.encode_src(["Ein Hund 犬 läuft."])
    assert UNK_ID in ids
    text = tokenizer.src.decode(ids)
    assert text.startswith("Ein Hund") and text.endswith("läuft.") and "犬" not in text


def test_lines_sentencepiece_leaves_out_are_named_as_such_not_as_a_vocabulary_size(pairs):
    """Files whose lines end in ``\\r`` alone are one long line each, which SentencePiece leaves out of its training
    (over 4,192 bytes): the advice was to raise the vocabulary size, which cannot help."""
    from mt.data.tokenizer import MAX_SENTENCE_BYTES

    one_line = "\r".join(s for s, _ in pairs)
    assert len(one_line.encode()) > MAX_SENTENCE_BYTES
    with pytest.raises(TokenizerError, match=r"no sentence of at most 4192 bytes .*ended by \\r alone") as caught:
        train_tokenizer([one_line], [one_line], vocab_size=80)
    assert "vocab_size" not in str(caught.value)


def test_a_vocabulary_the_corpus_cannot_fill_is_said(pairs, caplog):
    """``hard_vocab_limit=False`` lets a small corpus give fewer pieces than ``vocab_size``: said, with both sizes."""
    with caplog.at_level("WARNING", logger="mt.data.tokenizer"):
        small = train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=5000)
    assert small.src_vocab_size < 5000
    assert f"learnt {small.src_vocab_size} pieces of the 5000 asked for" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mt.data.tokenizer"):
        assert train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=40).src_vocab_size == 40
    assert "asked for" not in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"character_coverage": 0.5}, r"tokenizer.character_coverage=0.5: expected 0.98 <= character_coverage <= 1"),
        ({"character_coverage": 1.5}, r"tokenizer.character_coverage=1.5: expected 0.98 <= character_coverage <= 1"),
        ({"input_sentence_size": 0}, r"tokenizer.input_sentence_size=0: expected >= 1"),
    ],
)
def test_tokenizer_settings_sentencepiece_cannot_train_with_are_refused_at_the_start(options, message):
    """They failed once the corpus was read, as "an empty corpus" or with the advice to lower a coverage of 0.5."""
    from mt.config import TokenizerConfig
    from mt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TokenizerConfig(**options)
    TokenizerConfig(character_coverage=0.9995)  # the usual value for Chinese or Japanese
