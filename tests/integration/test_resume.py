"""Resumed training equals uninterrupted training: same losses at every step, same parameters."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import mt.training.run
from mt.training.checkpointing import AtomicCheckpointIO
from mt.training.run import train
from tests.conftest import tiny_train_config
from tests.helpers import logged, losses


def run(
    data_dir: Path,
    run_dir: Path,
    max_steps: int,
    resume: str | None = None,
    every: int | None = 1,
    accumulate: int = 1,
    **trainer: object,
) -> None:
    config = tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": max_steps,
            "trainer.log_every_n_steps": 1,
            "trainer.checkpoint_every_n_steps": every,
            "trainer.accumulate_grad_batches": accumulate,
            "model.dropout": 0.2,
            "data.max_tokens": 300,
            "validation.decode": "none",
            "test_after_training": False,
            "resume": resume,
            **{f"trainer.{key}": value for key, value in trainer.items()},
        },
    )
    train(config, run_dir)


def assert_same_run(straight: Path, resumed: Path, steps: int) -> None:
    """The same loss at every step, and the same final parameters, as the uninterrupted run."""
    expected = losses(straight / "csv/metrics.csv")
    got = {**losses(resumed / "csv/metrics.csv"), **losses(resumed / "csv/resume_1/metrics.csv")}
    assert sorted(got) == sorted(expected) == list(range(steps))
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
    final_straight = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)
    final_resumed = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)
    assert final_resumed["global_step"] == final_straight["global_step"] == steps
    for name, tensor in final_straight["state_dict"].items():
        torch.testing.assert_close(final_resumed["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)


class Killed(Exception):
    pass


class KillAt(L.Callback):
    """Stops the process (an exception) when the update ``step`` is about to start: a crash after every
    checkpoint of the steps before it was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed


