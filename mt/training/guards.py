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


def clip_coefficient(norm: Tensor, max_norm: float) -> Tensor:
    """What gradients of total norm ``norm`` are multiplied by to be clipped to ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``'s arithmetic, without its second pass over the gradients or a host sync)."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


class NonFiniteGuard:
    """Counts non-finite losses over an accumulation window and decides, before each optimizer step and on
    the device, whether the update goes ahead (then clipped to ``clip_norm``) or is skipped.

    The decision and the counts of skipped updates stay on the device, so an ordinary step never waits for
    it: a fused optimizer skips through ``mt.compat.skip_next_step``, and the counts are read (``check``) at
    logging steps and before a checkpoint is written. Once ``max_consecutive`` updates in a row were skipped,
    every later update is skipped too, so the run stops at the next check with the weights, checkpoints and
    message it would have had stopping at once.

    Args:
        max_consecutive: skipped updates in a row that stop the run.
        clip_norm: the gradients' total norm is clipped to this (0: no clipping).
    """

    def __init__(self, max_consecutive: int, clip_norm: float) -> None:
        self.max_consecutive = max_consecutive
        self.clip_norm = clip_norm
        self.window: Tensor | float = 0.0  # non-finite losses since the last optimizer step (on the device)
        # On the device: skipped updates in a row, skipped in all, the step at which the limit was reached and
        # the last skipped step (-1: none).
        self.counters: Tensor | None = None
        self.reported = 0  # skipped updates already warned about
        self._restored = [0, 0, -1, -1]  # the counters a resumed run starts from (put on the device when first used)

    def state_dict(self) -> dict[str, int]:
        """The counts, read on the host (a checkpoint's save reads them anyway, ``check``), so that a resumed run
        stops after as many skipped updates in a row as an uninterrupted one."""
        consecutive, total, _, last_skipped = self.counters.tolist() if self.counters is not None else self._restored
        return {"consecutive": consecutive, "total": total, "last_skipped": last_skipped, "reported": self.reported}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = [state["consecutive"], state["total"], -1, state["last_skipped"]]
        self.reported = state["reported"]
        self.counters = None

    def observe_loss(self, nonfinite: Tensor) -> None:
        """Add this micro-batch's flag (1.0 when its loss, summed over the ranks, is not finite)."""
        self.window = self.window + nonfinite

    def before_step(
        self, grads: list[Tensor], *, check_grads: bool, step: int = 0, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Whether the update at ``step`` must be skipped (a bool tensor on the device), and the gradients'
        total norm (``check_grads``: computed, checked and, if the update goes ahead, clipped with; else
        ``None``, e.g. under fp16, whose grad scaler skips overflowing steps itself and whose clipping
        Lightning does after unscaling). ``scale``: a factor (on the device) the gradients are multiplied by
        first, in the same pass as the clipping (the norm is theirs after it). Skipped updates leave the
        gradients as they are."""
        flags, self.window = self.window, 0.0
        norm = None
        if grads and check_grads:
            norm = total_norm(grads) if scale is None else total_norm(grads) * scale
            flags = flags + (~norm.isfinite()).float()
        device = grads[0].device if grads else flags.device if isinstance(flags, Tensor) else None
        skip = torch.as_tensor(flags, device=device) > 0
        if self.counters is None:
            self.counters = torch.tensor(self._restored, device=skip.device)
        consecutive, total, limit_at, last_skipped = self.counters.unbind()
        skip = skip | (limit_at >= 0)  # past the limit nothing changes until the run stops
        consecutive = torch.where(skip, consecutive + 1, 0)
        limit_at = torch.where((limit_at < 0) & (consecutive >= self.max_consecutive), step, limit_at)
        self.counters = torch.stack([consecutive, total + skip, limit_at, torch.where(skip, step, last_skipped)])
        factor = scale
        if norm is not None and self.clip_norm > 0:
            clip = clip_coefficient(norm, self.clip_norm)
            factor = clip if scale is None else clip * scale
        if factor is not None:
            foreach_mul_(grads, torch.where(skip, 1.0, factor))  # x * 1.0 is x: skipped gradients stay as they are
        return skip, norm

    def check(self, last_checkpoint: Callable[[], str]) -> int:
        """Read the counts on the host (the one sync): warn about updates skipped since the last check, raise
        ``NonFiniteLossError`` if ``max_consecutive`` in a row were, and return the number skipped in all."""
        if self.counters is None:
            return 0
        consecutive, total, limit_at, last_skipped = (int(v) for v in self.counters.tolist())
        if total > self.reported:
            log.warning(
                "%d update(s) skipped because the loss or a gradient was not finite (the last at step %d, %d in a "
                "row, limit %d)",
                total - self.reported,
                last_skipped,
                min(consecutive, self.max_consecutive),
                self.max_consecutive,
            )
            self.reported = total
        if limit_at >= 0:
            raise NonFiniteLossError(
                f"the loss or a gradient was not finite for {self.max_consecutive} steps in a row (steps "
                f"{limit_at - self.max_consecutive + 1}-{limit_at}); the last good checkpoint is {last_checkpoint()}: "
                f"lower optim.lr, raise optim.warmup_steps or use trainer.precision=bf16-mixed/32-true"
            )
        return total
