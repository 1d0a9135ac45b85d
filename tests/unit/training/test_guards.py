"""The non-finite guard and the throughput meter as components, against hand-made gradients and a
hand-driven clock (the end-to-end behaviour in a training run is in the fault tests)."""

from __future__ import annotations

import math

import pytest
import torch

from mt.errors import NonFiniteLossError
from mt.training import throughput as throughput_module
from mt.training.guards import NonFiniteGuard
from mt.training.throughput import Throughput


def grads(*values: float) -> list[torch.Tensor]:
    return [torch.tensor([value, 0.0]) for value in values]


def test_finite_update_goes_ahead_clipped_to_clip_norm():
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=1.0)
    g = grads(3.0, 4.0)  # total norm 5
    skip, norm = guard.before_step(g, check_grads=True)
    assert not skip and norm.item() == pytest.approx(5.0)
    assert [t[0].item() for t in g] == pytest.approx([3.0 / (5.0 + 1e-6), 4.0 / (5.0 + 1e-6)])


def test_nonfinite_gradient_or_loss_skips_without_touching_the_gradients():
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=1.0)
    g = grads(3.0, math.nan)
    skip, norm = guard.before_step(g, check_grads=True)
    assert skip and not torch.isfinite(norm)
    assert g[0][0].item() == 3.0  # not clipped: clipping would have spread the NaN
    guard.observe_loss(torch.tensor(0.0))
    guard.observe_loss(torch.tensor(1.0))  # one micro-batch of the window had a non-finite loss
    skip, _ = guard.before_step(grads(0.1), check_grads=True)
    assert skip
    skip, _ = guard.before_step(grads(0.1), check_grads=True)  # the window starts afresh
    assert not skip


def test_without_gradient_checks_only_the_losses_count():
    """fp16: the grad scaler handles overflowing gradients, Lightning clips; the guard sees the losses."""
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=1.0)
    g = grads(math.inf)
    assert guard.before_step(g, check_grads=False) == (False, None)
    assert g[0][0].item() == math.inf
    guard.observe_loss(torch.tensor(1.0))
    assert guard.before_step(grads(1.0), check_grads=False) == (True, None)


def test_consecutive_skips_stop_the_run_at_the_limit_naming_steps_and_checkpoint():
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=0.0)
    for step in (5, 6):
        guard.skipped(step)
        guard.stop_at_limit(step, lambda: "unused")
    guard.before_step(grads(1.0), check_grads=True)  # a good update resets the run of skips
    assert guard.consecutive == 0 and guard.total == 2
    for step in (8, 9):
        guard.skipped(step)
        guard.stop_at_limit(step, lambda: "unused")
    guard.skipped(10)
    with pytest.raises(NonFiniteLossError, match=r"for 3 steps in a row \(steps 8-10\); the last good checkpoint is X"):
        guard.stop_at_limit(10, lambda: "X")
    assert guard.total == 5


def test_throughput_counts_tokens_per_second_over_windows_and_time_across_resumes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(throughput_module.time, "perf_counter", lambda: now[0])
    meter = Throughput(every=2)
    meter.previous_seconds = 30.0  # from the checkpoint
    meter.reset()
    now[0] = 101.0
    assert meter.update(500) is None
    now[0] = 102.0
    assert meter.update(300) == pytest.approx(400.0)  # 800 tokens in 2 s
    now[0] = 106.0
    assert meter.update(100) is None
    assert meter.update(100) == pytest.approx(50.0)  # 200 tokens in 4 s
    assert meter.elapsed_seconds() == pytest.approx(36.0)
    assert meter.elapsed_hours() == pytest.approx(36.0 / 3600)
