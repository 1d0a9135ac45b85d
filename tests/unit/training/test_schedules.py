"""Learning-rate schedules: values at chosen steps computed by hand, the budget in steps and in time (with a
clock the test controls), the floor, and a restored scheduler that goes on as the uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

from mt.config import OptimConfig
from mt.errors import ConfigError
from mt.training.schedules import WarmupDecay, lr_factor


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(scheduler: WarmupDecay, steps: int) -> list[float]:
    """The learning rate used by each of the next ``steps`` updates."""
    found = []
    for _ in range(steps):
        found.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return found


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # warm-up 4 steps, budget 12 steps, floor 0.1; step 0 counts as step 1 (the first update's rate)
        ("inverse_sqrt", [0.25, 0.25, 0.5, 0.75, 1.0, math.sqrt(4 / 5), math.sqrt(4 / 6)]),
        ("linear", [0.25, 0.25, 0.5, 0.75, 1.0, 0.1 + 0.9 * (1 - 1 / 8), 0.1 + 0.9 * (1 - 2 / 8)]),
        (
            "cosine",
            [
                0.25,
                0.25,
                0.5,
                0.75,
                1.0,
                0.1 + 0.45 * (1 + math.cos(math.pi / 8)),
                0.1 + 0.45 * (1 + math.cos(math.pi / 4)),
            ],
        ),
        ("constant", [0.25, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
    ],
)
def test_each_schedule_at_chosen_steps(schedule, expected):
    scheduler = WarmupDecay(optimizer(2.0), schedule=schedule, warmup_steps=4, floor=0.1, total_steps=12)
    got = lrs(scheduler, 16)
    assert got[:7] == pytest.approx([2.0 * e for e in expected])
    if schedule in ("linear", "cosine"):  # the floor at the end of the budget, and after it
        assert got[12:] == pytest.approx([0.2] * 4)


def test_inverse_sqrt_stops_at_its_floor():
    scheduler = WarmupDecay(optimizer(), schedule="inverse_sqrt", warmup_steps=4, floor=0.5)
    assert lrs(scheduler, 40)[-1] == pytest.approx(0.5)  # sqrt(4 / 39) < 0.5


def test_a_restored_scheduler_goes_on_as_the_uninterrupted_one():
    straight = lrs(WarmupDecay(optimizer(), schedule="cosine", warmup_steps=3, total_steps=20), 20)
    first = WarmupDecay(optimizer(), schedule="cosine", warmup_steps=3, total_steps=20)
    head = lrs(first, 9)
    # As Lightning restores a run: build both anew, then load the optimizer's state, then the scheduler's.
    second = WarmupDecay(optimizer(), schedule="cosine", warmup_steps=3, total_steps=20)
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.load_state_dict(first.state_dict())
    assert head + lrs(second, 11) == straight


def test_a_run_extended_with_a_larger_budget_decays_over_the_larger_one():
    """The restored state is where the schedule stands; its budget is the resumed run's config."""
    short = WarmupDecay(optimizer(), schedule="linear", warmup_steps=2, total_steps=10)
    lrs(short, 10)
    longer = WarmupDecay(optimizer(), schedule="linear", warmup_steps=2, total_steps=20)
    longer.optimizer.load_state_dict(short.optimizer.state_dict())
    longer.load_state_dict(short.state_dict())
    assert longer.total_steps == 20 and longer.last_epoch == 10
    assert lrs(longer, 1) == pytest.approx([1 - 8 / 18])  # update 11 of a 20-update budget


class Clock:
    """Training seconds as the test says: the time budget without waiting."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def test_a_time_budget_decays_from_the_end_of_the_warm_up_to_the_floor_at_max_time():
    clock = Clock()

    def scheduler() -> WarmupDecay:
        return WarmupDecay(
            optimizer(), schedule="linear", warmup_steps=2, floor=0.2, budget="time", total_seconds=100.0, clock=clock
        )

    def advance(schedule: WarmupDecay, seconds: float) -> float:
        """One update ends at ``seconds`` of training: the rate of the next one."""
        clock.seconds = seconds
        schedule.optimizer.step()
        schedule.step()
        return schedule.optimizer.param_groups[0]["lr"]

    first = scheduler()
    assert first.optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # update 1 of a 2-update warm-up
    seen = [advance(first, seconds) for seconds in (0, 10, 55, 100, 130)]
    # The warm-up ends at 10 s; 90 s of the 100 s budget remain for the decay to the floor.
    assert seen == pytest.approx([0.5, 1.0, 0.2 + 0.8 * (1 - 45 / 90), 0.2, 0.2])
    assert first.warmup_end_seconds == 10.0 and "_clock" not in first.state_dict()
    # Resumed: the saved state keeps t_w, and the clock goes on from the training seconds saved with it.
    resumed = scheduler()
    resumed.load_state_dict(first.state_dict())
    assert advance(resumed, 70.0) == pytest.approx(0.2 + 0.8 * (1 - 60 / 90))


def test_the_factor_is_the_documented_formula():
    assert lr_factor("cosine", 10, 4, 0.5, 0.0) == pytest.approx(0.5)
    assert lr_factor("linear", 2, 4, 0.9, 0.3) == pytest.approx(0.5)  # still warming up
    with pytest.raises(ValueError, match="expected one of inverse_sqrt, linear, cosine, constant"):
        lr_factor("step", 1, 1, 0.0, 0.0)


def test_impossible_schedule_settings_are_one_line_errors():
    from mt.config import TrainConfig, TrainerConfig

    with pytest.raises(ConfigError, match="optim.schedule='exp': expected inverse_sqrt, linear, cosine or constant"):
        OptimConfig(schedule="exp")
    with pytest.raises(ConfigError, match="optim.lr_floor=0.1: expected 0 <= lr_floor <= optim.lr"):
        OptimConfig(lr=0.01, lr_floor=0.1)
    with pytest.raises(ConfigError, match="decays over trainer.max_steps, which must exceed optim.warmup_steps=4000"):
        TrainConfig(optim=OptimConfig(schedule="cosine"), trainer=TrainerConfig(max_steps=100))
    with pytest.raises(ConfigError, match="optim.decay_budget=time decays over trainer.max_time, which is not set"):
        TrainConfig(optim=OptimConfig(schedule="linear", decay_budget="time"), trainer=TrainerConfig(max_time=None))
