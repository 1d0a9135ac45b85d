"""Batches of sentence pairs: the ``Batch`` tensors, collation, and the token-bucket sampler.

Batches hold up to ``max_tokens`` padded tokens (fairseq's ``--max-tokens``): pairs are sorted by
length (ties broken by a seeded shuffle) and cut greedily, so a batch holds sentences of similar
length and little padding. The batch order is shuffled per epoch, deterministically from
``(seed, epoch)``, and batches are dealt to distributed ranks so that every rank gets the same
number. With ``pad_to_multiple=m`` every batch's source and target widths are rounded up to multiples
of ``m`` (tensor-core tiles, few distinct shapes), and ``max_tokens`` counts the rounded widths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mt.data.corpus import EncodedCorpus
from mt.data.mixture import STREAM_ORDER, STREAM_TIES, epoch_draw
from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mt.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Padded tensors of one batch; ``True`` in a pad mask marks padding.

    Shapes: ``src_ids`` (B, S) ends each sentence with EOS; ``tgt_in`` (B, T) is BOS + target;
    ``tgt_out`` (B, T) is target + EOS; ``corpus_positions`` (B,) are the pairs' positions in their
    corpus (kept on the host).
    """

    src_ids: torch.Tensor
    src_pad_mask: torch.Tensor
    tgt_in: torch.Tensor | None
    tgt_out: torch.Tensor | None
    corpus_positions: torch.Tensor

    @property
    def num_tgt_tokens(self) -> torch.Tensor:
        """Non-pad target tokens (EOS included), as a tensor (no host sync)."""
        return (self.tgt_out != PAD_ID).sum()

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return self._map(move)

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory (the DataLoader calls this with ``pin_memory=True``), so that
        ``to(cuda)`` copies asynchronously."""
        return self._map(lambda t: None if t is None else t.pin_memory())

    def _map(self, fn) -> Batch:
        """A batch of ``fn`` applied to the model's tensors (``corpus_positions`` stays on the host)."""
        return Batch(
            fn(self.src_ids),
            fn(self.src_pad_mask),
            fn(self.tgt_in),
            fn(self.tgt_out),
            self.corpus_positions,
        )

    def __len__(self) -> int:
        return self.src_ids.size(0)


def round_up(length, multiple: int):
    """``length`` (an int or an integer array) rounded up to a multiple of ``multiple``."""
    return -(-length // multiple) * multiple


def pad_sequences(
    seqs: Sequence[Sequence[int] | np.ndarray],
    *,
    prefix: int | None = None,
    suffix: int | None = None,
    multiple: int = 1,
) -> torch.Tensor:
    """Right-padded (B, width) int64 tensor of ``[prefix] + seq + [suffix]``; width: the longest, rounded up
    to a multiple of ``multiple``."""
    extra = (prefix is not None) + (suffix is not None)
    width = round_up(max((len(s) for s in seqs), default=0) + extra, multiple)
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


def collate(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]] | None,
    positions: Sequence[int],
    *,
    pad_to_multiple: int = 1,
) -> Batch:
    """A ``Batch`` from unpadded subword ids (no BOS/EOS); ``tgt`` is ``None`` for translation."""
    src_ids = pad_sequences(src, suffix=EOS_ID, multiple=pad_to_multiple)
    tgt_in = tgt_out = None
    if tgt is not None:
        tgt_in = pad_sequences(tgt, prefix=BOS_ID, multiple=pad_to_multiple)
        tgt_out = pad_sequences(tgt, suffix=EOS_ID, multiple=pad_to_multiple)
    positions_tensor = torch.as_tensor(np.asarray(positions, dtype=np.int64))
    return Batch(src_ids, src_ids == PAD_ID, tgt_in, tgt_out, positions_tensor)


class PairDataset(torch.utils.data.Dataset):
    """Map-style view of one ``EncodedCorpus`` or of several one after the other (index ``i`` of the second
    is ``len(first) + i``); the batch sampler yields lists of indices."""

    def __init__(self, corpus: EncodedCorpus | Sequence[EncodedCorpus]) -> None:
        self.corpora = [corpus] if isinstance(corpus, EncodedCorpus) else list(corpus)
        self.starts = np.cumsum([0] + [len(c) for c in self.corpora])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        corpus, local = self.corpora[k], i - int(self.starts[k])
        return corpus.src(local), corpus.tgt(local), i

    @staticmethod
    def collate(items: list[tuple[np.ndarray, np.ndarray, int]], pad_to_multiple: int = 1) -> Batch:
        src, tgt, positions = zip(*items)
        return collate(src, tgt, positions, pad_to_multiple=pad_to_multiple)


