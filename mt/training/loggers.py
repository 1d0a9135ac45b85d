"""The experiment loggers of a run (``logger=`` group), all Lightning's own: CSV always, TensorBoard, MLflow in
a local SQLite store, Weights & Biases offline.

A resumed run logs into the same MLflow run and the same W&B run as before: their ids are kept in the run
directory (``mlflow_run_id``, ``wandb_run_id``). CSV and TensorBoard log each resumed process into a folder
of its own (``csv/resume_K``), since Lightning's CSV logger would empty an existing one.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from mt.atomic import atomic_write
from mt.config import LoggerConfig
from mt.errors import ConfigError
from mt.training.distributed import is_global_zero_from_env


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, showing the training loss and learning rate as the module last read them
    (``progress_bar_values``, numbers read at logging steps): the bar never reads a device tensor, so
    drawing it does not make every step wait for the device."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {**super().get_metrics(trainer, pl_module), **getattr(pl_module, "progress_bar_values", {})}


def build_loggers(cfg: LoggerConfig, run_dir: Path, version: str) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(run_dir, name="csv", version=version)]
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(run_dir, name="tb", version=version))
    if cfg.mlflow:
        loggers.append(mlflow_logger(cfg, run_dir))
    if cfg.wandb:
        loggers.append(wandb_logger(cfg, run_dir))
    return loggers


def require_packages(cfg: LoggerConfig) -> None:
    """Refuse a logger whose package is not installed (``ConfigError``): at the start of a run, before anything
    of it is written."""
    for key in ("mlflow", "wandb"):  # extras of the package (TensorBoard is a dependency)
        if getattr(cfg, key):
            _require_package(key, key, f"logger.{key}")


def _require_package(module: str, extra: str, key: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key}=true needs the {module} package: pip install -e '.[{extra}]'")


def _saved_id(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _save_id(path: Path, run_id: str) -> None:
    with atomic_write(path) as handle:
        handle.write(f"{run_id}\n".encode())


def mlflow_logger(cfg: LoggerConfig, run_dir: Path) -> Logger:
    _require_package("mlflow", "mlflow", "logger.mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    id_file = run_dir / "mlflow_run_id"
    uri = cfg.mlflow_tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"

    run_id = _saved_id(id_file)

    class MLFlowLoggerOfThisRun(MLFlowLogger):
        def log_hyperparams(self, params) -> None:
            # MLflow refuses to change a logged parameter, and a resumed run may change some (a longer budget,
            # another rate): the run's first hyperparameters stay; each process's are in its csv/.../hparams.yaml.
            if run_id is None:
                super().log_hyperparams(params)

    logger = MLFlowLoggerOfThisRun(
        experiment_name=cfg.experiment,
        run_name=run_dir.name,
        tracking_uri=uri,
        run_id=run_id,  # a resumed run goes on in its MLflow run
    )
    if is_global_zero_from_env():  # the logging rank: create the MLflow run now, and keep its id
        _save_id(id_file, logger.run_id)
    return logger


def wandb_logger(cfg: LoggerConfig, run_dir: Path) -> Logger:
    _require_package("wandb", "wandb", "logger.wandb")
    from lightning.pytorch.loggers import WandbLogger

    id_file = run_dir / "wandb_run_id"
    run_id = _saved_id(id_file)
    if run_id is None and is_global_zero_from_env():  # the logging rank names the run (the others log nothing)
        run_id = uuid.uuid4().hex[:12]
        _save_id(id_file, run_id)
    return WandbLogger(
        project=cfg.experiment,
        name=run_dir.name,
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",  # a resumed run goes on in its W&B run
        offline=cfg.wandb_mode == "offline",
    )


def finish_loggers(failed: bool = False) -> None:
    """End what Lightning leaves open: its W&B logger keeps the W&B run going until the process exits, so a
    second run in one process (a test, a notebook) would log into the first. ``failed``: mark it so."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
