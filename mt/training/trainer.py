"""The Lightning ``Trainer`` as mt runs it: callbacks, loggers, strategy and checkpoint I/O."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, Strategy

from mt.compat import skip_sigterm_broadcast
from mt.config import TrainConfig, TrainerConfig
from mt.device import resolve_precision
from mt.training.callback_state import ConfiguredEarlyStopping, RunCheckpoint, RunLastCheckpoint
from mt.training.checkpointing import AtomicCheckpointIO
from mt.training.ema import ExponentialMovingAverage
from mt.training.loggers import StepProgressBar, build_loggers
from mt.training.module import TranslationModule
from mt.training.preemption import PreemptionCallback
from mt.training.profiling import StepProfiler
from mt.training.resume import ResumedEpochPosition
from mt.training.rng import RngStateCallback
from mt.training.time_limit import AgreedTimer

log = logging.getLogger(__name__)


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    *,
    resuming: bool = False,
    preemption: PreemptionCallback | None = None,
    loggers: bool = True,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """The run's Trainer and its best-checkpoint writer. ``loggers=False``: none yet (``attach_loggers`` adds
    them), so that building it (and Lightning's refusals) writes nothing into the run directory: MLflow and W&B
    loggers record their run's id there."""
    cfg = config.trainer
    precision, why = resolve_precision(cfg.precision, cfg.accelerator)
    if cfg.precision == "auto":
        log.info("precision %s (%s)", precision, why)
    monitor, mode = config.validation.selection  # best.ckpt, early stopping, and a sweep's objective
    # The checkpoint writers keep their records when the run directory is moved or copied and resumed there.
    best = RunCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # one best.ckpt, never best-v1
    )
    # One writer owns last.ckpt: after every validation, or every N steps when asked (for resuming).
    last = RunLastCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
        enable_version_counter=False,
    )
    writers: list[L.Callback] = [best]
    if cfg.keep_checkpoints:
        writers.append(
            RunCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="step{step:07d}",
                monitor="step",
                mode="max",
                save_top_k=cfg.keep_checkpoints,
                auto_insert_metric_name=False,
            )
        )
    # last.ckpt is written after the others (Lightning keeps their order), so it records the files they just wrote:
    # a resume then prunes the oldest kept step checkpoint instead of leaving it behind.
    callbacks: list[L.Callback] = [RngStateCallback(), ResumedEpochPosition(), *writers, last]
    if config.optim.ema_decay > 0:  # updated before the checkpoint writers run (Lightning orders them last)
        callbacks.append(ExponentialMovingAverage(config.optim.ema_decay))
    if preemption is not None:
        callbacks.append(preemption)
    if cfg.enable_progress_bar:
        callbacks.append(StepProgressBar())
    if cfg.profile_steps:
        callbacks.append(StepProfiler(run_dir / "profile", cfg.profile_after, cfg.profile_steps))
    if cfg.early_stopping_patience is not None:
        # the configured patience, also on resume (Lightning's would be the checkpoint's)
        callbacks.append(ConfiguredEarlyStopping(monitor=monitor, mode=mode, patience=cfg.early_stopping_patience))
    if cfg.max_time:  # Lightning's Timer, its ranks agreeing without a host sync at every batch
        callbacks.append(AgreedTimer(cfg.max_time))
    plugins: list = [AtomicCheckpointIO()]
    # Our PreemptionCallback saves and requeues, not Lightning's handler. Under torchrun (inside a SLURM job too)
    # torchrun's variables decide the ranks, as Lightning itself would choose.
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=build_strategy(cfg),
        precision=precision,
        max_steps=cfg.max_steps,
        max_epochs=cfg.max_epochs,
        val_check_interval=cfg.val_check_interval,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        limit_val_batches=cfg.limit_val_batches,
        log_every_n_steps=cfg.log_every_n_steps,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        # The module clips (one pass over the gradients with its finiteness check), except under fp16.
        gradient_clip_val=None if TranslationModule.clips_itself(precision) else (config.optim.clip_norm or None),
        num_sanity_val_steps=cfg.num_sanity_val_steps,
        fast_dev_run=cfg.fast_dev_run,
        enable_progress_bar=cfg.enable_progress_bar,
        deterministic=cfg.deterministic,
        default_root_dir=run_dir,
        callbacks=callbacks,
        logger=build_loggers(config.logger, run_dir, log_version(run_dir, resuming)) if loggers else False,
        use_distributed_sampler=False,  # TokenBatchSampler shards batches itself
        # Several corpora: each epoch draws other pairs, so its batch count is counted again (MixtureBatchSampler).
        reload_dataloaders_every_n_epochs=1 if len(config.data.corpora) > 1 else 0,
        plugins=plugins,
    )
    if preemption is not None:  # its handler takes SIGTERM when training starts: Lightning's flag stays as it is
        skip_sigterm_broadcast(trainer)
    return trainer, best


def attach_loggers(trainer: L.Trainer, config: TrainConfig, run_dir: Path, *, resuming: bool) -> None:
    """Give a Trainer built with ``loggers=False`` the run's loggers."""
    trainer.loggers = build_loggers(config.logger, run_dir, log_version(run_dir, resuming))


def build_strategy(cfg: TrainerConfig) -> str | Strategy:
    """``trainer.strategy``, with DDP configured: a collective timeout (a dead rank fails the run
    instead of hanging it) and no per-forward buffer broadcast (the buffers are constants, and
    validation may give ranks different numbers of batches). ``auto`` over several devices or nodes is
    the DDP Lightning would choose, configured the same way."""
    # (In a notebook Lightning's auto is ddp_fork, which a DDPStrategy of ours would not be: left to it.)
    if cfg.strategy != "ddp" and not (cfg.strategy == "auto" and several_processes(cfg) and not interactive()):
        return cfg.strategy
    return DDPStrategy(
        timeout=timedelta(seconds=cfg.collective_timeout_s),
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
    )


def interactive() -> bool:
    """Whether Python runs interactively (a notebook, a REPL): Lightning's own test for choosing ``ddp_fork``."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def several_processes(cfg: TrainerConfig) -> bool:
    """Whether the run has several processes (devices x nodes), where Lightning's ``auto`` strategy is DDP:
    ``devices`` as a count, a list, or ``auto``/-1 (every GPU where the accelerator is a GPU; one CPU process)."""
    if cfg.num_nodes > 1:
        return True
    devices = cfg.devices
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if str(devices) in ("auto", "-1"):
        gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
        return gpu and torch.cuda.device_count() > 1
    if isinstance(devices, str) and "," in devices:  # "0,1": device indices
        return len([d for d in devices.split(",") if d.strip()]) > 1
    return int(devices) > 1


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
