"""Checkpoint averaging (``mt.average``, ``mt.report``'s averaged row): the mean of the weights of checkpoints of
one model, as a checkpoint for decoding."""

from __future__ import annotations

from pathlib import Path

from mt.errors import CheckpointError
from mt.model.checkpoint import KEPT_KEYS, architecture, read_checkpoint


def average_checkpoints(paths: list[Path]) -> dict:
    """A checkpoint whose floating-point parameters are the mean of those in ``paths`` (the others: the first's).

    It carries the first checkpoint's configs and tokenizer and no optimizer state (it is for decoding, not for
    resuming); its ``global_step`` and ``epoch`` are those of the newest weights (the largest step), in whatever
    order the paths are given.
    """
    first = read_checkpoint(paths[0])
    sums = {
        name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in first["state_dict"].items()
    }
    newest = first
    for path in paths[1:]:
        checkpoint = read_checkpoint(path)
        state = checkpoint["state_dict"]
        if state.keys() != sums.keys() or any(state[k].shape != sums[k].shape for k in sums):
            raise CheckpointError(f"checkpoint {path}: its parameters differ in names or shapes from {paths[0]}")
        for what, value in (("model architecture", architecture), ("tokenizer", lambda c: c.get("tokenizer"))):
            if value(checkpoint) != value(first):
                raise CheckpointError(f"checkpoint {path}: its {what} differs from {paths[0]}'s (another run?)")
        for name, tensor in state.items():
            if tensor.is_floating_point():
                sums[name] += tensor.double()
        if (checkpoint.get("global_step") or 0) > (newest.get("global_step") or 0):
            newest = {key: checkpoint.get(key) for key in ("global_step", "epoch")}
    averaged = {
        name: (total / len(paths)).to(first["state_dict"][name].dtype) if total.is_floating_point() else total
        for name, total in sums.items()
    }
    out = {key: first[key] for key in KEPT_KEYS if key in first}
    out["state_dict"] = averaged
    for key in ("global_step", "epoch"):  # the newest weights' step and epoch, together
        if newest.get(key) is not None:
            out[key] = newest[key]
    out["averaged_from"] = [str(p) for p in paths]
    return out