def token_batches(
    order: np.ndarray,
    cost_lengths: np.ndarray,
    max_tokens: int,
    max_sentences: int | None = None,
    *,
    oversize_alone: bool = False,
) -> list[np.ndarray]:
    """Cut ``order`` greedily into batches whose padded size ``n * max_len`` stays <= ``max_tokens``.

    Args:
        order: (N,) indices, already sorted by length.
        cost_lengths: (num_pairs,) padded length each pair needs (max of source and target + 1).
        oversize_alone: a pair longer than ``max_tokens`` gets a batch of its own (validation: every pair is
            scored); else it is an error (training data is cleaned to fit).
    """
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    lengths = cost_lengths[order]
    for position, length in enumerate(lengths.tolist()):
        if length > max_tokens:
            if not oversize_alone:
                raise ValueError(f"a pair needs {length} tokens but max_tokens={max_tokens}")
            if position > start:
                batches.append(order[start:position])
            batches.append(order[position : position + 1])
            start, longest = position + 1, 0
            continue
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
        num_replicas, rank: distributed sharding, every ``num_replicas``-th batch from ``rank``.
        pad_to_multiple: widths are rounded up to multiples of this (``collate`` pads them so), and
            ``max_tokens`` bounds the rounded sizes.
        batch_multiple: each rank's batch count is a multiple of this (an epoch of ``k``-batch accumulation
            windows then ends with a whole one: with validation counted in batches across epochs, every
            validation, and its checkpoint, falls at the end of an update).

    Every rank gets the same number of batches, a few repeated by wrapping around (no rank may wait on
    a collective the others never join; nor end an epoch inside an accumulation window, ``batch_multiple``);
    ``num_real_batches`` says how many of this rank's are not repeats, so that validation counts every batch
    once.
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
        pad_to_multiple: int = 1,
        oversize_alone: bool = False,
        batch_multiple: int = 1,
    ) -> None:
        self.batch_multiple = batch_multiple
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        self.pad_to_multiple = pad_to_multiple
        self.oversize_alone = oversize_alone
        self.cost_lengths = round_up(np.maximum(self.src_lengths, self.tgt_lengths) + 1, pad_to_multiple)
        longest = int(self.cost_lengths.max(initial=0))
        if longest > max_tokens and not oversize_alone:
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
        self.position = 0  # batches of this epoch handed out (counted by ResumableLoader)
        self._resume_at = 0  # batches of this epoch to skip at the next iteration (after a resume)
        self.resumed_position: int | None = None  # this rank's batches of the epoch a resume started after
        self._cache: tuple[int, list[np.ndarray]] | None = None
        self._batches = self._make_batches()

    def _make_batches(self) -> list[np.ndarray]:
        """The batches, in length order: fixed for the run, so every epoch has the same number."""
        n = len(self.src_lengths)
        order = np.random.default_rng(self.seed).permutation(n) if self.shuffle else np.arange(n)
        # Sort by target length then source length; the stable sort keeps the shuffled tie order.
        order = order[np.lexsort((self.src_lengths[order], self.tgt_lengths[order]))]
        return token_batches(
            order, self.cost_lengths, self.max_tokens, self.max_sentences, oversize_alone=self.oversize_alone
        )

    @property
    def sampler(self) -> _EpochSetter:
        # Lightning calls ``batch_sampler.sampler.set_epoch(epoch)`` at each epoch start, resumed ones included.
        return _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a position belongs to the epoch it was counted in
            self.position = self._resume_at = 0
            self.resumed_position = None
        self.epoch = epoch

    def all_batches(self) -> list[np.ndarray]:
        """Every rank's batches of this epoch, before sharding: the fixed batches in a per-epoch order."""
        if not self.shuffle:
            return self._batches
        if self._cache is None or self._cache[0] != self.epoch:
            permutation = np.random.default_rng([self.seed, self.epoch]).permutation(len(self._batches))
            self._cache = (self.epoch, [self._batches[i] for i in permutation])
        return self._cache[1]

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch and this rank's batches of it already consumed (all of them once it
        is over: the trainer, whose own state is saved with this, still counts the batches of that epoch, and
        moves to the next epoch itself, whose batch count a mixture draws anew)."""
        return {**self._identity(self.epoch), "epoch": self.epoch, "position": self.position}

    def _identity(self, epoch: int) -> dict:
        """What a resumed run must share with the saved one for the saved position to mean the same batches."""
        return {
            "seed": self.seed,
            "epoch_batches": len(self._batches),
            "replicas": self.num_replicas,
            "pad_to_multiple": self.pad_to_multiple,
        }

    def _check_identity(self, state: dict) -> None:
        saved_multiple = state.get("pad_to_multiple", 1)  # checkpoints before pad_to_multiple had none
        if saved_multiple != self.pad_to_multiple:
            raise DataError(
                f"the checkpoint's batches were padded to multiples of {saved_multiple}, this run's to "
                f"{self.pad_to_multiple}: resume with data.pad_to_multiple={saved_multiple}"
            )
        if "epoch_batches" in state:
            saved = (state["seed"], state["epoch_batches"])
            here = (self.seed, self._identity(int(state["epoch"]))["epoch_batches"])
        else:  # checkpoints before epoch_batches: the batch count of a rank
            saved, here = (state.get("seed", self.seed), state["batches"]), (self.seed, len(self))
        if saved != here:
            raise DataError(
                f"the checkpoint's data order (seed {saved[0]}, {saved[1]} batches an epoch) differs from this "
                f"run's (seed {here[0]}, {here[1]}): resume with the same seed, data and data.max_tokens"
            )

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``, also with another number of ranks: the ranks had consumed the
        first ``position * replicas`` batches of the epoch's order, and this run's ranks go on from
        the last multiple of its own count (so at most ``num_replicas - 1`` batches are seen twice)."""
        self._check_identity(state)
        self.epoch = int(state["epoch"])
        replicas = int(state.get("replicas", self.num_replicas))
        consumed = int(state["position"]) * replicas  # of the epoch's batches, by all ranks together
        if consumed >= len(self.all_batches()):  # the epoch is over (the old ranks' wrap-around repeats included)
            consumed = len(self) * self.num_replicas
        self.position = self._resume_at = consumed // self.num_replicas
        self.resumed_position = self.position  # kept while batches are fetched (ResumedEpochPosition reads it)
        repeated = consumed - self.position * self.num_replicas
        if replicas != self.num_replicas and self.rank == 0:
            log.warning(
                "resuming %d ranks' data order on %d: epoch %d goes on after its first %d batches%s",
                replicas,
                self.num_replicas,
                self.epoch,
                consumed,
                f" ({repeated} of them seen again)" if repeated else "",
            )

    def shard(self) -> list[np.ndarray]:
        """This rank's batches: every ``num_replicas``-th, the list first padded by wrapping around."""
        batches = self.all_batches()
        if self.num_replicas * self.batch_multiple > 1 and batches:
            remainder = -len(batches) % (self.num_replicas * self.batch_multiple)
            batches = batches + [batches[i % len(batches)] for i in range(remainder)]
        return batches[self.rank :: self.num_replicas]

    @property
    def num_real_batches(self) -> int:
        """This rank's batches that are not wrap-around repeats (they come first)."""
        return len(range(self.rank, len(self.all_batches()), self.num_replicas))

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        for batch in self.shard()[start:]:
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self.shard())

    def padding_share(self) -> float:
        """Share of padded positions (source and target) in this epoch's batches."""
        real = padded = 0
        m = self.pad_to_multiple
        for batch in self.all_batches():
            n = len(batch)
            real += int(self.src_lengths[batch].sum() + self.tgt_lengths[batch].sum()) + 2 * n
            src_width = round_up(int(self.src_lengths[batch].max()) + 1, m)
            padded += n * (src_width + round_up(int(self.tgt_lengths[batch].max()) + 1, m))
        return 1.0 - real / max(padded, 1)


