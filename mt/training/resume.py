"""Which checkpoint a run starts from, and the checks that keep a resume from going wrong.

A new run refuses a run directory that holds checkpoints unless told to resume; ``resume=auto``
takes ``last.ckpt`` (and a SLURM-requeued job always its own); every checkpoint is CRC-checked and
compared with this run's model and tokenizer before Lightning loads it.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning as L

from mt.compat import epoch_batches_done, set_epoch_batches_done
from mt.config import ModelConfig
from mt.data.provenance import files_difference, same_files
from mt.data.tokenizer import Tokenizer
from mt.errors import CheckpointError, RunDirectoryTaken, RunError
from mt.model.checkpoint import architecture, read_checkpoint
from mt.training.datamodule import TranslationDataModule

log = logging.getLogger(__name__)


def requeued() -> bool:
    """Whether SLURM has requeued this job (it then goes on from its own last.ckpt)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def resume_checkpoint(resume: str | None, checkpoint_dir: Path) -> str | None:
    """The checkpoint to resume from, refusing to train over an existing run by accident."""
    existing = sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    if requeued() and (resume is None or (checkpoint_dir / "last.ckpt").is_file()):
        # A requeued job goes on from its own last.ckpt, also when it was first started from resume=PATH
        # (which would repeat all the training since).
        restart = os.environ["SLURM_RESTART_COUNT"]
        if existing:
            log.info("SLURM requeued this job (restart %s): resume=auto", restart)
        else:  # e.g. a run directory named by the time of launch (Hydra's default), new at each requeue
            log.warning(
                "SLURM requeued this job (restart %s), but %s holds no checkpoint: training from the start. A "
                "requeued job resumes only in the run directory it saved to: give hydra.run.dir a fixed path "
                "(scripts/slurm/train.sbatch uses outputs/slurm/<job id>)",
                restart,
                checkpoint_dir,
            )
        resume = "auto"
    if resume is None:
        if existing:
            raise RunDirectoryTaken(
                f"{checkpoint_dir} already holds checkpoints ({existing[0].name}, ...): "
                f"pass resume=auto to continue that run, or choose another run directory (hydra.run.dir; "
                f"hydra.sweep.dir in a multirun)"
            )
        return None
    if resume == "auto":
        last = checkpoint_dir / "last.ckpt"
        if last.is_file():
            verify_checkpoint(last)
            return str(last)
        if existing:
            # A save killed before its last.ckpt (best.ckpt comes first), or a last.ckpt moved away: the newest whole
            # training checkpoint, so that a chain of requeued jobs goes on by itself.
            newest = newest_training_checkpoint(checkpoint_dir)
            if newest is None:
                raise RunError(
                    f"resume=auto: {checkpoint_dir} has no last.ckpt, nor a whole best.ckpt or step checkpoint; "
                    f"pass resume=PATH"
                )
            log.warning(
                "resume=auto: %s holds no last.ckpt; resuming from %s, its newest checkpoint",
                checkpoint_dir,
                newest.name,
            )
            return str(newest)
        return None
    if not Path(resume).is_file():
        raise RunError(f"resume={resume}: no such checkpoint file")
    verify_checkpoint(Path(resume))
    refuse_to_rewind(Path(resume), checkpoint_dir / "last.ckpt")
    return resume


def refuse_to_rewind(checkpoint: Path, last: Path) -> None:
    """Refuse to resume from ``checkpoint`` in a run directory whose ``last`` is of a later update: training on
    would overwrite it, and put new step checkpoints beside the old ones of the same steps (Lightning names them
    ``-v1``), which ``resume=auto``, ``mt.average last=N`` and ``mt.report`` would take for this run's."""
    if not last.is_file() or last.resolve() == checkpoint.resolve():
        return
    try:  # its step alone (memory-mapped): no pass over its records, which verify_checkpoint(checkpoint) made
        latest = read_checkpoint(last).get("global_step", 0)
    except CheckpointError:  # a damaged last.ckpt holds no later update to lose
        return
    at = read_checkpoint(checkpoint).get("global_step", 0)
    if latest > at:
        raise RunError(
            f"resume={checkpoint} (update {at}) would rewind the run in {last.parent.parent}, whose last.ckpt is of "
            f"update {latest}: its later checkpoints would be overwritten or mixed with the new ones; resume into "
            f"another run directory (hydra.run.dir=NEW resume={checkpoint})"
        )


