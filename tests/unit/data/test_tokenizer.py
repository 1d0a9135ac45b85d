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