class _EpochSetter:
    """What Lightning sees as the batch sampler's ``sampler``: forwards ``set_epoch``."""

    def __init__(self, batch_sampler: TokenBatchSampler) -> None:
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader over a ``TokenBatchSampler`` whose place in the epoch survives a checkpoint.

    Lightning stores the ``state_dict`` of such loaders in checkpoints and restores it before the
    data iterator is created, so a resumed run continues with the next unseen batch of the same
    epoch order, without replaying or loading the batches already trained on. Batches are counted
    as they leave the loader, so worker prefetching does not shift the position.
    """

    def __iter__(self) -> Iterator[Batch]:
        sampler = self.batch_sampler
        sampler.position = sampler._resume_at
        for batch in super().__iter__():
            sampler.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


class MixtureBatchSampler(TokenBatchSampler):
    """``TokenBatchSampler`` over several corpora laid end to end (``PairDataset`` of a list), each epoch drawing
    ``draws[i]`` pairs from corpus ``i`` (``mt.data.mixture.epoch_draw``) and batching them together.

    Batches mix corpora; they are rebuilt every epoch from the pairs drawn, so the batch count of an epoch is
    known from ``(seed, epoch)`` but may differ from one epoch to the next by a few (the Lightning trainer
    reloads the training loader every epoch for this sampler). Resume, sharding and wrap-around are the base
    class's, per epoch.

    Args:
        corpus_sizes: pairs of each corpus, in the order they are laid out.
        draws: pairs drawn from each corpus an epoch.
        epoch: the epoch to start at (the trainer's current epoch when the loader is built).
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        max_tokens: int,
        *,
        corpus_sizes: Sequence[int],
        draws: Sequence[int],
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
        pad_to_multiple: int = 1,
        batch_multiple: int = 1,
    ) -> None:
        if len(corpus_sizes) != len(draws) or sum(corpus_sizes) != len(src_lengths):
            raise ValueError(
                f"corpus sizes {list(corpus_sizes)} and draws {list(draws)} do not fit {len(src_lengths)} pairs"
            )
        self.corpus_sizes = [int(n) for n in corpus_sizes]
        self.draws = [int(m) for m in draws]
        self.starts = np.cumsum([0] + self.corpus_sizes)
        super().__init__(
            src_lengths,
            tgt_lengths,
            max_tokens,
            shuffle=True,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            pad_to_multiple=pad_to_multiple,
            batch_multiple=batch_multiple,
        )
        self.epoch = epoch

    def _make_batches(self) -> list[np.ndarray]:
        return []  # built per epoch by all_batches

    def drawn(self, epoch: int) -> np.ndarray:
        """The pairs (indices over all corpora) epoch ``epoch`` draws, corpus by corpus."""
        return np.concatenate(
            [
                self.starts[i] + epoch_draw(size, count, seed=self.seed, corpus=i, epoch=epoch)
                for i, (size, count) in enumerate(zip(self.corpus_sizes, self.draws))
            ]
        )

    def all_batches(self) -> list[np.ndarray]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._epoch_batches(self.epoch))
        return self._cache[1]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        drawn = self.drawn(epoch)
        ties = np.random.default_rng([self.seed, STREAM_TIES, epoch]).permutation(len(drawn))
        order = drawn[ties]
        order = order[np.lexsort((self.src_lengths[order], self.tgt_lengths[order]))]
        batches = token_batches(order, self.cost_lengths, self.max_tokens, self.max_sentences)
        permutation = np.random.default_rng([self.seed, STREAM_ORDER, epoch]).permutation(len(batches))
        return [batches[i] for i in permutation]

    def _identity(self, epoch: int) -> dict:
        batches = self.all_batches() if epoch == self.epoch else self._epoch_batches(epoch)
        return {
            "seed": self.seed,
            "epoch_batches": len(batches),
            "replicas": self.num_replicas,
            "pad_to_multiple": self.pad_to_multiple,
            "corpus_sizes": self.corpus_sizes,
            "draws": self.draws,
        }

    def _check_identity(self, state: dict) -> None:
        saved = (state.get("corpus_sizes"), state.get("draws"))
        if saved != (self.corpus_sizes, self.draws):
            raise DataError(
                f"the checkpoint's corpora (pairs {saved[0]}, drawn an epoch {saved[1]}) differ from this run's "
                f"(pairs {self.corpus_sizes}, drawn {self.draws}): resume with the same data.corpora and weights"
            )
        super()._check_identity(state)

    def drawn_counts(self) -> list[int]:
        """Pairs of each corpus in this epoch's batches (all ranks together)."""
        batches = self.all_batches()
        chosen = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        return np.bincount(np.searchsorted(self.starts, chosen, side="right") - 1, minlength=len(self.draws)).tolist()
