"""Target tokens per second between log points, and training wall time across resumes."""

from __future__ import annotations

import time


class Throughput:
    """Tokens a second over the updates since the last reading (``rate``, read at logging steps); training
    seconds including earlier runs (``previous_seconds``, restored from the checkpoint)."""

    def __init__(self) -> None:
        self.previous_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.window_start = self.start
        self.window_tokens = 0

    def update(self, tokens: int) -> None:
        """Count one update's tokens (a number known on the host)."""
        self.window_tokens += tokens

    def rate(self) -> float:
        """Tokens a second since the previous reading (or the start), and start the next window."""
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, 0
        return rate

    def elapsed_seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.start

    def elapsed_hours(self) -> float:
        return self.elapsed_seconds() / 3600.0
