"""Shared fixtures: a toy parallel language the tests make themselves, and small configs."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import pytest
import torch

from mt.config import ModelConfig, TrainConfig, from_dict
from mt.model.transformer import Transformer

# A toy "German" -> "English" lexicon: word-by-word translation with one reordering rule
# (an adjective follows its noun in the source and precedes it in the target).
NOUNS = {
    "hund": "dog",
    "katze": "cat",
    "mann": "man",
    "frau": "woman",
    "kind": "child",
    "ball": "ball",
    "haus": "house",
    "baum": "tree",
}
ADJECTIVES = {"rot": "red", "gross": "big", "klein": "small", "alt": "old"}
VERBS = {"sieht": "sees", "hat": "has", "mag": "likes", "sucht": "seeks"}


def toy_pair(rng: random.Random) -> tuple[str, str]:
    def phrase() -> tuple[list[str], list[str]]:
        noun = rng.choice(sorted(NOUNS))
        if rng.random() < 0.5:
            adjective = rng.choice(sorted(ADJECTIVES))
            return ["der", noun, adjective], ["the", ADJECTIVES[adjective], NOUNS[noun]]
        return ["der", noun], ["the", NOUNS[noun]]

    subject_src, subject_tgt = phrase()
    verb = rng.choice(sorted(VERBS))
    object_src, object_tgt = phrase()
    src = " ".join(subject_src + [verb] + object_src).capitalize() + "."
    tgt = " ".join(subject_tgt + [VERBS[verb]] + object_tgt).capitalize() + "."
    return src, tgt


def toy_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [toy_pair(rng) for _ in range(count)]


def write_text_corpus(directory: Path, splits: dict[str, list[tuple[str, str]]], *, gz: bool = True) -> Path:
    """``{split}.de[.gz]`` and ``{split}.en[.gz]`` files, as Multi30k ships them."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        for side, lang in ((0, "de"), (1, "en")):
            text = "".join(pair[side] + "\n" for pair in pairs)
            if gz:
                with gzip.open(directory / f"{split}.{lang}.gz", "wt", encoding="utf-8") as handle:
                    handle.write(text)
            else:
                (directory / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def toy_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train (400 pairs), valid and test (40 each) of the toy language."""
    return write_text_corpus(
        tmp_path_factory.mktemp("toy"),
        {"train": toy_pairs(400, seed=1), "valid": toy_pairs(40, seed=2), "test": toy_pairs(40, seed=3)},
    )


@pytest.fixture
def multi30k_dir() -> Path:
    """The real Multi30k files (``MT_DATA_DIR``); tests that need them skip without it."""
    path = os.environ.get("MT_DATA_DIR")
    if not path or not Path(path, "train.de.gz").is_file():
        pytest.skip("MT_DATA_DIR does not point at Multi30k")
    return Path(path)


def tiny_train_config(data_dir: Path, **overrides) -> TrainConfig:
    """A TrainConfig for a tiny, fast model on ``data_dir``, validated like YAML."""
    values = {
        "data": {"name": "toy", "path": str(data_dir), "splits": {"valid": "valid"}, "max_tokens": 512, "max_len": 64},
        "tokenizer": {"vocab_size": 64},
        "model": {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0},
        "optim": {"lr": 3e-3, "warmup_steps": 20},
        "trainer": {"accelerator": "cpu", "max_steps": 10, "enable_progress_bar": False, "log_every_n_steps": 5},
        "validation": {"decode": "greedy", "max_sentences": 8},
        "search": {"beam": 2},
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            values.setdefault(section, {})[name] = value
        else:
            values[section] = value
    return from_dict(TrainConfig, values)


def random_model(seed: int = 0, *, vocab: int = 40, pre_norm: bool = True, layers: int = 2) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=32, n_heads=4, encoder_layers=layers, decoder_layers=layers, d_ff=64, dropout=0.0, pre_norm=pre_norm
    )
    return Transformer(cfg, src_vocab_size=vocab, tgt_vocab_size=vocab).eval()


def random_batch(seed: int, lengths: list[int], vocab: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids (B, S) ending in EOS and right-padded, with their pad mask."""
    from mt.data.batching import pad_sequences
    from mt.data.tokenizer import EOS_ID, PAD_ID

    generator = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in lengths]
    src_ids = pad_sequences(seqs, suffix=EOS_ID)
    return src_ids, src_ids == PAD_ID


def random_attention_inputs(
    query_len: int, key_len: int, *, padded_row: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (3, 2, T_q, 8), k, v (3, 2, T_k, 8) requiring gradients, and their key padding mask (3, T_k):
    row 1 ends in 2 pads, row 2 (with ``padded_row``) is nothing but padding."""
    torch.manual_seed(0)
    q = torch.randn(3, 2, query_len, 8, requires_grad=True)
    k, v = (torch.randn(3, 2, key_len, 8, requires_grad=True) for _ in range(2))
    key_pad_mask = torch.zeros(3, key_len, dtype=torch.bool)
    key_pad_mask[1, -2:] = True
    if padded_row:
        key_pad_mask[2, :] = True
    return q, k, v, key_pad_mask


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a
    small, shared machine more threads only wait for each other. The count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
