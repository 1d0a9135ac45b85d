"""An ensemble of models with one vocabulary, seen by the search as a single ``Decodable``.

Each step averages the members' log-probabilities and renormalises them (a log-linear combination;
for one member it is that member exactly). The search needs nothing new: the ensemble's memory
and cache are containers whose rows it selects and reorders like a single model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EnsembleMemory:
    """The members' encoder outputs, selected by source together."""

    def __init__(self, memories: Sequence[Any]) -> None:
        self.memories = list(memories)

    def index_select(self, dim: int, index: Tensor) -> EnsembleMemory:
        return EnsembleMemory([memory.index_select(dim, index) for memory in self.memories])


class EnsembleCache:
    """The members' decoder caches, reordered and shrunk together."""

    def __init__(self, caches: Sequence[Any]) -> None:
        self.caches = list(caches)

    @property
    def length(self) -> int:
        return self.caches[0].length

    def reorder(self, row_idx: Tensor) -> None:
        for cache in self.caches:
            cache.reorder(row_idx)

    def select_sources(self, src_idx: Tensor, row_idx: Tensor) -> None:
        for cache in self.caches:
            cache.select_sources(src_idx, row_idx)


class Ensemble(nn.Module):
    """Several models (``encode`` / ``decode_step``) decoding as one.

    Args:
        models: members sharing the source and target vocabularies.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor) -> EnsembleMemory:
        return EnsembleMemory([member.encode(src_ids, src_pad_mask) for member in self.members])

    def decode_step(
        self,
        tgt_ids: Tensor,
        memory: EnsembleMemory,
        src_pad_mask: Tensor,
        cache: EnsembleCache | None = None,
        *,
        normalize: bool = True,
    ) -> tuple[Tensor, EnsembleCache]:
        """The combined log-probabilities; with ``normalize=False`` the members' mean log-probabilities,
        whose softmax is the same distribution (the members' own must be normalised to be combined)."""
        caches = cache.caches if cache is not None else [None] * len(self.members)
        steps = [
            member.decode_step(tgt_ids, member_memory, src_pad_mask, member_cache)
            for member, member_memory, member_cache in zip(self.members, memory.memories, caches)
        ]
        log_probs = combine([member_log_probs for member_log_probs, _ in steps], normalize=normalize)
        return log_probs, EnsembleCache([member_cache for _, member_cache in steps])


def combine(log_probs: Sequence[Tensor], *, normalize: bool = True) -> Tensor:
    """The ensemble's next-token log-probabilities: the members' mean, renormalised (unless ``normalize``
    is ``False``: the mean alone, whose softmax is the same)."""
    if len(log_probs) == 1:
        return log_probs[0]
    mean = torch.stack(list(log_probs)).mean(0)
    return F.log_softmax(mean, dim=-1) if normalize else mean
