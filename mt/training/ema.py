"""An exponential moving average of the weights (``optim.ema_decay``), through Lightning's ``WeightAveraging``:
kept beside the weights, updated after every update, swapped in for validation (so it chooses ``best.ckpt``),
and saved as the checkpoint's ``state_dict`` — what evaluate, translate, report, average and export read — with
the weights being trained in ``current_model_state``, so a resumed run goes on exactly.

The average starts from the first update's weights and its decay grows with the updates it has seen, as
Marian's and fairseq's do, so a short run is not dominated by its first weights:
``ema = d_n * ema + (1 - d_n) * w`` with ``d_n = min(decay, (1 + n) / (10 + n))``, ``n`` the updates averaged.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor


def warm_ema(decay: float):
    """``AveragedModel``'s ``multi_avg_fn`` for the warmed-up exponential average above."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = num_averaged.float()  # on the device: no host sync
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        for a, c in zip(averaged, current):
            a.lerp_(c.to(a.dtype), weight.to(a.dtype))

    return update


class ExponentialMovingAverage(WeightAveraging):
    """Lightning's weight averaging with ``warm_ema``; parameters only (the model's buffers are constants)."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=False, multi_avg_fn=warm_ema(decay))
        self.decay = decay