class StopAt(L.Callback):
    """Asks the trainer to stop after the update ``step``, as Lightning's time limit (``max_time``) and early
    stopping do: from a callback that runs before the checkpoint writers."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def with_callback(monkeypatch, callback: L.Callback) -> None:
    """Runs of ``mt.training.run.train`` get ``callback`` first among their callbacks."""
    build_trainer = mt.training.run.build_trainer

    def with_it(*args, **kwargs):
        trainer, best = build_trainer(*args, **kwargs)
        trainer.callbacks.insert(0, callback)
        return trainer, best

    monkeypatch.setattr(mt.training.run, "build_trainer", with_it)


# Each writer of last.ckpt, alone: the run stops (or is killed) after it wrote, and resumes from it. The toy corpus
# makes 25 batches an epoch at max_tokens=300; validation (loss only) runs at each epoch end unless told otherwise.
@pytest.mark.parametrize(
    "writer,first_run,saved,trainer",
    [
        ("end of training at max_steps", {"max_steps": 23}, 23, {"limit_val_batches": 0}),
        ("end of training, stopped early", {"stop": 17}, 17, {"limit_val_batches": 0}),
        # the stop validates, and last.ckpt is written again at on_validation_end (Lightning restored the
        # logged step one short from it: align_logged_step)
        ("end of training, stopped early, validated", {"stop": 17}, 17, {}),
        ("validation", {"kill": 24}, 21, {"val_check_interval": 7, "check_val_every_n_epoch": None}),
        ("epoch end", {"kill": 27}, 25, {"limit_val_batches": 0}),
        ("validation at the epoch end", {"kill": 27}, 25, {}),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_resume_from_each_writer_of_last_ckpt_equals_uninterrupted_run(
    toy_corpus_dir, tmp_path, monkeypatch, writer, first_run, saved, trainer
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 40, every=None, **trainer)
    if "kill" in first_run:
        with_callback(monkeypatch, KillAt(first_run["kill"]))
        with pytest.raises(Killed):
            run(toy_corpus_dir, resumed, 40, every=None, **trainer)
    else:
        if "stop" in first_run:
            with_callback(monkeypatch, StopAt(first_run["stop"]))
        run(toy_corpus_dir, resumed, first_run.get("max_steps", 40), every=None, **trainer)
    monkeypatch.undo()
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == saved
    run(toy_corpus_dir, resumed, 40, resume="auto", every=None, **trainer)
    assert_same_run(straight, resumed, 40)


def test_resume_with_gradient_accumulation_never_saves_inside_a_window(toy_corpus_dir, tmp_path, monkeypatch):
    """25 batches an epoch in windows of 2: (0, 1), ..., (22, 23), (24). A checkpoint is only valid
    after an update (an even number of batches into the epoch, or all 25), never mid-window."""
    saved_positions = []
    save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved_positions.append(checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"])
        return save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 20, accumulate=2)
    run(toy_corpus_dir, resumed, 11, accumulate=2)  # 22 batches: stops between two windows
    run(toy_corpus_dir, resumed, 20, resume="auto", accumulate=2)
    assert saved_positions and all(p % 2 == 0 or p == 25 for p in saved_positions), saved_positions

    expected = losses(straight / "csv/metrics.csv")
    got = {**losses(resumed / "csv/metrics.csv"), **losses(resumed / "csv/resume_1/metrics.csv")}
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
    final_straight = torch.load(straight / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    final_resumed = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for name, tensor in final_straight.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_validation_counted_across_epochs_with_accumulation_saves_at_window_ends(toy_corpus_dir, tmp_path, monkeypatch):
    """25 batches an epoch, windows of 3, validation every 6 batches counted across epochs: an epoch ends with a
    window of one, so from the second epoch on the count of 6 fell inside windows, and so did last.ckpt. Each
    epoch now ends with a whole window (27 batches, 2 wrapped around), so every validation and its checkpoint
    falls at a window's end, and a run killed after one resumes exactly."""
    saved_positions = []
    save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved_positions.append(checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"])
        return save(self, checkpoint, path, storage_options)

    options = {"accumulate": 3, "every": None, "val_check_interval": 6, "check_val_every_n_epoch": None}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 24, **options)
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    with_callback(monkeypatch, KillAt(15))  # in the second epoch, after the validation of update 14
    with pytest.raises(Killed):
        run(toy_corpus_dir, resumed, 24, **options)
    monkeypatch.undo()
    assert saved_positions and all(p % 3 == 0 for p in saved_positions), saved_positions
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 14
    run(toy_corpus_dir, resumed, 24, resume="auto", **options)
    assert_same_run(straight, resumed, 24)


class KilledInValidation(L.Callback):
    """Stops the process (an exception, as a kill) in the validation of update ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer, *args) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step:
            raise Killed


def test_a_kill_inside_a_validation_at_a_checkpoint_step_loses_no_validation(toy_corpus_dir, tmp_path, monkeypatch):
    """last.ckpt every 5 updates, a validation every 10: at update 10 both. Saved before the validation, the
    checkpoint told Lightning on resume that the validation had run, so a kill during it lost it for good (and
    best.ckpt and early stopping one score). Saved once, after the validation, the resumed run goes back to update
    5 and has every validation of an uninterrupted run."""
    options = {"every": 5, "val_check_interval": 10, "check_val_every_n_epoch": None}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 20, **options)
    with_callback(monkeypatch, KilledInValidation(10))
    with pytest.raises(Killed):
        run(toy_corpus_dir, resumed, 20, **options)
    monkeypatch.undo()
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    run(toy_corpus_dir, resumed, 20, resume="auto", **options)
    assert_same_run(straight, resumed, 20)
    expected = validation_losses(straight)
    assert sorted(expected) == [10, 20] and sorted(validation_losses(resumed)) == [10, 20]
    for step, value in expected.items():
        assert abs(validation_losses(resumed)[step] - value) < 1e-5


class Tick(L.Callback):
    """One second of Lightning's Timer clock (``time.monotonic`` in its module) a batch: the time limit is reached
    at a known batch, inside an accumulation window."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_start(self, *args) -> None:
        self.now += 1.0


