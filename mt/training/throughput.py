"""Target tokens per second between log points, and training wall time across resumes."""

from __future__ import annotations

import time


class Throughput:
    """Tokens a second over windows of ``every`` updates; training seconds including earlier runs
    (``previous_seconds``, restored from the checkpoint)."""

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self.previous_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.window_start = self.start
        self.window_tokens = 0
        self.window_steps = 0

    def update(self, tokens: int) -> float | None:
        """Count one update's tokens; the rate at the end of each window, else ``None``."""
        self.window_tokens += tokens
        self.window_steps += 1
        if self.window_steps < self.every:
            return None
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens, self.window_steps = now, 0, 0
        return rate

    def elapsed_seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.start

    def elapsed_hours(self) -> float:
        return self.elapsed_seconds() / 3600.0
