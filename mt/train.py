"""``python -m mt.train [overrides]``: train a Transformer, keep the best and last checkpoints,
plot the learning curve, and score the best checkpoint on the test split (``mt.training.run``).

It returns, to Hydra's sweepers, the validation figure that chose the best checkpoint
(``validation.metric``: BLEU by default), never a test score: a sweep tunes on validation."""

from __future__ import annotations

import sys
from pathlib import Path

from mt.cli import entry_point, in_sweep, set_on_command_line
from mt.config import TrainConfig
from mt.errors import ConfigError
from mt.training.distributed import is_global_zero_from_env
from mt.training.finetune import with_checkpoint_architecture
from mt.training.resume import requeued
from mt.training.run import train


def record_launch(config: TrainConfig, run_dir: Path) -> None:
    """Hydra's record of this launch, as Hydra writes it (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``: what ``mt.trials`` reads). conf/train.yaml sets ``hydra.output_subdir: null`` and
    ``main`` writes it: at once in a run directory without one (so a trial that fails early has it too), else only
    once ``train`` has passed its checks, so a refused launch (a run directory that holds another run, or is
    busy, or a checkpoint of another model) does not rewrite the record of the run that is there."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from mt.atomic import atomic_write
    from mt.config import to_dict

    hydra = HydraConfig.get()
    record = {
        "config.yaml": OmegaConf.create(to_dict(config)),
        "hydra.yaml": OmegaConf.create({"hydra": hydra}),
        "overrides.yaml": hydra.overrides.task,
    }
    for name, content in record.items():
        with atomic_write(run_dir / ".hydra" / name) as handle:
            handle.write(OmegaConf.to_yaml(content).encode())
    (run_dir / "error.txt").unlink(missing_ok=True)  # a trial that failed before, launched again (mt.cli._stop)


@entry_point("train", TrainConfig)
def main(config: TrainConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if config.init_from and (chosen := set_on_command_line("tokenizer")) != set():
        names = ", ".join(f"tokenizer.{name}" for name in sorted(chosen or ())) or "tokenizer"
        raise ConfigError(
            f"{names}: a run from init_from= keeps its checkpoint's tokenizer (the vocabulary of its embeddings), "
            f"so tokenizer settings would go unused; drop them"
        )
    if config.init_from:  # the checkpoint's architecture, but for what the command line sets
        last = run_dir / "checkpoints" / "last.ckpt"  # resuming: the run's own (init_from is not applied again)
        source = last if last.is_file() and (config.resume == "auto" or requeued()) else None
        config = with_checkpoint_architecture(config, set_on_command_line("model"), source)
    if is_global_zero_from_env() and not (run_dir / ".hydra" / "overrides.yaml").is_file():
        record_launch(config, run_dir)
    result = train(config, run_dir, on_start=lambda: record_launch(config, run_dir))
    preempted = result is None or result["preempted"]  # (rank 0 returns None when preempted during the training)
    if preempted and is_global_zero_from_env() and in_sweep():
        # The signal was for the whole job: the trials after this one must not start in its grace period.
        print("preempted: the sweep stops after this trial; launch it again with resume=auto", file=sys.stderr)
        sys.exit(0)
    return None if result is None else result["selection"]["value"]  # what Hydra's sweepers optimise


if __name__ == "__main__":
    main()