def test_a_time_limit_stops_a_run_with_accumulation_at_a_window_end(toy_corpus_dir, tmp_path, monkeypatch):
    """Windows of 3 batches, a limit of 10 seconds at one a batch: reached after batch 10 (counted from 1), inside
    the window of batches 10-12. The run stops after that window, and the checkpoint of the stop resumes exactly
    (saved mid-window, it would lack the window's first gradients)."""
    import lightning.pytorch.callbacks.timer as timer_module

    saved_positions = []
    save = AtomicCheckpointIO.save_checkpoint

    def recording_save(self, checkpoint, path, storage_options=None):
        saved_positions.append(checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"])
        return save(self, checkpoint, path, storage_options)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(toy_corpus_dir, straight, 8, accumulate=3, limit_val_batches=0)
    tick = Tick()
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=tick.monotonic))
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
    with_callback(monkeypatch, tick)
    run(toy_corpus_dir, resumed, 8, accumulate=3, limit_val_batches=0, max_time="00:00:00:10", every=None)
    monkeypatch.undo()
    assert saved_positions == [12]  # the end of training, after the window of batches 10-12: update 4
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4
    run(toy_corpus_dir, resumed, 8, resume="auto", accumulate=3, limit_val_batches=0)
    assert_same_run(straight, resumed, 8)


def test_a_crash_between_a_checkpoint_and_its_step_log_leaves_no_hole_in_the_log(toy_corpus_dir, tmp_path, monkeypatch):
    """Lightning writes a step's logs after the callbacks that save checkpoints at that step: a kill in
    between must not lose the step's loss (the resumed run starts after it, so it would never be logged)."""
    from lightning.pytorch.loggers import CSVLogger

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run(toy_corpus_dir, straight, 20)
    write = CSVLogger.log_metrics

    def dying_write(self, metrics, step=None):
        if step == 11 and "train/loss" in metrics:
            raise Killed  # after last.ckpt at step 12 (11 counted from 0) was saved
        return write(self, metrics, step)

    monkeypatch.setattr(CSVLogger, "log_metrics", dying_write)
    with pytest.raises(Killed):
        run(toy_corpus_dir, crashed, 20)
    assert torch.load(crashed / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 12
    assert 11 not in losses(crashed / "csv/metrics.csv")
    monkeypatch.setattr(CSVLogger, "log_metrics", write)
    run(toy_corpus_dir, crashed, 20, resume="auto")

    expected = losses(straight / "csv/metrics.csv")
    got = {**losses(crashed / "csv/metrics.csv"), **losses(crashed / "csv/resume_1/metrics.csv")}
    assert sorted(got) == sorted(expected) == list(range(20))
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])


