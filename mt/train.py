"""``python -m mt.train [overrides]``: train a Transformer, keep the best and last checkpoints,
plot the learning curve, and score the best checkpoint on the test split.

The run directory (``hydra.run.dir``) receives ``config.yaml`` (the resolved config),
``tokenizer/``, ``checkpoints/{best,last}.ckpt``, ``csv/`` and ``tb/`` logs, ``curve.png`` and
``test_scores.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from omegaconf import DictConfig, OmegaConf

from mt.atomic import atomic_write
from mt.checkpoint_io import AtomicCheckpointIO
from mt.cli import CONF_DIR, RunError, entry_point, prepare_cuda, reports_errors, set_threads, to_typed
from mt.config import ModelConfig, TrainConfig, TrainerConfig, from_dict, register_configs, to_dict
from mt.datamodule import TranslationDataModule
from mt.distributed import RunDirectoryLock, exclusive, is_global_zero_from_env
from mt.module import TranslationModule
from mt.plots import plot_learning_curve
from mt.preemption import REQUEUE_SIGNALS, Preempted, PreemptionCallback, requeue_slurm_job
from mt.readers import local_split
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

register_configs()


def resume_checkpoint(resume: str | None, checkpoint_dir: Path) -> str | None:
    """The checkpoint to resume from, refusing to train over an existing run by accident."""
    existing = sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and (
        resume is None or (checkpoint_dir / "last.ckpt").is_file()
    ):
        # A requeued job goes on from its own last.ckpt, also when it was first started from resume=PATH
        # (which would repeat all the training since).
        log.info("SLURM requeued this job (restart %s): resume=auto", os.environ["SLURM_RESTART_COUNT"])
        resume = "auto"
    if resume is None:
        if existing:
            raise RunError(
                f"{checkpoint_dir} already holds checkpoints ({existing[0].name}, ...): "
                f"pass resume=auto to continue that run, or choose another hydra.run.dir"
            )
        return None
    if resume == "auto":
        last = checkpoint_dir / "last.ckpt"
        if last.is_file():
            verify_checkpoint(last)
            return str(last)
        if existing:
            raise RunError(f"resume=auto: {checkpoint_dir} has checkpoints but no last.ckpt; pass resume=PATH")
        return None
    if not Path(resume).is_file():
        raise RunError(f"resume={resume}: no such checkpoint file")
    verify_checkpoint(Path(resume))
    return resume


# The model options that decide its parameters' names and shapes (or their meaning); dropout may change.
ARCHITECTURE = (
    "d_model",
    "n_heads",
    "encoder_layers",
    "decoder_layers",
    "d_ff",
    "activation",
    "pre_norm",
    "share_all_embeddings",
    "share_decoder_input_output",
)


def check_same_model(checkpoint: Path, model: ModelConfig, tokenizer: Tokenizer) -> None:
    """Refuse to resume from a checkpoint of another architecture or vocabulary (before Lightning loads it)."""
    stored = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    if "tokenizer" in stored and stored["tokenizer"] != tokenizer.to_state():
        raise RunError(
            f"resume={checkpoint}: the checkpoint's tokenizer differs from this run's ({tokenizer.origin}); "
            f"resume in the run directory that trained it"
        )
    saved = stored.get("hyper_parameters", {})
    saved_model = from_dict(ModelConfig, saved.get("model", {}))
    differences = [
        f"model.{name}={getattr(saved_model, name)} there, {getattr(model, name)} here"
        for name in ARCHITECTURE
        if getattr(saved_model, name) != getattr(model, name)
    ]
    if differences:
        raise RunError(f"resume={checkpoint}: the checkpoint is of another model ({'; '.join(differences)})")


def is_collective_failure(error: RuntimeError) -> bool:
    """Whether ``error`` comes from torch.distributed: a peer that died, hung or timed out."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error)
    return any(marker in text for marker in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer"))


def verify_checkpoint(path: Path) -> None:
    """Check every record of a checkpoint (a zip archive) against its CRC before resuming from it."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise RunError(f"{path} is not a readable checkpoint ({error}); pass resume=PATH to another one") from None
    if bad is not None:
        raise RunError(f"{path} is corrupt (CRC mismatch in {bad}); pass resume=PATH to another checkpoint")


def log_version(run_dir: Path, resuming: bool) -> str:
    """The CSV log folder of this process: ``csv/`` for a fresh run, ``csv/resume_K`` for the K-th resume.

    Lightning's CSV logger empties an existing folder, so each resume logs into a new one.
    """
    if not resuming:
        return ""
    k = 1
    while (run_dir / "csv" / f"resume_{k}").exists():
        k += 1
    return f"resume_{k}"


def build_trainer(
    config: TrainConfig, run_dir: Path, *, resuming: bool = False, preemption: PreemptionCallback | None = None
) -> tuple[L.Trainer, ModelCheckpoint]:
    cfg = config.trainer
    decoding = config.validation.decode != "none"
    monitor, mode = ("val/bleu", "max") if decoding else ("val/loss", "min")
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # one best.ckpt, never best-v1
    )
    # One writer owns last.ckpt: after every validation, or every N steps when asked (for resuming).
    last = LastCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [best, last]
    if preemption is not None:
        callbacks.append(preemption)
    if cfg.keep_checkpoints:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step{step:07d}",
                monitor="step",
                mode="max",
                save_top_k=cfg.keep_checkpoints,
                auto_insert_metric_name=False,
            )
        )
    if cfg.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.early_stopping_patience))
    version = log_version(run_dir, resuming)
    loggers = [CSVLogger(run_dir, name="csv", version=version), TensorBoardLogger(run_dir, name="tb", version=version)]
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # our PreemptionCallback saves and requeues, not Lightning's handler
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg),
        precision=cfg.precision,
        max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs,
        max_time=cfg.max_time,
        val_check_interval=cfg.val_check_interval,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_val_batches=cfg.limit_val_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        # The module clips (one pass over the gradients with its finiteness check), except under fp16.
        gradient_clip_val=None if TranslationModule.clips_itself(cfg.precision) else (config.optim.clip_norm or None),
        num_sanity_val_steps=cfg.num_sanity_val_steps,
        fast_dev_run=cfg.fast_dev_run,
        enable_progress_bar=cfg.enable_progress_bar,
        deterministic=cfg.deterministic,
        default_root_dir=run_dir,
        callbacks=callbacks,
        logger=loggers,
        use_distributed_sampler=False,  # TokenBatchSampler shards batches itself
        plugins=plugins,
    )
    return trainer, best


def build_strategy(cfg: TrainerConfig) -> str | Strategy:
    """``trainer.strategy``, with DDP configured: a collective timeout (a dead rank fails the run
    instead of hanging it) and no per-forward buffer broadcast (the buffers are constants, and
    validation may give ranks different numbers of batches)."""
    if cfg.strategy != "ddp":
        return cfg.strategy
    return DDPStrategy(
        timeout=timedelta(seconds=cfg.collective_timeout_s),
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
    )


class LastCheckpoint(ModelCheckpoint):
    """The ``last.ckpt`` writer: after every validation, at the end of every epoch and of training,
    and every ``every_n_train_steps`` updates; after a resume, not again until the next update.

    Lightning's ``save_last`` only writes ``last.ckpt`` at a validation or epoch end where it also
    saved a top-k checkpoint, which this writer (``save_top_k=0``) never does: without the hooks
    below, a run killed before its end had no ``last.ckpt`` to resume from. And Lightning forgets the
    step it last saved at, so the first batch after a resume, inside an accumulation window, would
    save a checkpoint whose data position is ahead of its weights.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_unless_saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_unless_saved(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_unless_saved(trainer)

    def _save_last_unless_saved(self, trainer: L.Trainer) -> None:
        # skipped in sanity checks and fast_dev_run, and where this step is already saved
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def train(config: TrainConfig, run_dir: Path) -> dict | None:
    """Train as configured in ``run_dir``; return the test scores of the best checkpoint (rank 0)."""
    set_threads(config.threads)
    if config.data.path:  # checkpoints record where their data is: make it valid from any directory
        config.data.path = str(Path(config.data.path).expanduser().resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirectoryLock(run_dir)
    if is_global_zero_from_env():  # one job per run directory; its other ranks share it
        lock.acquire()
    try:
        return _train(config, run_dir)
    finally:
        lock.release()


def _train(config: TrainConfig, run_dir: Path) -> dict | None:
    preemption = PreemptionCallback(run_dir / "checkpoints" / "last.ckpt") if config.trainer.handle_signals else None
    if preemption is not None:
        preemption.install()
    try:
        return _train_with(config, run_dir, preemption)
    finally:
        if preemption is not None:
            preemption.uninstall()


def _train_with(config: TrainConfig, run_dir: Path, preemption: PreemptionCallback | None) -> dict | None:
    ckpt_path = resume_checkpoint(config.resume, run_dir / "checkpoints")
    config_path = run_dir / "config.yaml"
    if ckpt_path is None or not config_path.exists():  # a fresh start (in a run directory without checkpoints too)
        with atomic_write(config_path) as handle:
            handle.write(OmegaConf.to_yaml(OmegaConf.create(to_dict(config))).encode())
    if config.test_after_training and not config.trainer.fast_dev_run and config.data.path:
        local_split(config.data, "test")  # a missing test split fails now, not after the training
    L.seed_everything(config.seed, workers=True)

    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=run_dir, seed=config.seed)
    with exclusive(run_dir / ".prepare.lock"):  # ranks started together: one trains, the others load
        tokenizer = datamodule.prepare_tokenizer()
    module = TranslationModule(
        to_dict(config.model),
        to_dict(config.optim),
        to_dict(config.search),
        to_dict(config.validation),
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        data=to_dict(config.data),
    )
    module.tokenizer = tokenizer
    if config.trainer.compile:
        backends = torch.compiler.list_backends(exclude_tags=())
        if config.trainer.compile_backend not in backends:
            raise RunError(
                f"trainer.compile_backend={config.trainer.compile_backend!r}: expected one of {', '.join(backends)}"
            )
        module.compile_layers(config.trainer.compile_backend)
    prepare_cuda(tf32=config.trainer.tf32)
    if ckpt_path is not None:
        check_same_model(Path(ckpt_path), config.model, tokenizer)
    if preemption is not None and preemption.received:
        # Nothing trained yet, so nothing to save; a time-limit warning still requeues the job (rank 0).
        requeued = preemption.received in REQUEUE_SIGNALS and is_global_zero_from_env() and requeue_slurm_job()
        print(
            f"preempted: {signal.Signals(preemption.received).name} received before training started"
            + ("; the job was requeued" if requeued else ""),
            file=sys.stderr,
        )
        return None
    try:
        trainer, best_checkpoint = build_trainer(config, run_dir, resuming=ckpt_path is not None, preemption=preemption)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except MisconfigurationException as error:  # e.g. trainer=gpu on a machine without one
        raise RunError(f"trainer: {str(error).splitlines()[0]}") from None
    except Preempted as stop:
        if trainer.is_global_zero:
            print(f"preempted: {stop}", file=sys.stderr, flush=True)
        return None
    except RunError:
        raise
    except ValueError as error:
        # Lightning's check, made once the epoch's batch count is known: "`val_check_interval` (N) must be
        # less than or equal to the number of the training batches (M). ..."
        batches = re.search(r"val_check_interval` \(\d+\) must be .* training batches \((\d+)\)", str(error))
        if batches is None:
            raise
        raise RunError(
            f"trainer.val_check_interval={config.trainer.val_check_interval}: more than the {batches[1]} batches of "
            f"an epoch (per rank); lower it, or set trainer.check_val_every_n_epoch=null to count across epochs"
        ) from None
    except RuntimeError as error:
        if not is_collective_failure(error):
            raise
        first_line = str(error).strip().splitlines()[0]
        raise RunError(
            f"rank {trainer.global_rank}: a collective operation failed, so another rank died or stopped "
            f"responding (timeout trainer.collective_timeout_s={config.trainer.collective_timeout_s}): {first_line}"
        ) from None

    if not trainer.is_global_zero:
        return None
    plot_learning_curve(run_dir / "csv", run_dir / "curve.png")
    if not config.test_after_training or config.trainer.fast_dev_run:
        return None
    from mt.evaluate import score_checkpoint

    best = best_checkpoint.best_model_path or str(run_dir / "checkpoints" / "last.ckpt")
    scores = score_checkpoint(best, split="test", search=config.search, progress=config.trainer.enable_progress_bar)
    (run_dir / "test_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores), flush=True)
    return scores


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@reports_errors
def _main(cfg: DictConfig) -> float | None:
    config = to_typed(cfg, TrainConfig)
    scores = train(config, Path(HydraConfig.get().runtime.output_dir))
    return None if scores is None else scores["bleu"]  # the value Hydra sweepers optimise


main = entry_point(_main)

if __name__ == "__main__":
    main()
