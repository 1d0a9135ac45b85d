"""The logger= group, offline: each logger receives every logged training loss and the validation scores, a
resumed run goes on in the same MLflow / W&B run, and the run directory keeps its documented layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mt.errors import ConfigError
from mt.training.run import train
from tests.conftest import tiny_train_config


def train_and_resume(data_dir: Path, run_dir: Path, **logger: object) -> dict[int, float]:
    """4 steps, then resumed to 6, validating every 2; returns every logged train/loss by step (CSV)."""
    for steps, resume in ((4, None), (6, "auto")):
        config = tiny_train_config(
            data_dir,
            **{
                "trainer.max_steps": steps,
                "trainer.val_check_interval": 2,
                "trainer.check_val_every_n_epoch": None,
                "trainer.log_every_n_steps": 1,
                "test_after_training": False,
                "resume": resume,
                **{f"logger.{key}": value for key, value in logger.items()},
            },
        )
        train(config, run_dir)
    found = {}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        with open(path, newline="") as handle:
            found.update({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r["train/loss"]})
    assert sorted(found) == list(range(6))
    return found


def test_the_default_loggers_are_csv_and_tensorboard_only(toy_corpus_dir, tmp_path):
    train_and_resume(toy_corpus_dir, tmp_path)
    assert list(tmp_path.glob("tb/**/events.out.tfevents.*"))
    assert not {"mlflow.db", "mlflow_run_id", "wandb", "wandb_run_id"} & {p.name for p in tmp_path.iterdir()}


def test_mlflow_in_a_sqlite_store_gets_every_loss_and_a_resume_goes_on_in_the_same_run(toy_corpus_dir, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    logged = train_and_resume(toy_corpus_dir, tmp_path, mlflow=True, tensorboard=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "mt"]
    (run,) = client.search_runs([experiment.experiment_id])  # one run, resumed into
    assert run.info.run_id == (tmp_path / "mlflow_run_id").read_text().strip()
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert history.keys() == logged.keys()
    assert all(history[step] == pytest.approx(logged[step], rel=1e-6) for step in logged)
    assert len(client.get_metric_history(run.info.run_id, "val/bleu")) == 3  # steps 2, 4, 6
    assert run.data.params["model/d_model"] == "32"  # the hyperparameters
    assert not list(tmp_path.glob("tb"))


def test_wandb_offline_gets_every_loss_and_a_resume_goes_on_in_the_same_run(toy_corpus_dir, tmp_path, monkeypatch):
    """What mt hands W&B, recorded where it reaches the W&B run (``wandb.Run.log``, below Lightning's logger):
    every train/loss of the CSV log, at its step and with its value, and the three validation scores, all in
    the one W&B run that the resume goes on in. What W&B stores is checked only as far as its two offline
    record files (one a process) of that run naming both metrics: this wandb has no reader for those files."""
    pytest.importorskip("wandb")
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network, whatever a user's settings say
    calls: list[tuple[str, dict]] = []
    log = Run.log

    def recording(self, data, step=None, commit=None):
        calls.append((self.id, dict(data)))
        return log(self, data, step=step, commit=commit)

    monkeypatch.setattr(Run, "log", recording)
    logged = train_and_resume(toy_corpus_dir, tmp_path, wandb=True)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert {run for run, _ in calls} == {run_id}
    losses = {data["trainer/global_step"]: float(data["train/loss"]) for _, data in calls if "train/loss" in data}
    assert losses.keys() == logged.keys()
    assert all(losses[step] == pytest.approx(logged[step], rel=1e-6) for step in logged)
    scores = sorted(data["trainer/global_step"] for _, data in calls if "val/bleu" in data)
    assert len(scores) == 3  # after steps 2, 4 and 6
    records = sorted(tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(records) == 2  # the first process and the resumed one, both in W&B run `run_id`
    for path in records:  # W&B's record files hold metric names as plain protobuf strings
        data = path.read_bytes()
        assert b"train/loss" in data and b"val/bleu" in data
    assert list(tmp_path.glob("tb/**/events.out.tfevents.*"))  # TensorBoard and CSV stay


def test_a_logger_whose_package_is_missing_is_a_one_line_error(toy_corpus_dir, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    config = tiny_train_config(toy_corpus_dir, **{"logger.mlflow": True, "trainer.max_steps": 1})
    with pytest.raises(ConfigError, match=r"logger.mlflow=true needs the mlflow package: pip install -e '.\[mlflow\]'"):
        train(config, tmp_path)
    assert not (tmp_path / "checkpoints/last.ckpt").exists()  # refused before training
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "tokenizer").exists()  # and before its records