class ResumedEpochPosition(L.Callback):
    """On a resume with another number of ranks, Lightning's count of the epoch's batches done (restored in the
    old ranks' units) is made the sampler's (converted to the new ones: ``TokenBatchSampler.load_state_dict``), at
    the first batch. Without it, 1 rank resumed on 2 ended the epoch a third early, its remaining batches never
    trained, and 2 resumed on 1 ran past the epoch's count and skipped its end-of-epoch validation."""

    def __init__(self) -> None:
        self._first = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._first:
            return
        self._first = False
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        position = getattr(sampler, "resumed_position", None)
        if position is not None and position != epoch_batches_done(trainer):
            set_epoch_batches_done(trainer, position)


# Data settings a resumed run may change: they change neither the pairs of an epoch nor their order.
DATA_FREE = frozenset({"name", "num_workers", "cache_dir", "preprocess_workers"})
CORPUS_FREE = frozenset({"name", "valid"})  # of a data.corpora entry
# Where Lightning keeps the datamodule's state_dict: under its class's name (the refusals of other training files in
# tests/integration/test_resume_refusals.py fail if that changes).
DATAMODULE_STATE = TranslationDataModule.__qualname__


def check_same_data(path: Path, data: dict, seed: int, files: list | None = None) -> None:
    """Refuse, before anything of the run is written, to resume from ``path`` with other data (``data``: this
    run's data config as a dict; ``files``: its training files, ``datamodule.train_files``) or another seed: the
    saved position in the data would mean other pairs.

    Compared: every data field that decides the training pairs (not the validation and test splits' names, the
    corpora's names, workers or caches), on the fields both sides record (older checkpoints have fewer); paths
    resolved, and not at all where the checkpoint records the same training files (names, sizes, digests) as found
    here, so data moved, or mounted elsewhere, resumes; the files themselves, where the checkpoint records them.
    """
    stored = read_checkpoint(path)
    saved = (stored.get("hyper_parameters") or {}).get("data") or {}
    state = stored.get(DATAMODULE_STATE) or {}
    recorded = state.get("train_files")
    if recorded is not None and files is not None and not same_files(recorded, files):
        raise RunError(
            f"resume from {path}: other training files than it started with ({files_difference(recorded, files)}); "
            f"a resumed run goes on with the data it started with (to train its weights on other data: init_from=)"
        )
    moved = recorded is not None and files is not None and same_files(recorded, files)
    for key in sorted((saved.keys() & data.keys()) - DATA_FREE):
        if not _same(key, saved[key], data[key], moved):
            raise RunError(
                f"resume from {path}: data.{key} is {data[key]!r} here but {saved[key]!r} in the checkpoint; a "
                f"resumed run goes on with the data it started with (to train its weights on other data: init_from=)"
            )
    saved_seed = state.get("seed")
    if saved_seed is not None and saved_seed != seed:
        raise RunError(
            f"resume from {path}: seed={seed} here but {saved_seed} in the checkpoint, which orders the batches; "
            f"resume with seed={saved_seed}"
        )


def _same(key: str, saved, here, files_match: bool) -> bool:
    """Whether a data field is the same for the training pairs: a path resolved (not compared where the files
    are the same), the train split's name of ``splits``, each corpus entry on the fields both record but its
    name and ``valid``."""
    if key in ("path", "hub_name"):  # a dataset folder as hub_name: recorded absolute (earlier: as given)
        return files_match or _resolved_path(saved) == _resolved_path(here)
    if key in ("splits", "hub_splits") and isinstance(saved, dict) and isinstance(here, dict):
        return saved.get("train") == here.get("train")
    if key == "corpora" and isinstance(saved, list) and isinstance(here, list):
        return len(saved) == len(here) and all(
            _same(k, a[k], b[k], files_match)
            for a, b in zip(saved, here)
            for k in sorted((a.keys() & b.keys()) - CORPUS_FREE)
        )
    return saved == here


def _resolved_path(value):
    return str(Path(value).expanduser().resolve()) if isinstance(value, str) else value


