"""Batches of sentence pairs: the ``Batch`` tensors, collation, and the token-bucket sampler.

Batches hold up to ``max_tokens`` padded tokens (fairseq's ``--max-tokens``): pairs are sorted by
length (ties broken by a seeded shuffle) and cut greedily, so a batch holds sentences of similar
length and little padding. The batch order is shuffled per epoch, deterministically from
``(seed, epoch)``, and batches are dealt to distributed ranks so that every rank gets the same
number.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mt.data import EncodedCorpus
from mt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """Padded tensors of one batch; ``True`` in a pad mask marks padding.

    Shapes: ``src_ids`` (B, S) ends each sentence with EOS; ``tgt_in`` (B, T) is BOS + target;
    ``tgt_out`` (B, T) is target + EOS; ``ids`` (B,) are the pairs' positions in their corpus.
    """

    src_ids: torch.Tensor
    src_pad_mask: torch.Tensor
    tgt_in: torch.Tensor | None
    tgt_out: torch.Tensor | None
    ids: torch.Tensor
    tgt_token_count: int = 0  # non-pad target tokens (EOS included), known on the host at collation

    @property
    def num_tgt_tokens(self) -> torch.Tensor:
        """Non-pad target tokens (EOS included), as a tensor (no host sync)."""
        return (self.tgt_out != PAD_ID).sum()

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.src_ids),
            move(self.src_pad_mask),
            move(self.tgt_in),
            move(self.tgt_out),
            move(self.ids),
            self.tgt_token_count,
        )

    def __len__(self) -> int:
        return self.src_ids.size(0)


def pad_sequences(
    seqs: Sequence[Sequence[int] | np.ndarray], *, prefix: int | None = None, suffix: int | None = None
) -> torch.Tensor:
    """Right-padded (B, max_len) int64 tensor of ``[prefix] + seq + [suffix]``."""
    extra = (prefix is not None) + (suffix is not None)
    width = max((len(s) for s in seqs), default=0) + extra
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        if len(seq):
            out[row, start : start + len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        if suffix is not None:
            out[row, start + len(seq)] = suffix
    return out


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None, ids: Sequence[int]) -> Batch:
    """A ``Batch`` from unpadded subword ids (no BOS/EOS); ``tgt`` is ``None`` for translation."""
    src_ids = pad_sequences(src, suffix=EOS_ID)
    tgt_in = tgt_out = None
    tgt_token_count = 0
    if tgt is not None:
        tgt_in = pad_sequences(tgt, prefix=BOS_ID)
        tgt_out = pad_sequences(tgt, suffix=EOS_ID)
        tgt_token_count = sum(len(t) for t in tgt) + len(tgt)
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    return Batch(src_ids, src_ids == PAD_ID, tgt_in, tgt_out, ids, tgt_token_count)


class PairDataset(torch.utils.data.Dataset):
    """Map-style view of an ``EncodedCorpus``; the batch sampler yields lists of indices."""

    def __init__(self, corpus: EncodedCorpus) -> None:
        self.corpus = corpus

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        return self.corpus.src(i), self.corpus.tgt(i), i

    @staticmethod
    def collate(items: list[tuple[np.ndarray, np.ndarray, int]]) -> Batch:
        src, tgt, ids = zip(*items)
        return collate(src, tgt, ids)


def token_batches(
    order: np.ndarray, cost_lengths: np.ndarray, max_tokens: int, max_sentences: int | None = None
) -> list[np.ndarray]:
    """Cut ``order`` greedily into batches whose padded size ``n * max_len`` stays <= ``max_tokens``.

    Args:
        order: (N,) indices, already sorted by length.
        cost_lengths: (num_pairs,) padded length each pair needs (max of source and target + 1).
    """
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    lengths = cost_lengths[order]
    for position, length in enumerate(lengths.tolist()):
        if length > max_tokens:
            raise ValueError(f"a pair needs {length} tokens but max_tokens={max_tokens}")
        size = position - start
        new_longest = max(longest, length)
        if size and ((size + 1) * new_longest > max_tokens or (max_sentences and size >= max_sentences)):
            batches.append(order[start:position])
            start, new_longest = position, length
        longest = new_longest
    if start < len(order):
        batches.append(order[start:])
    return batches


class TokenBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Length-bucketed ``max_tokens`` batches, reshuffled per epoch and sharded across ranks.

    Args:
        src_lengths, tgt_lengths: (N,) subword lengths without BOS/EOS.
        max_tokens: padded tokens per batch on one rank.
        shuffle: shuffle ties and batch order from ``(seed, epoch)``; otherwise sorted, fixed.
        num_replicas, rank: distributed sharding; every rank gets ``len(self)`` batches.
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        max_tokens: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        max_sentences: int | None = None,
    ) -> None:
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        self.cost_lengths = np.maximum(self.src_lengths, self.tgt_lengths) + 1
        longest = int(self.cost_lengths.max(initial=0))
        if longest > max_tokens:
            raise ValueError(f"max_tokens={max_tokens} is below the longest pair ({longest} tokens with EOS)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} outside 0..{num_replicas - 1}")
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def all_batches(self) -> list[np.ndarray]:
        """Every rank's batches of this epoch, before sharding (cached per epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        n = len(self.src_lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
        else:
            order = np.arange(n)
        # Sort by target length then source length; the stable sort keeps the shuffled tie order.
        order = order[np.lexsort((self.src_lengths[order], self.tgt_lengths[order]))]
        batches = token_batches(order, self.cost_lengths, self.max_tokens, self.max_sentences)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def shard(self) -> list[np.ndarray]:
        """This rank's batches: every ``num_replicas``-th, the list first padded by wrapping around."""
        batches = self.all_batches()
        if self.num_replicas > 1 and batches:
            remainder = -len(batches) % self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(remainder)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.shard():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self.shard())

    def padding_share(self) -> float:
        """Share of padded positions (source and target) in this epoch's batches."""
        real = padded = 0
        for batch in self.all_batches():
            n = len(batch)
            real += int(self.src_lengths[batch].sum() + self.tgt_lengths[batch].sum()) + 2 * n
            padded += n * (int(self.src_lengths[batch].max()) + int(self.tgt_lengths[batch].max()) + 2)
        return 1.0 - real / max(padded, 1)
