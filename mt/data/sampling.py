"""Uniform samples of streams of unknown length: the tokenizer's training sentences.

``Reservoir`` is Vitter's algorithm R with one uniform draw per streamed item, so the sample depends
on the seed and the stream only, not on how the stream is chunked; chunks are processed with numpy,
and only the items that enter the sample are materialised (``take``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class Reservoir(Generic[T]):
    """A uniform sample of ``size`` items (all of them, in order, if the stream is shorter)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.items: list[T] = []
        self.seen = 0

    def add(self, count: int, take: Callable[[np.ndarray], list[T]]) -> None:
        """Offer the next ``count`` items; ``take(rows)`` returns the items at those chunk positions."""
        start = self.seen
        self.seen += count
        draws = self.rng.random(count)  # PCG64 doubles: chunking does not change the sequence
        fill = min(count, max(0, self.size - start))
        if fill:
            self.items.extend(take(np.arange(fill)))
        if fill == count:
            return
        positions = np.arange(start + fill, start + count, dtype=np.int64)
        slots = np.minimum((draws[fill:] * (positions + 1)).astype(np.int64), positions)  # uniform in 0..position
        hits = np.flatnonzero(slots < self.size)
        if not len(hits):
            return
        # Within a chunk a later item replaces an earlier one in the same slot: keep each slot's last hit.
        reversed_slots = slots[hits][::-1]
        slot_ids, first_in_reversed = np.unique(reversed_slots, return_index=True)
        rows = hits[len(hits) - 1 - first_in_reversed] + fill
        for slot, item in zip(slot_ids.tolist(), take(rows)):
            self.items[slot] = item


def reservoir_sample(items: Iterable[T], size: int, seed: int, *, chunk: int = 65_536) -> list[T]:
    """A uniform sample of ``size`` of ``items`` (streamed in chunks; all of them if fewer)."""
    reservoir: Reservoir[T] = Reservoir(size, seed)
    iterator = iter(items)
    while block := list(islice(iterator, chunk)):
        reservoir.add(len(block), lambda rows, block=block: [block[i] for i in rows.tolist()])
    return reservoir.items
