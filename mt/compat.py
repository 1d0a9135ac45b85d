"""The private APIs of torch, Lightning, datasets and CTranslate2 that mt still needs, each behind one
function here and nowhere else.

A library may change any of these in a minor release. ``tests/unit/test_compat.py`` calls each one
against the installed library and checks the behaviour mt relies on, so an upgrade that breaks one
fails there, by name, rather than silently somewhere in a training run. docs/design.md lists them
and why each is needed. This module imports only torch at import time (decoding imports it through
``mt.model.layers``); the others are reached through the objects passed in.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

# -- torch ----------------------------------------------------------------------------------------


def foreach_norm(tensors: list[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor in one fused pass (``torch._foreach_norm``, as ``clip_grad_norm_``)."""
    return torch._foreach_norm(tensors)


def foreach_mul_(tensors: list[Tensor], scalar: Tensor) -> None:
    """Multiply every tensor in place by one (device) scalar (``torch._foreach_mul_``, as ``clip_grad_norm_``)."""
    torch._foreach_mul_(tensors, scalar)


def fused_step_skippable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` runs a fused kernel that ``skip_next_step`` can turn off on the device."""
    # Every group: a resumed optimizer takes its groups (``fused`` included) from the checkpoint.
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def skip_next_step(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """Make ``optimizer``'s next ``step()`` change nothing where ``skip`` (a 0-dim bool tensor on the device)
    is true, without reading it on the host: the fused Adam(W) kernel's ``found_inf`` input, which the
    optimizer reads from its ``found_inf`` attribute at each step (as ``torch.amp.GradScaler`` passes it).
    The kernel then leaves parameters and moments untouched and the step counts are taken back."""
    optimizer.found_inf = skip.to(torch.float32)


def raise_recompile_limit(limit: int) -> None:
    """Let dynamo compile a function at least ``limit`` times before falling back to eager.

    All compiled layers run through one function (``Module._call_impl``), whose versions share one limit:
    train and eval mode of each layer kind, plus batches of one row, would reach torch's default of 8.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)


def no_duck_sizing() -> None:
    """Give every dynamic dimension of a compiled graph its own symbol, even where two sizes are equal
    (``torch.fx.experimental._config.use_duck_shape``). With duck sizing a layer first traced with a source
    width different from its target width is guarded on their staying different, and recompiles at the first
    batch where they coincide, which widths padded to multiples of 8 make common."""
    from torch.fx.experimental import _config

    _config.use_duck_shape = False


def tensor_version(tensor: Tensor) -> int:
    """The in-place modification counter of ``tensor`` (``Tensor._version``), -1 for an inference tensor
    (which has none): a cache keyed by it is rebuilt after an optimiser step changes the weight in place."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear (CPU builds with mkldnn, torch >= 2.1)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def onednn_pack_linear_weight(weight: Tensor, rows: int) -> Tensor:
    """``weight`` (out, in) reordered once into oneDNN's blocked layout for about ``rows`` input rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def onednn_linear(x: Tensor, packed_weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN with a weight from ``onednn_pack_linear_weight``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


# -- Lightning ------------------------------------------------------------------------------------


def logged_step(trainer: Any) -> int:
    """The step at which Lightning writes this update's logged values (its count of optimizer steps
    taken, before this one's: ``fit_loop.epoch_loop._batches_that_stepped``)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def logs_this_update(trainer: Any) -> bool:
    """Whether Lightning writes this update's logged values: its ``should_update_logs`` rule for a training
    step, less the ``should_stop`` case, which can still change after the step (callers check it then)."""
    return (logged_step(trainer) + 1) % trainer.log_every_n_steps == 0


def is_last_batch(trainer: Any) -> bool:
    """Whether the training batch that just ended is its epoch's last (``fit_loop.epoch_loop.batch_progress``:
    Lightning's private loop classes)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def align_logged_step(trainer: Any) -> None:
    """Make the step Lightning logs this update at its count of updates taken (``global_step``), as it is at
    every batch start of an uninterrupted run. Resumed from a checkpoint written at ``on_validation_end``
    of a run's last update (stopped early or by a time limit), Lightning takes it for an end-of-training save
    and restores the count one short: every step logged after the resume was one too low."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


def epoch_batches_done(trainer: Any) -> int:
    """The training batches of the current epoch that Lightning counts as done on this rank before the one in
    progress (asked from ``on_train_batch_start``: ``fit_loop.epoch_loop.batch_progress.current.completed``)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)


def set_epoch_batches_done(trainer: Any, count: int) -> None:
    """From ``on_train_batch_start``: make Lightning count ``count`` training batches of the current epoch as done
    on this rank before the one in progress (every counter of ``fit_loop.epoch_loop.batch_progress`` and the run's
    totals moved alike, and the data fetcher's count, ``fit_loop._data_fetcher.fetched``), so that it ends the
    epoch, and validates at its end, when the sampler does."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    shift = count - progress.current.completed
    for name in ("ready", "started", "processed", "completed"):
        setattr(progress.current, name, getattr(progress.current, name) + shift)
        setattr(progress.total, name, getattr(progress.total, name) + shift)
    # The data fetcher counts the epoch's batches from the restored count too (``is_last_batch``, at its length).
    trainer.fit_loop._data_fetcher.fetched += shift


def validates_after_this_batch(trainer: Any) -> bool:
    """Whether Lightning validates once the hooks of the training batch in progress are over (asked from
    ``on_train_batch_end``): ``_TrainingEpochLoop._should_check_val_fx`` with the fit loop's data fetcher, the
    question the epoch loop asks right after those hooks (less a validation it skips once after a restart)."""
    loop = trainer.fit_loop
    epoch_loop = loop.epoch_loop
    return bool(epoch_loop._should_check_val_fx(loop._data_fetcher)) and not epoch_loop._skip_next_val


def skip_sigterm_broadcast(trainer: Any) -> None:
    """Stop the fit loop of ``trainer`` from broadcasting rank 0's SIGTERM flag before every batch
    (``_TrainingEpochLoop._broadcast_sigterm_tensor``): a tensor copied to the device and read back, a host sync
    at every batch under NCCL. For runs whose own handler takes SIGTERM once training starts (``PreemptionCallback``),
    when the flag Lightning broadcasts can no longer change."""
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None


def save_last_checkpoint(callback: Any, trainer: Any) -> None:
    """Let a ``ModelCheckpoint`` write its ``last.ckpt`` now, unless this step is already saved or the
    trainer must not save (sanity check, ``fast_dev_run``): its own ``save_last`` logic, called from
    hooks where Lightning does not call it."""
    if not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def mark_checkpoint_saved(callback: Any, step: int) -> None:
    """Tell a ``ModelCheckpoint`` that ``step`` is saved already (Lightning forgets it across a resume)."""
    callback._last_global_step_saved = step


VAL_CHECK_INTERVAL_MESSAGE = re.compile(r"val_check_interval` \(\d+\) must be .* training batches \((\d+)\)")


