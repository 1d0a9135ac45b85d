"""Starting a new run from a trained model (``init_from=CKPT``): its weights and its tokenizer (the vocabulary
cannot change under the embeddings), with a fresh optimiser, schedule and data position; the data, schedule,
search and everything else come from the new run's config.

A fine-tuning run is a run like any other: it writes its own checkpoints and resumes from its own ``last.ckpt``
(a resumed or requeued run does not apply ``init_from`` again).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import Tensor

from mt.config import ModelConfig, TrainConfig, from_dict
from mt.data.run_tokenizer import record_init_from
from mt.data.tokenizer import Tokenizer
from mt.errors import RunError
from mt.model.checkpoint import ARCHITECTURE, read_checkpoint
from mt.training.resume import architecture_differences


def with_checkpoint_architecture(
    config: TrainConfig, chosen: set[str] | None, source: Path | None = None
) -> TrainConfig:
    """``config`` with the model architecture of its ``init_from`` checkpoint, but for the fields in ``chosen``
    (those the command line set; ``None``: it chose the model group, so nothing is taken), which must then match
    the checkpoint's (``prepare_init_from`` refuses them otherwise). A fine-tuning run, of an imported Hugging Face
    model say, needs no model settings of its own; a missing checkpoint is left to ``prepare_init_from``'s error.
    ``source``: the checkpoint to take it from instead (the run's own ``last.ckpt`` when it resumes, so that it
    resumes also once the ``init_from`` file is gone).
    """
    path = source if source is not None else Path(str(config.init_from))
    if chosen is None or not path.is_file():
        return config
    saved = from_dict(ModelConfig, read_checkpoint(path).get("hyper_parameters", {}).get("model", {}))
    taken = {name: getattr(saved, name) for name in ARCHITECTURE if name not in chosen}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **taken))


def prepare_init_from(config: TrainConfig, run_dir: Path) -> dict[str, Tensor]:
    """Check the checkpoint a new run starts from, put its tokenizer into the run directory (where the run's
    data preparation finds it), and return its model weights (``Transformer`` names)."""
    path = Path(str(config.init_from))
    stored = read_checkpoint(path)  # one-line errors for a missing, truncated or foreign file
    if "tokenizer" not in stored:
        raise RunError(f"init_from={path}: the checkpoint holds no tokenizer, so its vocabulary is unknown")
    differences = architecture_differences(stored, config.model)
    if differences:
        raise RunError(
            f"init_from={path}: the checkpoint is of another model ({'; '.join(differences)}); "
            f"train with its model settings"
        )
    tokenizer = Tokenizer.from_state(stored["tokenizer"], origin=str(path))
    directory = run_dir / "tokenizer"
    existing = Tokenizer.load(directory)
    if existing is not None and existing.to_state() != tokenizer.to_state():
        raise RunError(
            f"init_from={path}: {directory} holds another tokenizer, and the vocabulary cannot change under the "
            f"checkpoint's embeddings; choose a new hydra.run.dir"
        )
    if existing is None:
        tokenizer.save(directory)
    record_init_from(directory, tokenizer, path)
    weights = {
        name[len("model.") :]: value for name, value in stored["state_dict"].items() if name.startswith("model.")
    }
    if not weights:
        raise RunError(f"init_from={path}: the checkpoint holds no model weights (no state_dict entry model.*)")
    return weights
