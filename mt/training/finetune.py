"""Starting a new run from a trained model (``init_from=CKPT``): its weights and its tokenizer (the vocabulary
cannot change under the embeddings), with a fresh optimiser, schedule and data position; the data, schedule,
search and everything else come from the new run's config.

A fine-tuning run is a run like any other: it writes its own checkpoints and resumes from its own ``last.ckpt``
(a resumed or requeued run does not apply ``init_from`` again).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mt.config import TrainConfig
from mt.data.tokenizer import Tokenizer
from mt.errors import RunError
from mt.model.checkpoint import read_checkpoint
from mt.training.resume import architecture_differences


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
    weights = {
        name[len("model.") :]: value for name, value in stored["state_dict"].items() if name.startswith("model.")
    }
    if not weights:
        raise RunError(f"init_from={path}: the checkpoint holds no model weights (no state_dict entry model.*)")
    return weights