def val_check_interval_overflow(error: BaseException) -> int | None:
    """The number of batches in an epoch, if ``error`` is Lightning's refusal of a ``val_check_interval``
    larger than an epoch (a ValueError raised inside ``fit``, recognised by its message), else None."""
    match = VAL_CHECK_INTERVAL_MESSAGE.search(str(error)) if isinstance(error, ValueError) else None
    return int(match[1]) if match else None


# -- datasets -------------------------------------------------------------------------------------


def dataset_fingerprint(dataset: Any) -> str:
    """The fingerprint ``datasets`` keys a dataset's cached transforms by (``Dataset._fingerprint``)."""
    return dataset._fingerprint


def set_dataset_fingerprint(dataset: Any, fingerprint: str) -> None:
    """Give a dataset opened from a file the fingerprint of its content, so the transforms cached for that
    content are found again (``Dataset.from_file`` fingerprints the path and its modification time)."""
    dataset._fingerprint = fingerprint


def has_indices_mapping(dataset: Any) -> bool:
    """Whether the dataset reads its rows through an indices mapping (after ``select``, ``shuffle``, ...),
    so its Arrow files are not its rows in order (``Dataset._indices``)."""
    return dataset._indices is not None


# -- sacreBLEU -------------------------------------------------------------------------------------


def sacrebleu_tokenizer_for(lang: str | None) -> str:
    """The BLEU tokenizer sacreBLEU chooses for target language ``lang`` (``BLEU._TOKENIZER_MAP``), found without
    building it: building ja-mecab or ko-mecab fails where their packages are missing, and the error names it."""
    from sacrebleu.metrics import BLEU

    return BLEU._TOKENIZER_MAP.get(lang or "", BLEU.TOKENIZER_DEFAULT)


# -- CTranslate2 ----------------------------------------------------------------------------------


def ctranslate2_convert(spec: Any, output: str, *, quantization: str | None) -> None:
    """Write a built CTranslate2 model ``spec`` into the directory ``output`` through CTranslate2's own
    converter, which validates and quantizes it (a ``Converter`` whose ``_load`` returns the spec: the
    hook CTranslate2's converters implement)."""
    import ctranslate2

    class _SpecConverter(ctranslate2.converters.Converter):
        def _load(self):
            return spec

    _SpecConverter().convert(output, quantization=quantization, force=True)
