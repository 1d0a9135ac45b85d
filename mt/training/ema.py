"""An exponential moving average of the weights (``optim.ema_decay``), kept beside them by a callback: updated
after every update, swapped in for validation (so its scores choose ``best.ckpt``), and saved as the checkpoint's
``state_dict`` — what evaluate, translate, report, average, export and ``init_from`` read — with the weights being
trained in ``current_model_state`` and the count of averaged updates in ``averaging_state``, so a resumed run goes
on exactly. The checkpoint layout is Lightning's ``WeightAveraging``'s; the callback is ours, on torch's public
``AveragedModel``, because Lightning's swaps weights after the module has scored them and through ``.data``
(which leaves tensor versions, and so packed-weight caches keyed on them, unchanged).

The average starts from the first update's weights and its decay grows with the updates it has seen, as
Marian's and fairseq's do, so a short run is not dominated by its first weights:
``ema = d_n * ema + (1 - d_n) * w`` with ``d_n = min(decay, (1 + n) / (10 + n))``, ``n`` the updates averaged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def warm_ema(decay: float):
    """``AveragedModel``'s ``multi_avg_fn`` for the warmed-up exponential average above."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = num_averaged.float()  # on the device: no host sync
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        for a, c in zip(averaged, current):
            a.lerp_(c.to(a.dtype), weight.to(a.dtype))

    return update


@torch.no_grad()
def swap_parameters(first: nn.Module, second: nn.Module) -> None:
    """Exchange the parameter values of two modules of one architecture (in place, versions bumped)."""
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        held = a.detach().clone()
        a.copy_(b)
        b.copy_(held)


class ExponentialMovingAverage(L.Callback):
    """The moving average of ``pl_module.model``'s parameters (its buffers are constants)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.average: AveragedModel | None = None
        self._updated_at_step = 0  # global_step of the last update averaged (none at 0)
        self._host_count = 0  # updates averaged, as the device's n_averaged (read at train start)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.average is None:
            self.average = AveragedModel(pl_module.model, multi_avg_fn=warm_ema(self.decay), use_buffers=False)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ``setup`` runs before the strategy moves the model to its device (and a resumed average is loaded where
        # it was built): the average goes where the weights it follows are, or a GPU run mixes devices.
        if self.average is not None:
            self.average.to(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Read once here (after a resume restored it), so that no update has to read the device's count.
        self._host_count = int(self.average.n_averaged)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step > self._updated_at_step:  # an update ended (not inside an accumulation window)
            self._update(pl_module.model)
            self._updated_at_step = trainer.global_step

    @torch.no_grad()
    def _update(self, model: nn.Module) -> None:
        """``AveragedModel.update_parameters`` without its host reads of ``n_averaged`` (a sync every update):
        the first update copies the weights, later ones average them (``warm_ema``); the count is kept on the
        host beside the device's."""
        averaged = [p.detach() for p in self.average.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if self._host_count == 0:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            self.average.multi_avg_fn(averaged, current, self.average.n_averaged)
        self.average.n_averaged += 1
        self._host_count += 1

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.average is not None:
            swap_parameters(pl_module.model, self.average.module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module has scored the average (on_validation_epoch_end) and before the checkpoint writers
        # run (Lightning orders them last), which must find the weights being trained in the module.
        if self.average is not None:
            swap_parameters(pl_module.model, self.average.module)

    def state_dict(self) -> dict[str, Any]:
        return {"updated_at_step": self._updated_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._updated_at_step = int(state_dict["updated_at_step"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.average is None:
            return
        current = checkpoint["state_dict"]
        checkpoint["current_model_state"] = current
        averaged = {f"model.{name}": value for name, value in self.average.module.state_dict().items()}
        checkpoint["state_dict"] = {**current, **averaged}
        checkpoint["averaging_state"] = {"n_averaged": self.average.n_averaged.detach().clone()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.average is None or "current_model_state" not in checkpoint:
            return  # a checkpoint without an average: it starts from the weights at the first update
        averaged = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        self.average.module.load_state_dict(averaged)
        self.average.n_averaged.copy_(checkpoint["averaging_state"]["n_averaged"])
        pl_module.load_state_dict(checkpoint["current_model_state"])  # the weights being trained