@pytest.mark.parametrize("every", [None, 2])
def test_last_checkpoint_follows_every_validation_epoch_and_the_end(tmp_path, every):
    """A run killed at any point has a ``last.ckpt`` of its latest validation (or epoch end, or N-step
    save) to resume from, and a finished run's ``last.ckpt`` is its final step (Lightning's own
    ``save_last`` wrote it only beside a top-k checkpoint, that is never, for this writer)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from mt.training.checkpointing import LastCheckpoint

    class Toy(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    last_path = tmp_path / "checkpoints" / "last.ckpt"
    seen: list[tuple[str, int, int | None]] = []

    class Probe(L.Callback):
        def record(self, when, trainer):
            step = torch.load(last_path, weights_only=False)["global_step"] if last_path.exists() else None
            seen.append((when, trainer.global_step, step))

        def on_train_epoch_start(self, trainer, module):
            self.record("epoch start", trainer)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step in (4, 5):
                self.record("mid-epoch", trainer)

    loader = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)  # 3 updates an epoch
    last = LastCheckpoint(
        dirpath=tmp_path / "checkpoints",
        save_top_k=0,
        save_last=True,
        every_n_train_steps=every,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_epochs=3,
        val_check_interval=2,
        callbacks=[last, Probe()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(Toy(), loader, loader)
    # validations after 2 batches of each epoch (steps 2, 5, 8) and the epoch ends (3, 6, 9); with every=2
    # also the steps 2, 4, 6, 8: only step 4 is saved by nothing else, so before update 5 the two differ
    at_4 = 3 if every is None else 4
    assert seen == [
        ("epoch start", 0, None),
        ("epoch start", 3, 3),
        ("mid-epoch", 4, at_4),
        ("mid-epoch", 5, 5),
        ("epoch start", 6, 6),
    ]
    assert torch.load(last_path, weights_only=False)["global_step"] == 9


def test_a_requeued_job_goes_on_from_its_own_last_checkpoint(tmp_path, monkeypatch, caplog):
    import mt.training.resume
    import mt.training.run

    monkeypatch.setattr(mt.training.resume, "verify_checkpoint", lambda path: None)
    started_from = tmp_path / "other_run.ckpt"
    torch.save({"global_step": 5, "state_dict": {}}, started_from)  # read for its step (verify_checkpoint: stubbed)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # requeued before its first save: the checkpoint it was started from, or a fresh start
    assert mt.training.resume.resume_checkpoint(str(started_from), checkpoints) == str(started_from)
    with caplog.at_level("WARNING"):
        assert mt.training.resume.resume_checkpoint(None, checkpoints) is None
    # said, not only logged at info: with a run directory named by the launch time, every requeue starts over
    assert f"but {checkpoints} holds no checkpoint: training from the start" in caplog.text
    torch.save({"global_step": 3, "state_dict": {}}, checkpoints / "last.ckpt")  # behind the one given: no rewind
    for resume in (None, "auto", str(started_from)):
        assert mt.training.resume.resume_checkpoint(resume, checkpoints) == str(checkpoints / "last.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a first start does as told
    assert mt.training.resume.resume_checkpoint(str(started_from), checkpoints) == str(started_from)


def run_selecting(data_dir: Path, run_dir: Path, max_steps: int, resume: str | None = None, **trainer: object) -> dict:
    """A run that validates (loss only) every 5 steps, with a learning rate so high that most validations after
    the first are worse: on the toy corpus, val/loss at steps 5, 10, 15, 20, 25 is about 10, 21, 15, 13, 8.
    Its ``selection`` (also ``selection.json``)."""
    return train(selecting_config(data_dir, max_steps, resume, **trainer), run_dir)["selection"]


def selecting_config(data_dir: Path, max_steps: int, resume: str | None = None, **trainer: object):
    return tiny_train_config(
        data_dir,
        **{
            "trainer.max_steps": max_steps,
            "trainer.val_check_interval": 5,
            "trainer.check_val_every_n_epoch": None,
            "trainer.log_every_n_steps": 5,
            "optim.lr": 1.0,
            "optim.warmup_steps": 5,
            "data.max_tokens": 300,
            "validation.decode": "none",
            "validation.metric": "loss",
            "test_after_training": False,
            "resume": resume,
            **{f"trainer.{key}": value for key, value in trainer.items()},
        },
    )


def validation_losses(run_dir: Path) -> dict[int, float]:
    """val/loss by the global step it was computed at (Lightning logs it one lower)."""
    return {step + 1: value for step, value in logged(run_dir, "val/loss").items()}


def test_a_moved_or_copied_run_directory_resumed_keeps_its_best_checkpoint(toy_corpus_dir, tmp_path):
    """Resumed in a copy (``cp -a A B``) or after a move, a run keeps its best score: ``best.ckpt`` and
    ``selection.json`` are the uninterrupted run's, in the new directory (Lightning forgot the score of a
    checkpoint writer whose directory changed, so its next validation replaced ``best.ckpt``, however worse)."""
    straight, first, copy, moved = (tmp_path / name for name in ("straight", "A", "B", "C"))
    expected = run_selecting(toy_corpus_dir, straight, 20, keep_checkpoints=2)
    val_loss = validation_losses(straight)
    best_step = min(val_loss, key=val_loss.get)
    assert (expected["step"], expected["value"]) == (best_step, round(val_loss[best_step], 4))
    # the run is copied at step 10: both validations after it are worse than the best before it
    assert min(val_loss[15], val_loss[20]) > min(val_loss[5], val_loss[10])

    run_selecting(toy_corpus_dir, first, 10, keep_checkpoints=2)
    shutil.copytree(first, copy, symlinks=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run_selecting(toy_corpus_dir, copy, 20, resume="auto", keep_checkpoints=2)
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    best_path = os.path.realpath(copy / "checkpoints" / "best.ckpt")
    assert got == {**expected, "checkpoint": best_path}
    best_copy = torch.load(best_path, weights_only=False)
    best_straight = torch.load(expected["checkpoint"], weights_only=False)
    assert best_copy["global_step"] == best_straight["global_step"] == best_step
    for name, tensor in best_straight["state_dict"].items():
        torch.testing.assert_close(best_copy["state_dict"][name], tensor, rtol=1e-5, atol=1e-6)
    # the kept step checkpoints (top 2 by step) are pruned in the copy as in the uninterrupted run
    kept = sorted(path.name for path in (straight / "checkpoints").glob("step*.ckpt"))
    assert sorted(path.name for path in (copy / "checkpoints").glob("step*.ckpt")) == kept

    # moved once it has finished, and resumed with nothing left to train: the same selection, in its new place
    shutil.move(copy, moved)
    got = run_selecting(toy_corpus_dir, moved, 20, resume="auto", keep_checkpoints=2)
    assert got == {**expected, "checkpoint": os.path.realpath(moved / "checkpoints" / "best.ckpt")}
    assert json.loads((moved / "selection.json").read_text()) == got


def test_a_run_resumed_from_another_runs_checkpoint_selects_among_its_own_validations(toy_corpus_dir, tmp_path):
    """``resume=PATH`` of another run directory is no move: the new directory has none of that run's files, so its
    best checkpoint is the best of its own validations (none is kept pointing at a file it does not have)."""
    straight, first, other = tmp_path / "straight", tmp_path / "A", tmp_path / "D"
    run_selecting(toy_corpus_dir, straight, 20)
    val_loss = validation_losses(straight)
    best_after_10 = min((15, 20), key=val_loss.get)
    run_selecting(toy_corpus_dir, first, 10)
    got = run_selecting(toy_corpus_dir, other, 20, resume=str(first / "checkpoints" / "last.ckpt"))
    assert got["step"] == best_after_10
    assert got["value"] == round(val_loss[best_after_10], 4)
    assert got["checkpoint"] == os.path.realpath(other / "checkpoints" / "best.ckpt")
    # last.ckpt alone copied into a new run directory: no best.ckpt came with it, so the same as resume=PATH
    alone = tmp_path / "E"
    (alone / "checkpoints").mkdir(parents=True)
    shutil.copy(first / "checkpoints" / "last.ckpt", alone / "checkpoints" / "last.ckpt")
    got = run_selecting(toy_corpus_dir, alone, 20, resume="auto")
    assert (got["step"], got["value"]) == (best_after_10, round(val_loss[best_after_10], 4))
    assert got["checkpoint"] == os.path.realpath(alone / "checkpoints" / "best.ckpt")


def test_the_configured_early_stopping_patience_wins_on_resume(toy_corpus_dir, tmp_path):
    """A run stopped early with patience 1 and resumed with patience 3 stops where an uninterrupted run with
    patience 3 stops: the configured patience applies, and the count of validations without improvement (and
    the best score) are the checkpoint's. Lightning restored the checkpoint's patience, and stopped at once."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_selecting(toy_corpus_dir, straight, 40, early_stopping_patience=3)
    run_selecting(toy_corpus_dir, resumed, 40, early_stopping_patience=1)
    stopped_at = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    run_selecting(toy_corpus_dir, resumed, 40, resume="auto", early_stopping_patience=3)

    expected, got = validation_losses(straight), validation_losses(resumed)
    # hand-checked from the log: patience 1 stops at the first worse validation, patience 3 at the third in a row
    steps = sorted(expected)
    assert steps == [5, 10, 15, 20] and stopped_at == 10
    assert expected[5] < min(expected[10], expected[15], expected[20])
    assert sorted(got) == steps
    for step in steps:
        assert abs(got[step] - expected[step]) < 1e-4, (step, got[step], expected[step])
    final = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=False) for run in (straight, resumed)]
    assert final[0]["global_step"] == final[1]["global_step"] == 20


