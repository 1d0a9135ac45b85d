"""Target tokens per second between log points, training wall time across resumes, and the model FLOPs a
target token costs (for model FLOPs utilisation)."""

from __future__ import annotations

import time

from torch import Tensor


class Throughput:
    """Tokens a second over the updates since the last reading (``rate``, read at logging steps), the time between
    ``pause`` and ``resume`` (validation, and the saves after it) left out; training seconds including earlier runs
    (``previous_seconds``, restored from the checkpoint), pauses included."""

    def __init__(self) -> None:
        self.previous_seconds = 0.0
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.window_start = self.start
        self.window_tokens: float | Tensor = 0
        self.paused_at: float | None = None

    def update(self, tokens: int | Tensor) -> None:
        """Count one batch's tokens: a number, or a tensor on the device (added there: no host sync)."""
        self.window_tokens = self.window_tokens + tokens

    def pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = time.perf_counter()

    def resume(self) -> None:
        if self.paused_at is not None:
            self.window_start += time.perf_counter() - self.paused_at
            self.paused_at = None

    def rate(self) -> float | Tensor:
        """Tokens a second since the previous reading (or the start), and start the next window (a tensor where
        the tokens were counted on the device, read with the other logged values)."""
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, 0
        return rate

    def elapsed_seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.start

    def elapsed_hours(self) -> float:
        return self.elapsed_seconds() / 3600.0


def flops_per_target_token(model: dict, vocab_size: int) -> int:
    """Training FLOPs of one target token through the whole model: 6 per multiply-add of a weight (forward 2,
    backward 4), with the source as long as the target; attention scores (about 2% at translation lengths)
    and embeddings' lookups are not counted.

    ``model``: ``d_model``, ``d_ff``, ``encoder_layers``, ``decoder_layers`` (a ``ModelConfig`` as a dict).
    """
    d, ff = model["d_model"], model["d_ff"]
    encoder = model["encoder_layers"] * (4 * d * d + 2 * d * ff)  # self-attention (q, k, v, out) and FFN
    decoder = model["decoder_layers"] * (8 * d * d + 2 * d * ff) + d * vocab_size  # + cross-attention, output
    return 6 * (encoder + decoder)
