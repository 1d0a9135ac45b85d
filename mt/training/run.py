"""A training run: from a typed config and a run directory to the best checkpoint's test scores.

The run directory (``hydra.run.dir``) receives ``config.yaml`` (the resolved config),
``tokenizer/``, ``checkpoints/{best,last}.ckpt``, ``csv/`` and ``tb/`` logs, ``curve.png`` and
``test_scores.json``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf

from mt import faults
from mt.atomic import atomic_write, exclusive
from mt.compat import val_check_interval_overflow
from mt.config import TrainConfig, max_time_seconds, to_dict
from mt.data.corpus import load_split
from mt.data.mixture import check_folders, corpora, validated
from mt.data.tokenizer import Tokenizer
from mt.decode.metrics import bleu_metric
from mt.decode.scoring import score_checkpoint
from mt.device import prepare_cuda, resolve_precision, set_threads
from mt.errors import RunError
from mt.model.checkpoint import read_checkpoint
from mt.training.datamodule import TranslationDataModule
from mt.training.distributed import (
    RunDirectoryLock,
    is_global_zero_from_env,
    launched_together,
    refuse_a_batch_script_of_several_tasks,
)
from mt.training.finetune import prepare_init_from
from mt.training.loggers import finish_loggers, require_packages
from mt.training.module import TranslationModule
from mt.training.plots import plot_learning_curve
from mt.training.preemption import (
    REQUEUE_SIGNALS,
    Preempted,
    PreemptionCallback,
    StoppedAfterTraining,
    requeue_slurm_job,
)
from mt.training.resume import (
    check_same_data,
    check_same_model,
    log_changed_settings,
    remove_stale_temporaries,
    resume_checkpoint,
)
from mt.training.trainer import attach_loggers, build_trainer

log = logging.getLogger(__name__)


def train(config: TrainConfig, run_dir: Path, on_start: Callable[[], None] | None = None) -> dict | None:
    """Train as configured in ``run_dir``. Rank 0 returns ``{"selection": ..., "test": ...}``: the validation
    metric that chose the best checkpoint, its value, step and path (also in ``run_dir/selection.json``), and
    that checkpoint's test scores (None without ``test_after_training``, or when a signal stopped the test
    decode); the other ranks, and a run preempted before its training ended, return None. ``on_start``: called
    on rank 0 once the run has passed the checks that refuse a launch (another run's checkpoints, a busy run
    directory, a missing test split, a checkpoint of another model, Lightning's own), before anything is
    trained; ``config.yaml`` is written then too, so a refused launch leaves the records of the run in
    ``run_dir`` as they were (a tokenizer it trained before being refused stays)."""
    set_threads(config.threads)
    # Checkpoints record where their data is: made valid from any directory (a dataset folder given as hub_name
    # too; a hub id, which names no folder here, stays as given).
    for source in (config.data, *config.data.corpora):
        if source.path:
            source.path = str(Path(source.path).expanduser().resolve())
        if source.hub_name and Path(source.hub_name).expanduser().is_dir():
            source.hub_name = str(Path(source.hub_name).expanduser().resolve())
    for corpus in corpora(config.data):  # a missing folder is named by its key, before anything is written
        check_folders(corpus)
    run_dir.mkdir(parents=True, exist_ok=True)
    faults.point("run_directory", run_dir / ".lock")
    lock = RunDirectoryLock(run_dir)
    if is_global_zero_from_env():  # one job per run directory; its other ranks share it
        lock.acquire()
        remove_stale_temporaries(run_dir / "checkpoints")
    try:
        return _train(config, run_dir, on_start)
    finally:
        lock.release()


def _train(config: TrainConfig, run_dir: Path, on_start: Callable[[], None] | None) -> dict | None:
    preemption = PreemptionCallback(run_dir / "checkpoints" / "last.ckpt") if config.trainer.handle_signals else None
    if preemption is not None:
        preemption.install()
    try:
        return _train_with(config, run_dir, preemption, on_start)
    finally:
        if preemption is not None:
            preemption.uninstall()


def _train_with(
    config: TrainConfig, run_dir: Path, preemption: PreemptionCallback | None, on_start: Callable[[], None] | None
) -> dict | None:
    resolve_precision(config.trainer.precision, config.trainer.accelerator)  # fp16 on a CPU: refused now
    refuse_a_batch_script_of_several_tasks()
    require_packages(config.logger)  # a logger or compile backend that is not installed: now, not after the tokenizer
    if config.trainer.compile:
        backends = torch.compiler.list_backends(exclude_tags=())
        if config.trainer.compile_backend not in backends:
            raise RunError(
                f"trainer.compile_backend={config.trainer.compile_backend!r}: expected one of {', '.join(backends)}"
            )
    ckpt_path = resume_checkpoint(config.resume, run_dir / "checkpoints")
    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=run_dir, seed=config.seed)
    files = datamodule.files  # once a start (each file hashed, or its digest memoised in the data cache)
    if ckpt_path is not None:  # other data or seed: refused now, not inside fit once the run is recorded
        check_same_data(Path(ckpt_path), to_dict(config.data), config.seed, files)
    for corpus in validated(config.data):  # a missing or misaligned test split fails now, not after the training
        if config.test_after_training and not config.trainer.fast_dev_run and corpus.data.path:
            load_split(corpus.data, "test")
    if config.validation.decode != "none" or config.test_after_training:  # an unavailable BLEU tokenizer: now
        for language in sorted({corpus.data.tgt_lang for corpus in corpora(config.data)}):
            bleu_metric(language, config.metrics.bleu_tokenize)
    L.seed_everything(config.seed, workers=True)

    initial_weights = None
    with exclusive(run_dir / ".prepare.lock"):  # ranks started together: one trains, the others load
        if config.init_from and ckpt_path is None:  # a new run from a trained model: its tokenizer, its weights
            initial_weights = prepare_init_from(config, run_dir)
        elif config.init_from:
            log.info("resuming from %s: init_from=%s is not applied again", ckpt_path, config.init_from)
        tokenizer = datamodule.prepare_tokenizer(from_checkpoint=bool(config.init_from) or ckpt_path is not None)
    module = build_module(config, tokenizer)
    if initial_weights is not None:
        try:
            module.model.load_state_dict(initial_weights)
        except RuntimeError as error:
            detail = str(error).strip().splitlines()[-1].strip()
            raise RunError(f"init_from={config.init_from}: its weights do not fit this model ({detail})") from None
    prepare_cuda(tf32=config.trainer.tf32)
    if ckpt_path is not None:
        check_same_model(Path(ckpt_path), config.model, tokenizer, ema=config.optim.ema_decay > 0)
        if is_global_zero_from_env():
            sections = ("optim", "model", "search", "validation")
            log_changed_settings(Path(ckpt_path), {name: to_dict(getattr(config, name)) for name in sections})
    trainer = None
    try:  # Lightning's own refusals (no GPU; devices against the launcher's processes) come before the records
        trainer, best_checkpoint = build_trainer(
            config, run_dir, resuming=ckpt_path is not None, preemption=preemption, loggers=False
        )
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is not None:  # what Lightning's launcher checks inside fit, checked now
            environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        user_error = as_run_error(error, config, rank=0)
        if user_error is None:
            raise
        raise user_error from None
    # The launch has passed every check that refuses it: its records.
    config_path = run_dir / "config.yaml"
    if is_global_zero_from_env() and (ckpt_path is None or not config_path.exists()):  # a fresh start
        with atomic_write(config_path) as handle:
            handle.write(OmegaConf.to_yaml(OmegaConf.create(to_dict(config))).encode())
    if on_start is not None and is_global_zero_from_env():
        on_start()
    if preemption is not None and preemption.received and not launched_together():
        # Nothing trained yet, so nothing to save; a time-limit warning still requeues the job. (Ranks started
        # together go on into fit, where they agree on it: one returning here would leave the others waiting.)
        requeued = preemption.received in REQUEUE_SIGNALS and is_global_zero_from_env() and requeue_slurm_job()
        print(
            f"preempted: {signal.Signals(preemption.received).name} received before training started"
            + ("; the job was requeued" if requeued else ""),
            file=sys.stderr,
        )
        return None
    attach_loggers(trainer, config, run_dir, resuming=ckpt_path is not None)
    try:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except BaseException:
            finish_loggers(failed=True)
            raise
        finish_loggers()
    except RunError:
        raise
    except Preempted as stop:
        if trainer.is_global_zero:
            print(f"preempted: {stop}", file=sys.stderr, flush=True)
        return None
    except SIGTERMException:  # Lightning's own handler, which fit installs until training starts (the sanity check)
        if trainer.is_global_zero:
            print("preempted: SIGTERM received before training started", file=sys.stderr, flush=True)
        return None
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        user_error = as_run_error(error, config, rank=trainer.global_rank)
        if user_error is None:
            raise
        raise user_error from None

    if not trainer.is_global_zero:
        return None
    plot_learning_curve(run_dir / "csv", run_dir / "curve.png")
    metric, mode = config.validation.selection
    score = best_checkpoint.best_model_score
    selection = {
        "metric": metric,
        "mode": mode,
        "value": None if score is None or not math.isfinite(float(score)) else round(float(score), 4),
        "step": None,
        "checkpoint": best_checkpoint.best_model_path or None,
    }
    if selection["checkpoint"]:
        selection["step"] = int(read_checkpoint(selection["checkpoint"]).get("global_step", 0))
    else:
        log.warning("no validation ran, so no checkpoint was selected (and a sweep has no %s to optimise)", metric)
    with atomic_write(run_dir / "selection.json") as handle:
        handle.write((json.dumps(selection, indent=2) + "\n").encode())
    result = {"selection": selection, "test": None, "preempted": False}
    testing = config.test_after_training and not config.trainer.fast_dev_run
    try:
        if preemption is not None:
            preemption.stop_at_once()  # a signal in the last update or validation: now
        if testing:
            result["test"] = score_test_splits(config, run_dir, best_checkpoint.best_model_path)
    except StoppedAfterTraining as stop:  # a relaunch with resume=auto trains no further and scores the test split
        preemption.quiet()  # a second signal (scontrol requeue ends the job with one) must not cut this short
        requeued = stop.signum in REQUEUE_SIGNALS and requeue_slurm_job()
        then = "; the test split was not scored" if testing else ""
        then += (
            "; the job was requeued" if requeued else "; resume with resume=auto" + (" to score it" if testing else "")
        )
        print(f"preempted: {stop}{then}", file=sys.stderr, flush=True)
        result["preempted"] = True
    return result


def score_test_splits(config: TrainConfig, run_dir: Path, best_path: str) -> dict:
    """The test scores of the chosen checkpoint (``last.ckpt`` when none was chosen), in ``test_scores.json``
    and printed: of each validated direction, and their mean where there are several."""
    best = best_path or str(run_dir / "checkpoints" / "last.ckpt")
    directions = validated(config.data)
    by_direction = {
        corpus.direction: score_checkpoint(
            best,
            split="test",
            search=config.search,
            progress=config.trainer.enable_progress_bar,
            bleu_tokenize=config.metrics.bleu_tokenize,
            src_lang=corpus.data.src_lang,
            tgt_lang=corpus.data.tgt_lang,
        )
        for corpus in directions
    }
    scores = next(iter(by_direction.values()))
    if len(by_direction) > 1:  # several directions: each one's scores, and the mean BLEU and chrF
        scores = {
            "checkpoint": best,
            "bleu": round(sum(r["bleu"] for r in by_direction.values()) / len(by_direction), 4),
            "chrf": round(sum(r["chrf"] for r in by_direction.values()) / len(by_direction), 4),
            "directions": by_direction,
        }
    with atomic_write(run_dir / "test_scores.json") as handle:
        handle.write((json.dumps(scores, indent=2) + "\n").encode())
    print(json.dumps(scores), flush=True)
    return scores


def build_module(config: TrainConfig, tokenizer: Tokenizer) -> TranslationModule:
    """The LightningModule of ``config``, with ``tokenizer`` (and its layers compiled, if asked)."""
    module = TranslationModule(
        to_dict(config.model),
        to_dict(config.optim),
        to_dict(config.search),
        to_dict(config.validation),
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        data=to_dict(config.data),
        metrics=to_dict(config.metrics),
        budget_steps=config.trainer.max_steps if config.trainer.max_steps > 0 else None,
        budget_seconds=max_time_seconds(config.trainer.max_time),
    )
    module.tokenizer = tokenizer
    if config.trainer.compile:  # (the backend checked by _train_with)
        module.compile_layers(config.trainer.compile_backend)
    return module


def as_run_error(error: Exception, config: TrainConfig, *, rank: int) -> RunError | None:
    """The one-line error for what went wrong inside ``fit`` because of the config or the cluster, or
    None for anything else (a bug, which keeps its traceback)."""
    if isinstance(error, MisconfigurationException):  # e.g. trainer=gpu on a machine without one
        return RunError(f"trainer: {str(error).splitlines()[0]}")
    message = str(error)
    if message.startswith("You set `") and ("SLURM" in message or "world size" in message):
        # Lightning's check of the launcher's processes (srun's tasks, torchrun's world) against devices and nodes
        trainer = config.trainer
        return RunError(
            f"trainer.devices={trainer.devices} trainer.num_nodes={trainer.num_nodes} against the processes the "
            f"launcher started: {str(error).splitlines()[0]}"
        )
    batches = val_check_interval_overflow(error)
    if batches is not None:  # Lightning's check, made once the epoch's batch count is known
        return RunError(
            f"trainer.val_check_interval={config.trainer.val_check_interval}: more than the {batches} batches of "
            f"an epoch (per rank); lower it, or set trainer.check_val_every_n_epoch=null to count across epochs"
        )
    if isinstance(error, RuntimeError) and is_collective_failure(error):
        first_line = str(error).strip().splitlines()[0]
        return RunError(
            f"rank {rank}: a collective operation failed, so another rank died or stopped responding "
            f"(timeout trainer.collective_timeout_s={config.trainer.collective_timeout_s}): {first_line}"
        )
    return None


def is_collective_failure(error: RuntimeError) -> bool:
    """Whether ``error`` comes from torch.distributed: a peer that died, hung or timed out."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error)
    return any(marker in text for marker in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer"))
