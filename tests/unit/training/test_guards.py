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
    g = grads(0.5, 2.0**100)
    skip, _ = guard.before_step(g, check_grads=True)
    assert skip and g[0][0].item() == 0.5 and g[1][0].item() == 2.0**100  # bit for bit
    skip, _ = guard.before_step(grads(0.1), check_grads=True)  # the window starts afresh
    assert not skip


def test_without_gradient_checks_only_the_losses_count():
    """fp16: the grad scaler handles overflowing gradients, Lightning clips; the guard sees the losses."""
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=1.0)
    g = grads(math.inf)
    skip, norm = guard.before_step(g, check_grads=False)
    assert not skip and norm is None
    assert g[0][0].item() == math.inf
    guard.observe_loss(torch.tensor(1.0))
    skip, norm = guard.before_step(grads(1.0), check_grads=False)
    assert skip and norm is None


def step(guard: NonFiniteGuard, at: int, finite: bool) -> bool:
    return bool(guard.before_step(grads(1.0 if finite else math.nan), check_grads=True, step=at)[0])


def test_the_counts_stay_on_the_device_until_checked_and_name_the_steps_where_the_limit_was_reached():
    guard = NonFiniteGuard(max_consecutive=3, clip_norm=0.0)
    assert guard.check(lambda: "unused") == 0  # nothing yet
    for at, finite in [(5, False), (6, False), (7, True), (8, False), (9, False)]:
        assert step(guard, at, finite) is not finite
    assert guard.check(lambda: "unused") == 4  # a good update (7) reset the run of skips: no stop
    assert step(guard, 10, False)  # the third in a row: the limit, reached at step 10
    assert step(guard, 11, True)  # past the limit a finite update is skipped too, until the run stops
    with pytest.raises(NonFiniteLossError, match=r"for 3 steps in a row \(steps 8-10\); the last good checkpoint is X"):
        guard.check(lambda: "X")
    with pytest.raises(NonFiniteLossError, match=r"steps 8-10"):  # and at every later check
        guard.check(lambda: "X")


def test_a_run_of_skips_checked_late_reports_the_first_limit_not_the_later_steps():
    guard = NonFiniteGuard(max_consecutive=2, clip_norm=0.0)
    for at in range(20, 26):
        step(guard, at, False)
    with pytest.raises(NonFiniteLossError, match=r"for 2 steps in a row \(steps 20-21\)"):
        guard.check(lambda: "X")


def test_throughput_counts_tokens_per_second_between_readings_and_time_across_resumes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(throughput_module.time, "perf_counter", lambda: now[0])
    meter = Throughput()
    meter.previous_seconds = 30.0  # from the checkpoint
    meter.reset()
    now[0] = 101.0
    meter.update(500)
    now[0] = 102.0
    meter.update(300)
    assert meter.rate() == pytest.approx(400.0)  # 800 tokens in 2 s
    now[0] = 106.0
    meter.update(100)
    meter.update(100)
    assert meter.rate() == pytest.approx(50.0)  # 200 tokens in 4 s
    assert meter.elapsed_seconds() == pytest.approx(36.0)
    assert meter.elapsed_hours() == pytest.approx(36.0 / 3600)
    # Validation (and the saves after it) between two readings: its time is left out of the rate, not the total.
    meter.update(torch.tensor(300.0))  # counted on the device
    now[0] = 108.0
    meter.pause()
    now[0] = 150.0
    meter.resume()
    now[0] = 109.0 + 42.0
    assert float(meter.rate()) == pytest.approx(100.0)  # 300 tokens in 3 s of training
    assert meter.elapsed_seconds() == pytest.approx(30.0 + 51.0)
