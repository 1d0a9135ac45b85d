"""``python -m mt.train [overrides]``: train a Transformer, keep the best and last checkpoints,
plot the learning curve, and score the best checkpoint on the test split (``mt.training.run``)."""

from __future__ import annotations

from pathlib import Path

from mt.cli import entry_point
from mt.config import TrainConfig
from mt.training.run import train


@entry_point("train", TrainConfig)
def main(config: TrainConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    scores = train(config, Path(HydraConfig.get().runtime.output_dir))
    return None if scores is None else scores["bleu"]  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