def test_a_resumed_run_keeps_the_same_step_checkpoints_as_an_uninterrupted_one(toy_corpus_dir, tmp_path):
    """``trainer.keep_checkpoints=2``: a resume prunes the step checkpoints as the uninterrupted run does (last.ckpt
    is written after them, so it records the one saved at its own step, which a resume would otherwise keep)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_selecting(toy_corpus_dir, straight, 20, keep_checkpoints=2)
    run_selecting(toy_corpus_dir, resumed, 10, keep_checkpoints=2)
    run_selecting(toy_corpus_dir, resumed, 20, resume="auto", keep_checkpoints=2)
    kept = sorted(path.name for path in (straight / "checkpoints").glob("step*.ckpt"))
    assert kept == ["step0000015.ckpt", "step0000020.ckpt"]
    assert sorted(path.name for path in (resumed / "checkpoints").glob("step*.ckpt")) == kept


def test_checkpoints_file_the_writers_state_under_the_names_older_checkpoints_use(toy_corpus_dir, tmp_path):
    """Lightning keys a callback's state by its class name: the writers and early stopping file theirs under
    ModelCheckpoint, LastCheckpoint and EarlyStopping, as checkpoints written before their subclasses existed do,
    so resuming such a run in place keeps its best score, kept checkpoints and early-stopping count."""
    run_selecting(toy_corpus_dir, tmp_path / "run", 10, keep_checkpoints=2, early_stopping_patience=3)
    keys = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["callbacks"]
    names = sorted(key.split("{")[0] for key in keys)
    assert names.count("ModelCheckpoint") == 2 and {"LastCheckpoint", "EarlyStopping"} <= set(names)
    assert not {"RunCheckpoint", "RunLastCheckpoint", "ConfiguredEarlyStopping"} & set(names)


def test_a_save_killed_before_its_last_checkpoint_resumes_from_the_newest_other(toy_corpus_dir, tmp_path, caplog):
    """A kill while the first last.ckpt was written (best.ckpt is written before it) left checkpoints but no
    last.ckpt: resume=auto, and every SLURM requeue with it, was refused until someone stepped in, and the killed
    write's temporary file (a whole checkpoint) stayed."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    options = {"keep_checkpoints": 2, "val_check_interval": 3, "check_val_every_n_epoch": None}
    run(toy_corpus_dir, straight, 9, every=3, **options)
    run(toy_corpus_dir, resumed, 6, every=3, **options)
    checkpoints = resumed / "checkpoints"
    (checkpoints / "last.ckpt").rename(checkpoints / ".last.ckpt.tmp4242")  # its write killed before the rename
    (checkpoints / "step0000006.ckpt").write_bytes(b"cut short")  # and a step checkpoint spoilt: skipped, named
    torch.save({"state_dict": {}}, checkpoints / "step_avg2.ckpt")  # an average saved there: not the run's own
    (checkpoints / ".avg.ckpt.tmp4243").write_bytes(b"another command's write in progress")
    with caplog.at_level("WARNING"):
        run(toy_corpus_dir, resumed, 9, resume="auto", every=3, **options)
    assert "holds no last.ckpt; resuming from best.ckpt, its newest checkpoint" in caplog.text
    assert "step0000006.ckpt is not a readable checkpoint" in caplog.text
    assert [p.name for p in checkpoints.glob(".*tmp*")] == [".avg.ckpt.tmp4243"]
    assert_same_run(straight, resumed, 9)


