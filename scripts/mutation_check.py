"""Do the reliability tests bite? Break each guarantee with a one-line sabotage and run its tests.

    python scripts/mutation_check.py            # every row (about 10 minutes on 2 cores)
    python scripts/mutation_check.py rng dead   # rows whose name starts with these words

For each row of the Reliability table (docs/reliability.md, docs/scaling.md) the script replaces one line of
``mt/`` in the working tree, runs the tests that hold the guarantee, restores the file (also on Ctrl-C), and
prints whether they failed, as they must. It refuses to start when a file it would change has uncommitted
edits. Exit status 1 if some sabotage went unnoticed, or if a sabotage no longer applies (the line moved:
update the table below); 2 if a name starts no row (the message lists them) or a file has such edits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sabotage:
    name: str
    guarantee: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


RESUME = "tests/integration/test_resume.py"
FAULTS = "tests/integration/test_faults.py"
DISTRIBUTED = "tests/system/test_distributed.py"

SABOTAGES = [
    Sabotage(
        "rng",
        "resume restores every rank's random state (dropout)",
        "mt/training/rng.py",
        "            set_rng_state(states[trainer.global_rank])",
        "            pass",
        (f"{RESUME}::test_resume_from_each_writer_of_last_ckpt_equals_uninterrupted_run",),
    ),
    Sabotage(
        "final-update",
        "last.ckpt of the final update resumes exactly (saved at the batch's end, not at on_train_end)",
        "mt/training/checkpointing.py",
        "        last_update = 0 < trainer.max_steps <= trainer.global_step or trainer.should_stop",
        "        last_update = False",
        (f"{RESUME}::test_resume_from_each_writer_of_last_ckpt_equals_uninterrupted_run",),
    ),
    Sabotage(
        "logged-step",
        "a run resumed from the validation save of its last update logs every step at its own number",
        "mt/training/module.py",
        "        align_logged_step(self.trainer)  # after a resume, Lightning's count can be one short",
        "        pass",
        (f"{RESUME}::test_resume_from_each_writer_of_last_ckpt_equals_uninterrupted_run",),
    ),
    Sabotage(
        "ema-resume",
        "a run with a moving average of its weights resumes both sets exactly",
        "mt/training/ema.py",
        '        pl_module.load_state_dict(checkpoint["current_model_state"])  # the weights being trained',
        "        pass",
        ("tests/integration/test_schedules_ema.py::test_a_run_with_a_cosine_decay_and_an_ema_resumes_exactly",),
    ),
    Sabotage(
        "atomic",
        "a kill inside a checkpoint write leaves the previous last.ckpt whole",
        "mt/training/checkpointing.py",
        "        with atomic_write(path) as handle:",
        '        with open(path, "wb") as handle:',
        (f"{FAULTS}::test_kill_9_at_named_points_then_resume_equals_an_uninterrupted_run",),
    ),
    Sabotage(
        "step-log",
        "a kill between a checkpoint and its step's log line leaves no hole in the log",
        "mt/training/step_log.py",
        '            checkpoint["unwritten_step_log"] = {',
        '            checkpoint["unwritten_step_log_sabotaged"] = {',
        (f"{RESUME}::test_a_crash_between_a_checkpoint_and_its_step_log_leaves_no_hole_in_the_log",),
    ),
    Sabotage(
        "crc",
        "resume checks every record's CRC and refuses a corrupt checkpoint",
        "mt/training/resume.py",
        "            bad = archive.testzip()",
        "            bad = None",
        (f"{FAULTS}::test_a_corrupt_last_checkpoint_is_refused_when_resuming",),
    ),
    Sabotage(
        "sigterm",
        "SIGTERM saves last.ckpt after the current update and exits 0",
        "mt/training/preemption.py",
        "STOP_SIGNALS = (signal.SIGTERM,)",
        "STOP_SIGNALS = ()",
        (f"{FAULTS}::test_sigterm_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one",),
    ),
    Sabotage(
        "requeue",
        "SIGUSR1 under SLURM saves and runs scontrol requeue <job>",
        "mt/training/preemption.py",
        '        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)',
        '        result = subprocess.run(["true"], capture_output=True, text=True, timeout=60)',
        (
            f"{FAULTS}::test_sigusr1_under_slurm_saves_and_requeues_the_job",
            f"{DISTRIBUTED}::test_sbatch_script_on_two_nodes_requeued_by_a_signal_resumes_by_itself",
        ),
    ),
    Sabotage(
        "dead-rank",
        "a dead rank: the others exit with a one-line error naming their rank",
        "mt/training/run.py",
        "    if isinstance(error, torch.distributed.DistError):\n        return True",
        "    return False",
        (f"{DISTRIBUTED}::test_a_dead_rank_stops_the_others_instead_of_hanging",),
    ),
    Sabotage(
        "nonfinite",
        "a NaN/inf loss skips the update",
        "mt/training/guards.py",
        "        skip = torch.as_tensor(flags, device=device) > 0",
        "        skip = torch.as_tensor(flags, device=device) > 1e9",
        (f"{FAULTS}::test_a_nonfinite_loss_or_gradient_skips_the_update_and_training_goes_on",),
    ),
    Sabotage(
        "lock",
        "a second job in a live run directory is refused",
        "mt/training/distributed.py",
        "            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)",
        (f"{FAULTS}::test_a_second_job_in_a_live_run_directory_is_refused",),
    ),
    Sabotage(
        "accumulation",
        "no checkpoint is saved inside a gradient-accumulation window",
        "mt/training/checkpointing.py",
        "        mark_checkpoint_saved(self, trainer.global_step)\n        self._step_at_batch_end",
        "        self._step_at_batch_end",
        (f"{RESUME}::test_resume_with_gradient_accumulation_never_saves_inside_a_window",),
    ),
    Sabotage(
        "ranks",
        "resuming on another number of ranks goes on from the batches all ranks consumed",
        "mt/data/batching.py",
        '        replicas = int(state.get("replicas", self.num_replicas))',
        "        replicas = self.num_replicas",
        (f"{DISTRIBUTED}::test_resume_on_two_ranks_and_on_other_rank_counts",),
    ),
    Sabotage(
        "one-line-errors",
        "bad input gets a one-line error and exit status 2",
        "mt/cli.py",
        "            except USER_ERRORS as error:",
        "            except () as error:",
        (
            "tests/integration/test_hostile_input.py::test_a_key_added_with_plus_is_checked_against_the_schema",
            "tests/integration/test_bad_input.py::test_misspelt_keys_and_wrong_types_are_one_line_errors",
        ),
    ),
    Sabotage(
        "misaligned",
        "a misaligned corpus is refused, naming both files",
        "mt/data/readers.py",
        "    if counts[0] != counts[1]:",
        "    if False:",
        ("tests/unit/data/test_readers.py::test_misaligned_text_files_are_counted_to_the_end",),
    ),
]


def uncommitted(paths: set[str]) -> list[str]:
    result = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if line.strip()]


def check(sabotage: Sabotage) -> tuple[str, float]:
    """'caught' when a test failed, 'MISSED' when all passed, 'STALE' when the line is no longer there."""
    path = ROOT / sabotage.path
    original = path.read_text()
    if original.count(sabotage.old) != 1:
        return "STALE", 0.0
    start = time.monotonic()
    try:
        path.write_text(original.replace(sabotage.old, sabotage.new))
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow"]
        result = subprocess.run([*command, *sabotage.tests], cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    verdict = {0: "MISSED", 1: "caught"}.get(result.returncode, f"ERROR (pytest exit {result.returncode})")
    if verdict != "caught":
        print(result.stdout[-2000:], file=sys.stderr)
    return verdict, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="rows to run (prefixes of their names); all by default")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if not any(s.name.startswith(n) for s in SABOTAGES)]
    if unknown:
        parser.error(f"no row starts with {', '.join(unknown)}; the rows: {', '.join(s.name for s in SABOTAGES)}")
    chosen = [s for s in SABOTAGES if not args.names or any(s.name.startswith(n) for n in args.names)]
    dirty = uncommitted({s.path for s in chosen})
    if dirty:
        print(f"error: commit or stash these first: {', '.join(dirty)}", file=sys.stderr)
        return 2
    failures = 0
    print(f"{'row':<16} {'verdict':<8} {'time':>6}  guarantee")
    for sabotage in chosen:
        verdict, seconds = check(sabotage)
        failures += verdict != "caught"
        print(f"{sabotage.name:<16} {verdict:<8} {seconds:5.0f}s  {sabotage.guarantee}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
