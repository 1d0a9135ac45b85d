"""Target tokens per second between log points, training wall time across resumes, and the model FLOPs a
target token costs (for model FLOPs utilisation)."""

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
