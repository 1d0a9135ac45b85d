"""``python -m mt.train [overrides]``: train a Transformer, keep the best and last checkpoints,
plot the learning curve, and score the best checkpoint on the test split (``mt.training.run``).

It returns, to Hydra's sweepers, the validation figure that chose the best checkpoint
(``validation.metric``: BLEU by default), never a test score: a sweep tunes on validation."""

from __future__ import annotations

from pathlib import Path

from mt.cli import entry_point, set_on_command_line
from mt.config import TrainConfig
from mt.training.finetune import with_checkpoint_architecture
from mt.training.run import train


@entry_point("train", TrainConfig)
def main(config: TrainConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    if config.init_from:  # the checkpoint's architecture, but for what the command line sets
        config = with_checkpoint_architecture(config, set_on_command_line("model"))
    result = train(config, Path(HydraConfig.get().runtime.output_dir))
    return None if result is None else result["selection"]["value"]  # what Hydra's sweepers optimise


if __name__ == "__main__":
    main()