def check_same_model(checkpoint: Path, model: ModelConfig, tokenizer: Tokenizer, *, ema: bool = False) -> None:
    """Refuse to resume from a checkpoint of another architecture or vocabulary (before Lightning loads it), or
    from one that kept a moving average of the weights into a run that keeps none (``ema``)."""
    stored = read_checkpoint(checkpoint)
    if "current_model_state" in stored and not ema:
        raise RunError(
            f"resume={checkpoint}: the run kept a moving average of its weights (optim.ema_decay); resume with the "
            f"same optim.ema_decay (without it the run would go on from the average, not from its weights)"
        )
    missing = [key for key in ("optimizer_states", "loops") if key not in stored]
    if missing:  # e.g. an average of checkpoints (mt.average), or a file converted from another toolkit
        raise RunError(
            f"resume={checkpoint}: the checkpoint holds weights only (no {' or '.join(missing)}), so training cannot "
            f"go on from it exactly; resume from last.ckpt or a step checkpoint of the run"
        )
    if "tokenizer" in stored and stored["tokenizer"] != tokenizer.to_state():
        raise RunError(
            f"resume={checkpoint}: the checkpoint's tokenizer differs from this run's ({tokenizer.origin}); "
            f"resume in the run directory that trained it"
        )
    differences = architecture_differences(stored, model)
    if differences:
        raise RunError(f"resume={checkpoint}: the checkpoint is of another model ({'; '.join(differences)})")


def log_changed_settings(checkpoint: Path, settings: dict[str, dict]) -> None:
    """Say which settings a resume changes (``settings``: this run's ``optim``, ``model``, ``search`` and
    ``validation`` as dicts): they apply from the checkpoint's step on, while the run's ``config.yaml`` keeps the
    first launch's (a resume may change them, a learning rate say, on purpose; never without a word)."""
    stored = read_checkpoint(checkpoint)
    saved = stored.get("hyper_parameters") or {}
    changed = [
        f"{section}.{key}={value} ({saved[section][key]} there)"
        for section, fields in settings.items()
        if isinstance(saved.get(section), dict)
        for key, value in fields.items()
        if key in saved[section] and saved[section][key] != value
    ]
    if changed:
        log.warning(
            "resuming from %s (step %s) with other settings than it was trained with: %s",
            checkpoint,
            stored.get("global_step"),
            ", ".join(changed),
        )


def architecture_differences(stored: dict, model: ModelConfig) -> list[str]:
    """How the model a checkpoint holds differs from ``model`` in what its weights' names and shapes mean."""
    saved = architecture(stored)
    return [
        f"model.{name}={value} there, {getattr(model, name)} here"
        for name, value in saved.items()
        if value != getattr(model, name)
    ]


def newest_training_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The most recently written of the run's whole training checkpoints other than ``last.ckpt`` (``best.ckpt``,
    ``step*.ckpt``: Lightning's, with the optimizer and loop state; not an average saved beside them)."""
    steps = [p for p in checkpoint_dir.glob("step*.ckpt") if STEP_CHECKPOINT.fullmatch(p.name)]  # not step_avg.ckpt
    candidates = [checkpoint_dir / "best.ckpt", *steps]
    for path in sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            verify_checkpoint(path)
        except RunError as error:
            log.warning("%s", error)
            continue
        return path
    return None


STEP_CHECKPOINT = re.compile(r"step\d+\.ckpt")  # the names the run's own writers give (trainer.keep_checkpoints)
OWN_TEMPORARY = re.compile(r"\.(last|best|step\d+)\.ckpt\.tmp\d+")


def remove_stale_temporaries(checkpoint_dir: Path) -> None:
    """Remove the temporary files of the run's own checkpoint writes that were killed (``.last.ckpt.tmpPID``: a
    whole checkpoint's size each; another command's output written there is not the run's); called by the job that
    holds the run directory, before it writes any."""
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.glob(".*.ckpt.tmp*"):
            if OWN_TEMPORARY.fullmatch(path.name):
                log.info("removing %s, left by a checkpoint write that was killed", path.name)
                path.unlink(missing_ok=True)


def verify_checkpoint(path: Path) -> None:
    """Check every record of a checkpoint (a zip archive) against its CRC before resuming from it."""
    advice = "move it away (resume=auto then takes the newest other checkpoint)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise RunError(f"{path} is not a readable checkpoint ({error}); {advice}") from None
    if bad is not None:
        raise RunError(f"{path} is corrupt (CRC mismatch in {bad}); {advice}")
