"""The plain in-memory encoder that ``mt.data.preprocess`` (the only encoder mt trains with) is held
against: read a split into lists, encode pair by pair, clean, flatten. Test code only. Its cleaning is its own,
written from docs/data.md, not ``mt.data.corpus.cleaning_mask`` (which the Arrow path calls)."""

from __future__ import annotations

import numpy as np

from mt.config import DataConfig
from mt.data.corpus import EncodedCorpus, ParallelText, load_split
from mt.data.tokenizer import Tokenizer


def from_lists(src: list[list[int]], tgt: list[list[int]], index: np.ndarray | None = None) -> EncodedCorpus:
    """An ``EncodedCorpus`` of token lists (``index``: each pair's line, default 0..n-1)."""

    def flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in seqs], out=offsets[1:])
        tokens = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return tokens, offsets

    src_tokens, src_offsets = flat(src)
    tgt_tokens, tgt_offsets = flat(tgt)
    index = np.arange(len(src), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    return EncodedCorpus(src_tokens, src_offsets, tgt_tokens, tgt_offsets, index)


def select(corpus: EncodedCorpus, keep: np.ndarray) -> EncodedCorpus:
    """The pairs at positions ``keep`` (sorted, unique), keeping their line numbers (``index``)."""
    chosen = np.zeros(len(corpus), dtype=bool)
    chosen[keep] = True

    def pick(tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.diff(offsets)
        new_offsets = np.zeros(int(chosen.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[chosen], out=new_offsets[1:])
        return tokens[np.repeat(chosen, lengths)], new_offsets

    src_tokens, src_offsets = pick(corpus.src_tokens, corpus.src_offsets)
    tgt_tokens, tgt_offsets = pick(corpus.tgt_tokens, corpus.tgt_offsets)
    return EncodedCorpus(src_tokens, src_offsets, tgt_tokens, tgt_offsets, corpus.index[chosen])


def prepare_split(cfg: DataConfig, split: str, tokenizer: Tokenizer, *, text: ParallelText | None = None):
    """Every pair of ``split`` encoded (no BOS/EOS), the training split cleaned as ``cfg`` says."""
    text = text if text is not None else load_split(cfg, split)
    corpus = from_lists(tokenizer.encode_src(text.src), tokenizer.encode_tgt(text.tgt))
    if split != "train":
        return corpus
    lengths = zip(corpus.src_lengths.tolist(), corpus.tgt_lengths.tolist())
    keep = [i for i, (src, tgt) in enumerate(lengths) if kept(src, tgt, cfg)]
    return select(corpus, np.array(keep, dtype=np.int64))


def kept(src: int, tgt: int, cfg: DataConfig) -> bool:
    """docs/data.md's cleaning of one pair of ``src`` and ``tgt`` subwords: neither side empty nor shorter than
    ``min_len`` nor longer than ``max_len``, and the longer side at most ``max_len_ratio`` times the shorter."""
    shorter, longer = min(src, tgt), max(src, tgt)
    return shorter >= max(cfg.min_len, 1) and longer <= cfg.max_len and longer / shorter <= cfg.max_len_ratio
