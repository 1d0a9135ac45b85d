"""Which processes a launch has, as build_trainer tells Lightning: torchrun's variables inside a SLURM job, and
the DDP that strategy=auto means over several devices, configured like trainer=ddp's."""

from __future__ import annotations

import importlib.util
from datetime import timedelta

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import DDPStrategy

from mt.training.trainer import build_strategy, build_trainer
from tests.conftest import tiny_train_config

SLURM_STEP = {  # srun --ntasks-per-node=1 torchrun --nproc-per-node=2 ...: one SLURM task, two torchrun workers
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NNODES": "1",
    "SLURM_JOB_ID": "4244",
    "SLURM_JOB_NAME": "mt",
    "SLURM_NODELIST": "localhost",
    "SLURM_STEP_ID": "0",  # srun's: a step of the job
}
TORCHRUN_WORKER_1 = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "none",
}
DDP_ON_CPU = {
    "trainer.strategy": "ddp",
    "trainer.accelerator": "cpu",
    "trainer.devices": 2,
    "trainer.precision": "32-true",
}


def test_torchrun_inside_a_slurm_job_decides_the_ranks(monkeypatch, toy_corpus_dir, tmp_path):
    """mt forced Lightning's SLURM environment whenever SLURM's variables were set: this launch was refused
    (``devices=2`` against ``--ntasks-per-node=1``), and with devices=1 both workers trained as rank 0."""
    for name, value in {**SLURM_STEP, **TORCHRUN_WORKER_1}.items():
        monkeypatch.setenv(name, value)
    trainer, _ = build_trainer(tiny_train_config(toy_corpus_dir, **DDP_ON_CPU), tmp_path)
    assert isinstance(trainer.strategy.cluster_environment, TorchElasticEnvironment)
    assert (trainer.global_rank, trainer.world_size) == (1, 2)


def test_a_slurm_launch_without_torchrun_keeps_slurms_ranks_without_lightnings_requeue(
    monkeypatch, toy_corpus_dir, tmp_path
):
    for name, value in {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(name, value)
    trainer, _ = build_trainer(tiny_train_config(toy_corpus_dir, **DDP_ON_CPU), tmp_path)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert (trainer.global_rank, trainer.world_size) == (1, 2)


def test_strategy_auto_over_several_devices_is_ddp_with_the_configured_timeout(toy_corpus_dir, monkeypatch):
    """strategy=auto (the default) with devices=2 was Lightning's own DDP: its 30-minute collective timeout
    whatever trainer.collective_timeout_s said, and a buffer broadcast at every forward. In a notebook it stays
    Lightning's choice (ddp_fork), which a DDPStrategy would not be."""
    import mt.training.trainer

    made: list[dict] = []

    class Recorded(DDPStrategy):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(mt.training.trainer, "DDPStrategy", Recorded)
    options = {"trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.collective_timeout_s": 60}
    strategy = build_strategy(tiny_train_config(toy_corpus_dir, **options).trainer)
    assert isinstance(strategy, DDPStrategy)
    assert made == [{"timeout": timedelta(seconds=60), "broadcast_buffers": False, "gradient_as_bucket_view": True}]
    one_device = tiny_train_config(toy_corpus_dir, **{**options, "trainer.devices": 1}).trainer
    assert build_strategy(one_device) == "auto"
    monkeypatch.setattr(mt.training.trainer.sys, "ps1", ">>> ", raising=False)  # as in a notebook or a REPL
    assert build_strategy(tiny_train_config(toy_corpus_dir, **options).trainer) == "auto"


def test_devices_against_the_launchers_processes_is_a_one_line_refusal_before_the_records(
    monkeypatch, toy_corpus_dir, tmp_path
):
    """srun started two tasks a node but trainer.devices=1: Lightning's ValueError came with a traceback, after
    the run's config.yaml was written."""
    from mt.errors import RunError
    from mt.training.run import train

    for name, value in {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}.items():
        monkeypatch.setenv(name, value)
    logger = {"logger.mlflow": True} if importlib.util.find_spec("mlflow") else {}
    config = tiny_train_config(toy_corpus_dir, **{**DDP_ON_CPU, "trainer.devices": 1, **logger})
    with pytest.raises(
        RunError,
        match=r"^trainer.devices=1 trainer.num_nodes=1 against the processes the launcher "
        r"started: You set `devices=1` in Lightning, but the number of tasks per node",
    ):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run/config.yaml").exists()
    # nor an MLflow run's id, which made the next launch there take itself for a resume (no hyperparameters logged)
    assert not (tmp_path / "run/mlflow_run_id").exists()


def test_a_batch_script_running_a_job_of_several_tasks_itself_is_refused_at_once(monkeypatch, toy_corpus_dir, tmp_path):
    """sbatch --ntasks=2 with the command run by the script itself (srun forgotten): it waited 30 minutes for the
    task that never started, then blamed a dead rank."""
    from mt.errors import RunError
    from mt.training.run import train

    batch = {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}
    del batch["SLURM_STEP_ID"]  # the batch script is no step of srun's
    for name, value in batch.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    with pytest.raises(RunError, match=r"^SLURM_NTASKS=2, but this process is the job's batch script, not one of"):
        # (a short collective timeout: without the refusal, the run would wait there for the task never started)
        train(tiny_train_config(toy_corpus_dir, **DDP_ON_CPU, **{"trainer.collective_timeout_s": 5}), tmp_path / "run")
    assert not (tmp_path / "run/tokenizer").exists()  # at once, before anything is prepared