class SignalAt(L.Callback):
    """SIGTERM, as the OS would deliver it to the handler installed for it, in the update that reaches ``step``
    or, ``during_validation``, in the validation of that step."""

    def __init__(self, step: int, during_validation: bool) -> None:
        self.step, self.during_validation, self.sent = step, during_validation, False

    def _send(self) -> None:
        import signal

        self.sent = True
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.during_validation and not self.sent and trainer.global_step == self.step - 1:
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            self.during_validation
            and not self.sent
            and not trainer.sanity_checking
            and trainer.global_step == self.step
        ):
            self._send()


@pytest.mark.parametrize("during_validation", [False, True], ids=["in the update", "in its validation"])
def test_a_stop_at_a_validation_step_keeps_that_validation(toy_corpus_dir, tmp_path, monkeypatch, during_validation):
    """A signal in the update before a validation saved and skipped that validation, and the resumed run never ran
    it (Lightning takes a checkpoint of that step as validated): one score fewer for best.ckpt, early stopping
    and the curve. A signal during a validation stopped the run only after one more update."""
    import mt.faults
    from tests.helpers import with_callback

    straight = run_selecting(toy_corpus_dir, tmp_path / "straight", 15)
    signal_at = SignalAt(5, during_validation)
    with_callback(monkeypatch, signal_at)
    written = []  # last.ckpt's writes once the signal came (the named point every checkpoint write passes)
    monkeypatch.setattr(
        mt.faults,
        "point",
        lambda name, path=None: written.append(name) if signal_at.sent and str(path).endswith("last.ckpt") else None,
    )
    assert train(selecting_config(toy_corpus_dir, 15), tmp_path / "preempted") is None  # stopped
    monkeypatch.undo()
    # Saved before the validation (a kill during it keeps the update), then once after it: not twice after it
    assert written == ["checkpoint_write"] * (1 if during_validation else 2)
    assert torch.load(tmp_path / "preempted/checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    assert sorted(validation_losses(tmp_path / "preempted")) == [5]  # validated before it stopped
    resumed = run_selecting(toy_corpus_dir, tmp_path / "preempted", 15, resume="auto")
    expected = validation_losses(tmp_path / "straight")
    assert sorted(expected) == [5, 10, 15]
    assert validation_losses(tmp_path / "preempted") == pytest.approx(expected, abs=1e-5)
    assert (resumed["step"], resumed["value"]) == (straight["step"], pytest.approx(straight["value"], abs=1e-4))


def test_a_resume_with_changed_settings_says_which(toy_corpus_dir, tmp_path, caplog):
    """optim.lr=0.3 on a resume of a run trained at 0.003 jumped the rate without a word (config.yaml kept 0.003)."""
    settings = {"trainer.max_steps": 4, "validation.decode": "none", "test_after_training": False}
    train(tiny_train_config(toy_corpus_dir, **settings, **{"optim.lr": 3e-3, "model.dropout": 0.1}), tmp_path / "run")
    resumed = {**settings, "trainer.max_steps": 6, "resume": "auto", "optim.lr": 0.3, "model.dropout": 0.3}
    with caplog.at_level("WARNING"):
        train(tiny_train_config(toy_corpus_dir, **resumed), tmp_path / "run")
    line = next(
        r.getMessage() for r in caplog.records if "with other settings than it was trained with" in r.getMessage()
    )
    assert line.endswith(
        "(step 4) with other settings than it was trained with: optim.lr=0.3 (0.003 there), "
        "model.dropout=0.3 (0.1 there)"
    ), line
