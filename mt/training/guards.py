"""The non-finite guard: an update whose loss or gradients are not finite is skipped, not applied.

One NaN step would otherwise spread NaN into every weight (and clipping, which scales by the norm,
would do it too), so the check comes before clipping, and both use one total norm of the gradients.
After ``max_consecutive`` skipped updates in a row the run stops with ``NonFiniteLossError``, naming
the last good checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from mt.compat import foreach_mul_, foreach_norm
from mt.errors import NonFiniteLossError

log = logging.getLogger(__name__)


def total_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all ``grads`` together: infinite or NaN when any element is."""
    return torch.linalg.vector_norm(torch.stack(foreach_norm(grads)))  # as clip_grad_norm_ forms it


def clip_by_total_norm_(grads: list[Tensor], norm: Tensor, max_norm: float) -> None:
    """Scale ``grads`` in place so that their total norm is at most ``max_norm``, given that norm
    (``torch.nn.utils.clip_grad_norm_``'s arithmetic, without its second pass over the gradients
    or a host sync)."""
    foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))


class NonFiniteGuard:
    """Counts non-finite losses over an accumulation window and decides, before each optimizer step,
    whether the update goes ahead (then clipped to ``clip_norm``) or is skipped.

    Args:
        max_consecutive: skipped updates in a row that stop the run.
        clip_norm: the gradients' total norm is clipped to this (0: no clipping).
    """

    def __init__(self, max_consecutive: int, clip_norm: float) -> None:
        self.max_consecutive = max_consecutive
        self.clip_norm = clip_norm
        self.window: Tensor | float = 0.0  # non-finite losses since the last optimizer step (on the device)
        self.consecutive = 0
        self.total = 0

    def observe_loss(self, nonfinite: Tensor) -> None:
        """Add this micro-batch's flag (1.0 when its loss, summed over the ranks, is not finite)."""
        self.window = self.window + nonfinite

    def before_step(self, grads: list[Tensor], *, check_grads: bool) -> tuple[bool, Tensor | None]:
        """Whether this update must be skipped, and the gradients' total norm (``check_grads``: computed,
        checked and, if the update goes ahead, clipped with; else ``None``, e.g. under fp16, whose grad
        scaler skips overflowing steps itself and whose clipping Lightning does after unscaling)."""
        flags, self.window = self.window, 0.0
        norm = None
        if grads and check_grads:
            norm = total_norm(grads)
            flags = flags + (~norm.isfinite()).float()
        skip = bool(flags)  # the step's one host sync, after backward
        if not skip:
            self.consecutive = 0
            if norm is not None and self.clip_norm > 0:
                clip_by_total_norm_(grads, norm, self.clip_norm)
        return skip, norm

    def skipped(self, step: int) -> None:
        """Count an update skipped at ``step``."""
        self.consecutive += 1
        self.total += 1
        log.warning(
            "step %d: the loss or a gradient is not finite; update skipped (%d in a row, limit %d)",
            step,
            self.consecutive,
            self.max_consecutive,
        )

    def stop_at_limit(self, step: int, last_checkpoint: Callable[[], str]) -> None:
        """Raise ``NonFiniteLossError`` once ``max_consecutive`` updates in a row were skipped."""
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"the loss or a gradient was not finite for {self.consecutive} steps in a row (steps "
                f"{step - self.consecutive + 1}-{step}); the last good checkpoint is {last_checkpoint()}: "
                f"lower optim.lr, raise optim.warmup_steps or use trainer.precision=bf16-mixed/32-true"
            )
