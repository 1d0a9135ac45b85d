"""``python -m mt.average checkpoints=[a,b,c] output=avg.ckpt`` or ``run=DIR last=N output=...``.

Averages the parameters of checkpoints of one model (e.g. the last N of a run, kept with
``trainer.keep_checkpoints=N``). The result is a checkpoint like any other: it evaluates and
translates with ``mt.evaluate`` / ``mt.translate``. It carries the first checkpoint's
hyperparameters and tokenizer, and no optimizer state (it is for decoding, not for resuming).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mt.atomic import atomic_write
from mt.cli import CONF_DIR, RunError, entry_point, reports_errors, to_typed
from mt.config import AverageConfig, register_configs
from mt.inference import CheckpointError

register_configs()

KEPT_KEYS = ("state_dict", "hyper_parameters", "tokenizer", "epoch", "global_step", "pytorch-lightning_version")


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step checkpoints (``step{N}.ckpt``) of ``run_dir``, by step (past 10^7 steps too)."""
    found = [path for path in Path(run_dir, "checkpoints").glob("step*.ckpt") if path.stem[4:].isdigit()]
    return sorted(found, key=lambda path: int(path.stem[4:]))


def newest_checkpoints(run_dir: str | Path, count: int) -> list[Path]:
    """The ``count`` step checkpoints of ``run_dir`` with the highest steps, oldest first."""
    found = step_checkpoints(run_dir)
    if len(found) < count:
        raise RunError(
            f"{run_dir}/checkpoints holds {len(found)} step*.ckpt files, fewer than last={count} "
            f"(train with trainer.keep_checkpoints=N to keep them)"
        )
    return found[-count:]


def _load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path}: holds no state_dict")
    return checkpoint


def average_checkpoints(paths: list[Path]) -> dict:
    """A checkpoint whose floating-point parameters are the mean of those in ``paths``."""
    first = _load(paths[0])
    sums = {
        name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in first["state_dict"].items()
    }
    last_step = first.get("global_step")
    for path in paths[1:]:
        checkpoint = _load(path)
        state, last_step = checkpoint["state_dict"], checkpoint.get("global_step", last_step)
        if state.keys() != sums.keys() or any(state[k].shape != sums[k].shape for k in sums):
            raise CheckpointError(f"checkpoint {path}: its parameters differ in names or shapes from {paths[0]}")
        for what, value in (("model config", _model_config), ("tokenizer", _tokenizer)):
            if value(checkpoint) != value(first):
                raise CheckpointError(f"checkpoint {path}: its {what} differs from {paths[0]}'s (another run?)")
        for name, tensor in state.items():
            if tensor.is_floating_point():
                sums[name] += tensor.double()
    averaged = {
        name: (total / len(paths)).to(first["state_dict"][name].dtype) if total.is_floating_point() else total
        for name, total in sums.items()
    }
    out = {key: first[key] for key in KEPT_KEYS if key in first}
    out["state_dict"] = averaged
    out["global_step"] = last_step  # the step of the newest weights (paths are oldest first)
    out["averaged_from"] = [str(p) for p in paths]
    return out


def _model_config(checkpoint: dict) -> object:
    return checkpoint.get("hyper_parameters", {}).get("model")


def _tokenizer(checkpoint: dict) -> object:
    return checkpoint.get("tokenizer")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="average")
@reports_errors
def _main(cfg: DictConfig) -> None:
    config = to_typed(cfg, AverageConfig)
    output = Path(config.output)
    if output.exists() and not config.overwrite:
        raise RunError(f"{output} exists; pass overwrite=true to replace it")
    paths = [Path(p) for p in config.checkpoints] or newest_checkpoints(config.run, config.last)
    checkpoint = average_checkpoints(paths)
    with atomic_write(output) as handle:
        torch.save(checkpoint, handle)
    print(json.dumps({"output": str(output), "averaged": [str(p) for p in paths]}))


main = entry_point(_main)

if __name__ == "__main__":
    main()
