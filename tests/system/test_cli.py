"""The command lines as users run them: train, evaluate and translate on a slice of Multi30k."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, toy_args, tree_bytes

pytestmark = pytest.mark.slow  # the system tier: whole commands in subprocesses, run in CI


def run(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def head_gz(source: Path, target: Path, lines: int) -> None:
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        text = "".join(line for _, line in zip(range(lines), handle))
    with gzip.open(target, "wt", encoding="utf-8") as handle:
        handle.write(text)


@pytest.fixture(scope="module")
def multi30k_slice(tmp_path_factory) -> Path:
    source = Path(os.environ.get("MT_DATA_DIR", "/nonexistent"))
    if not (source / "train.de.gz").is_file():
        pytest.skip("MT_DATA_DIR does not point at Multi30k")
    target = tmp_path_factory.mktemp("m30k")
    for split, lines in (("train", 3000), ("val", 64), ("test_2016_flickr", 100)):
        for lang in ("de", "en"):
            head_gz(source / f"{split}.{lang}.gz", target / f"{split}.{lang}.gz", lines)
    return target


@pytest.fixture(scope="module")
def trained_run(multi30k_slice, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("run") / "r"
    result = run(
        "mt.train",
        "model=tiny",
        "trainer.max_steps=40",
        "trainer.max_time=null",
        "trainer.val_check_interval=20",
        "trainer.check_val_every_n_epoch=null",
        "trainer.enable_progress_bar=false",
        "tokenizer.vocab_size=1000",
        "search.beam=2",
        "validation.max_sentences=32",
        "trainer.keep_checkpoints=2",
        f"hydra.run.dir={run_dir}",
        env={"MT_DATA_DIR": str(multi30k_slice)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_train_writes_the_run_directory_and_prints_test_scores(trained_run):
    run_dir, result = trained_run
    for name in (
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "config.yaml",
        "tokenizer/spm.model",
        "csv/metrics.csv",
        "curve.png",
        "test_scores.json",
    ):
        assert (run_dir / name).is_file(), name
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["sentences"] == 100
    assert json.loads((run_dir / "test_scores.json").read_text()) == scores  # the printed line is the file's
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed")


def test_a_refused_launch_leaves_the_runs_hydra_record_as_it_was(trained_run, multi30k_slice):
    """Hydra's record of the launch (.hydra/, what mt.trials reads) is the run's own; relaunching into the run
    directory without resume=auto is refused, and the record still says how the run was trained."""
    run_dir, _ = trained_run
    record = {name: (run_dir / ".hydra" / name).read_text() for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    overrides = yaml.safe_load(record["overrides.yaml"])
    assert "trainer.max_steps=40" in overrides and "model=tiny" in overrides
    assert yaml.safe_load(record["config.yaml"])["trainer"]["max_steps"] == 40
    assert yaml.safe_load(record["hydra.yaml"])["hydra"]["runtime"]["output_dir"] == str(run_dir)
    refused = run(
        "mt.train", "model=tiny", "optim.lr=0.05", f"hydra.run.dir={run_dir}", env={"MT_DATA_DIR": str(multi30k_slice)}
    )
    assert refused.returncode == 2 and "already holds checkpoints" in refused.stderr, refused.stderr[-2000:]
    assert {name: (run_dir / ".hydra" / name).read_text() for name in record} == record
    # resume=auto with another model: refused later, once its checkpoint is compared with the model asked for.
    config = (run_dir / "config.yaml").read_text()
    other = run(
        "mt.train",
        "model=tiny",
        "model.d_model=48",
        "resume=auto",
        "tokenizer.vocab_size=1000",
        f"hydra.run.dir={run_dir}",
        env={"MT_DATA_DIR": str(multi30k_slice)},
    )
    assert other.returncode == 2 and "d_model" in other.stderr, other.stderr[-2000:]
    assert {name: (run_dir / ".hydra" / name).read_text() for name in record} == record
    assert (run_dir / "config.yaml").read_text() == config


def test_evaluate_files_writes_hypotheses_and_refuses_to_overwrite(trained_run, multi30k_slice, tmp_path):
    run_dir, _ = trained_run
    output = tmp_path / "hyp.en"
    args = (
        "mt.evaluate",
        f"checkpoint={run_dir}/checkpoints/best.ckpt",
        f"source={multi30k_slice}/test_2016_flickr.de.gz",
        f"reference={multi30k_slice}/test_2016_flickr.en.gz",
        "beam=2",
        f"output={output}",
    )
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(scores) >= {"bleu", "chrf", "bleu_signature", "chrf_signature", "sentences"}
    assert scores["sentences"] == 100 and scores["beam"] == 2
    assert len(output.read_text().splitlines()) == 100
    assert json.loads(Path(f"{output}.scores.json").read_text())["bleu"] == scores["bleu"]
    # sacreBLEU's own command line on the written hypotheses and the reference gives the same BLEU and chrF.
    reference = tmp_path / "ref.en"
    with gzip.open(multi30k_slice / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as handle:
        reference.write_text(handle.read(), encoding="utf-8")
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(reference), "-i", str(output), "-m", "bleu", "chrf", "-b", "-w", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    # sacreBLEU prints "[bleu, chrf]" to 4 decimals; mt.evaluate reports them to 2
    assert json.loads(cli.stdout) == pytest.approx([scores["bleu"], scores["chrf"]], abs=0.0051)
    before = output.read_text()
    again = run(*args)
    assert again.returncode == 2 and "exists" in again.stderr and "overwrite=true" in again.stderr
    assert output.read_text() == before


def test_evaluate_defaults_to_the_checkpoints_test_split(trained_run, multi30k_slice):
    run_dir, _ = trained_run
    result = run(
        "mt.evaluate", f"checkpoint={run_dir}/checkpoints/last.ckpt", "beam=1", env={"MT_DATA_DIR": str(multi30k_slice)}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["sentences"] == 100


def test_translate_reads_stdin_and_keeps_line_alignment(trained_run):
    run_dir, _ = trained_run
    lines = "Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\r\n"
    result = run("mt.translate", f"checkpoint={run_dir}/checkpoints/best.ckpt", "beam=3", stdin=lines)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.split("\n")
    assert len(out) == 4 and out[1] == "" and out[3] == ""  # three lines, the empty one kept empty
    assert out[0] and out[2]


# Runs an entry point as ``python -m`` would, and lists at exit the training modules it had loaded.
TRAINING_MODULES_PROBE = """
import atexit, runpy, sys
def loaded():
    names = [m for m in sys.modules if m.split(".")[0] in ("lightning", "lightning_fabric", "pytorch_lightning")
             or m == "mt.train" or m == "mt.training" or m.startswith("mt.training.")]
    print("LOADED:" + ",".join(sorted(names)), file=sys.stderr)
atexit.register(loaded)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command", ["mt.translate", "mt.evaluate"])
def test_decoding_loads_neither_lightning_nor_the_training_code(trained_run, multi30k_slice, command):
    """A checkpoint loads for decoding straight into the model and tokenizer: translating or evaluating
    imports neither Lightning nor mt.training (checked in the process's modules at its exit)."""
    run_dir, _ = trained_run
    args = [f"checkpoint={run_dir}/checkpoints/best.ckpt", "beam=2"]
    if command == "mt.evaluate":
        args += [
            f"source={multi30k_slice}/test_2016_flickr.de.gz",
            f"reference={multi30k_slice}/test_2016_flickr.en.gz",
        ]
    result = subprocess.run(
        [sys.executable, "-c", TRAINING_MODULES_PROBE, command, *args],
        cwd=ROOT,
        input="Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected_lines = 2 if command == "mt.translate" else 1  # two translations, or one JSON line of scores
    assert len(result.stdout.strip().splitlines()) == expected_lines and result.stdout.strip()
    (probe,) = [line for line in result.stderr.splitlines() if line.startswith("LOADED:")]
    assert probe == "LOADED:", probe


def test_bad_inputs_get_one_line_errors(trained_run, multi30k_slice, tmp_path):
    run_dir, _ = trained_run
    checkpoint = f"checkpoint={run_dir}/checkpoints/best.ckpt"
    (tmp_path / "short.en").write_text("one line\n")
    (tmp_path / "junk.ckpt").write_bytes(os.urandom(4096))
    cases = [
        (("mt.evaluate", "checkpoint=/nonexistent/x.ckpt"), "no such file"),
        (("mt.evaluate", f"checkpoint={tmp_path}/junk.ckpt"), "cannot be loaded"),
        (
            (
                "mt.evaluate",
                checkpoint,
                f"source={multi30k_slice}/test_2016_flickr.de.gz",
                f"reference={tmp_path}/short.en",
            ),
            "has 1 lines but source",
        ),
        (("mt.evaluate", checkpoint, "source=/nonexistent/test.de"), "no such file"),
        (("mt.translate", checkpoint, "beam=0"), "beam=0"),
        (("mt.train", "model=tiny", f"hydra.run.dir={run_dir}"), "resume=auto"),
    ]
    ckpt_bytes = (run_dir / "checkpoints/last.ckpt").read_bytes()
    for args, message in cases:
        result = run(*args, env={"MT_DATA_DIR": str(multi30k_slice)})
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    assert (run_dir / "checkpoints/last.ckpt").read_bytes() == ckpt_bytes


def test_misspelt_key_fails_before_training(tmp_path):
    result = run("mt.train", "model.d_modle=3", f"hydra.run.dir={tmp_path}/r")
    assert result.returncode != 0 and "d_modle" in result.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_tilde_in_a_dotted_override_is_the_home_directory(tmp_path):
    # As a shell passes data.path=~/x (a dotted key is no variable name): Hydra's grammar rejects the ~.
    result = run("mt.evaluate", "checkpoint=~/models/missing.ckpt", env={"HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tmp_path}/models/missing.ckpt" in result.stderr, result.stderr[-2000:]
    assert "Lexer" not in result.stderr


def test_fast_dev_run_and_multirun_sweep(toy_corpus_dir, tmp_path):
    result = run(
        "mt.train",
        "-m",
        "data=local",
        f"data.path={toy_corpus_dir}",
        "model=tiny",
        "debug=fast",
        "tokenizer.vocab_size=64",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "tokenizer/spm.model").is_file()
        assert not list((tmp_path / "sweep" / job).rglob("*.ckpt"))  # "no checkpoints kept": a real run may follow


def test_a_failed_trial_of_a_sweep_leaves_the_others_to_run(toy_corpus_dir, tmp_path):
    """A trial's one-line error failed the whole sweep at once (sys.exit passes through Hydra's launcher): the
    later trials never ran. Now the failed trial keeps its error in error.txt, the others run, and the sweep
    ends with status 2 naming the failure; mt.trials shows it as failed, not as still running."""
    sweep = tmp_path / "sweep"
    common = ("data=local", f"data.path={toy_corpus_dir}", "model=tiny", "debug=fast", "tokenizer.vocab_size=64")
    result = run("mt.train", "-m", *common, "optim.lr=-1,1e-3", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: a trial of the sweep failed: optim.lr=-1.0: expected > 0")
    )
    assert (sweep / "0/error.txt").read_text() == "optim.lr=-1.0: expected > 0\n"
    assert (sweep / "1/tokenizer/spm.model").is_file() and not (sweep / "1/error.txt").exists()  # job 1 ran
    table = run("mt.trials", f"dir={sweep}")
    # refused before its launch was recorded, it still shows its overrides (and the common ones are common to all)
    assert "| 0 | `optim.lr=-1` | failed: optim.lr=-1.0: expected > 0 |" in table.stdout
    assert "Common to all trials: `data=local`" in table.stdout
    # The failed trial launched again with a possible value: its old error is no longer its state.
    again = run("mt.train", *common, "optim.lr=1e-3", f"hydra.run.dir={sweep / '0'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not (sweep / "0/error.txt").exists()


def test_a_trial_refused_for_its_finished_runs_checkpoints_writes_no_error_there(toy_corpus_dir, tmp_path):
    """A finished sweep launched again without resume=auto: each trial is refused (its directory holds a run's
    checkpoints), and wrote error.txt into the finished run's directory, which mt.trials then listed as failed."""
    sweep = tmp_path / "sweep"
    (sweep / "0/.hydra").mkdir(parents=True)
    (sweep / "0/.hydra/overrides.yaml").write_text("- seed=1\n")
    (sweep / "0/checkpoints").mkdir()
    (sweep / "0/checkpoints/last.ckpt").write_bytes(b"the finished run's")
    (sweep / "0/selection.json").write_text('{"metric": "val/bleu", "mode": "max", "value": 30.0, "step": 10}')
    (sweep / "0/train.log").write_text("[finished] step 10\n")
    (sweep / "0/.lock").write_text("pid 1 on elsewhere\n")  # left by the finished run (its lock, released)
    before = {name: data for name, data in tree_bytes(sweep / "0").items() if name != ".lock"}
    args = ("data=local", f"data.path={toy_corpus_dir}", "model=tiny", "seed=1", f"hydra.sweep.dir={sweep}")
    result = run("mt.train", "-m", *args)
    assert result.returncode == 2 and "already holds checkpoints" in result.stderr, result.stderr[-2000:]
    assert {name: data for name, data in tree_bytes(sweep / "0").items() if name != ".lock"} == before  # no error.txt


def test_a_trial_refused_by_a_live_job_in_its_directory_leaves_that_directory_alone(toy_corpus_dir, tmp_path):
    """A sweep launched again while its first launch still runs: each trial is refused (the directory is busy),
    and wrote its error.txt into the live trial's directory, which mt.trials then showed as failed."""
    import fcntl

    sweep = tmp_path / "sweep"
    (sweep / "0/.hydra").mkdir(parents=True)
    (sweep / "0/.hydra/overrides.yaml").write_text("- seed=1\n")  # the live trial's records
    (sweep / "0/train.log").write_text("[live] step 10\n")
    with open(sweep / "0/.lock", "a+") as held:  # the live job's lock (another process's, as far as mt.train sees)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere\n")
        held.flush()
        before = tree_bytes(sweep / "0")
        args = ("data=local", f"data.path={toy_corpus_dir}", "model=tiny", "seed=1", f"hydra.sweep.dir={sweep}")
        result = run("mt.train", "-m", *args)
    assert result.returncode == 2
    assert "is in use by a running training job (pid 1 on elsewhere)" in result.stderr.strip().splitlines()[-1]
    assert tree_bytes(sweep / "0") == before  # (Hydra's sweep record, multirun.yaml beside it, is rewritten)


def test_tokenizer_settings_beside_init_from_are_refused(trained_run, tmp_path):
    """A run from init_from= keeps the checkpoint's tokenizer: tokenizer.vocab_size=2000 was recorded in its
    config and never used."""
    run_dir, _ = trained_run
    result = run(
        "mt.train",
        f"init_from={run_dir}/checkpoints/best.ckpt",
        "tokenizer.vocab_size=2000",
        "tokenizer.character_coverage=0.99",
        f"hydra.run.dir={tmp_path / 'ft'}",
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: tokenizer.character_coverage, tokenizer.vocab_size: a run from init_from= keeps its checkpoint's "
        "tokenizer (the vocabulary of its embeddings), so tokenizer settings would go unused; drop them"
    ]
    assert not (tmp_path / "ft/tokenizer").exists() and not (tmp_path / "ft/checkpoints").exists()


def test_translate_nbest_writes_sorted_tsv(trained_run):
    run_dir, _ = trained_run
    result = run(
        "mt.translate",
        f"checkpoint={run_dir}/checkpoints/best.ckpt",
        "nbest=3",
        stdin="Ein Hund rennt.\n\nZwei Männer.\n",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # K lines for the empty one too
    assert [r[2] for r in rows[3:6]] == ["", "", ""] and all(r[2] for r in rows[:3] + rows[6:])
    for sentence in (rows[:3], rows[6:]):
        scores = [float(r[1]) for r in sentence]
        assert scores == sorted(scores, reverse=True)


def test_average_last_checkpoints_of_a_run_then_evaluate(trained_run, multi30k_slice, tmp_path):
    run_dir, _ = trained_run
    assert len(list((run_dir / "checkpoints").glob("step*.ckpt"))) == 2
    output = tmp_path / "avg.ckpt"
    result = run("mt.average", f"run={run_dir}", "last=2", f"output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads(result.stdout)["averaged"]) == 2
    again = run("mt.average", f"run={run_dir}", "last=2", f"output={output}")
    assert again.returncode == 2 and "overwrite=true" in again.stderr
    assert run("mt.average", f"run={run_dir}", "last=2", f"output={output}", "overwrite=true").returncode == 0
    # overwrite=true replaces an earlier average, never a training checkpoint (the run could not resume from it)
    last, step = run_dir / "checkpoints/last.ckpt", sorted((run_dir / "checkpoints").glob("step*.ckpt"))[-1]
    before = {path: path.read_bytes() for path in (last, step)}
    for target, message in (
        (last, f"error: output={last}: a checkpoint that no earlier mt.average wrote (a training run's?); choose"),
        (step, f"error: output={step}: one of the checkpoints averaged; choose another output"),
    ):
        refused = run("mt.average", f"run={run_dir}", "last=2", f"output={target}", "overwrite=true")
        assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(message)
    assert {path: path.read_bytes() for path in (last, step)} == before
    scores = run("mt.evaluate", f"checkpoint={output}", "beam=2", env={"MT_DATA_DIR": str(multi30k_slice)})
    assert scores.returncode == 0, scores.stderr[-3000:]
    assert json.loads(scores.stdout.splitlines()[-1])["sentences"] == 100


def test_an_optuna_sweep_optimises_the_validation_bleu_of_each_trials_chosen_checkpoint(toy_corpus_dir, tmp_path):
    """hydra/sweeper=mt_optuna: each trial returns the val/bleu of its best checkpoint (the highest its CSV log
    holds), not its test BLEU; Optuna's best is the best of those; mt.trials lists them best first."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    args = toy_args(toy_corpus_dir, tmp_path / "unused", "trainer.max_steps=96", "trainer.check_val_every_n_epoch=2")
    result = run(
        "mt.train",
        "-m",
        "hydra/sweeper=mt_optuna",
        "hydra.sweeper.n_trials=3",
        # the config's search space, narrowed to what learns the toy corpus in 96 steps
        "hydra.sweeper.params={optim.lr:'tag(log, interval(2e-3, 6e-3))',optim.warmup_steps:'choice(10, 20)'}",
        f"hydra.sweep.dir={sweep_dir}",
        # what the sweep searches must not be fixed on the command line (Optuna's sweeper would keep it fixed)
        *[a for a in args if a != "test_after_training=false" and not a.startswith(("optim.lr=", "optim.warmup"))],
        "validation.max_sentences=null",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = []
    for job in ("0", "1", "2"):
        with open(next((sweep_dir / job).glob("csv/**/metrics.csv")), newline="") as handle:
            logged = [float(row["val/bleu"]) for row in csv.DictReader(handle) if row.get("val/bleu")]
        selection = json.loads((sweep_dir / job / "selection.json").read_text())
        assert selection["metric"] == "val/bleu" and selection["value"] == pytest.approx(max(logged), abs=1e-4)
        test_bleu = json.loads((sweep_dir / job / "test_scores.json").read_text())["bleu"]
        assert selection["value"] != pytest.approx(test_bleu, abs=1e-3)  # a test score would be a different number
        values.append(selection["value"])
    optuna = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert optuna["best_value"] == pytest.approx(max(values), abs=1e-4)
    assert set(optuna["best_params"]) == {"optim.lr", "optim.warmup_steps"}

    table = run("mt.trials", f"dir={sweep_dir}")
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line for line in table.stdout.splitlines() if re.match(r"\| \d ", line)]
    assert [float(row.split(" | ")[2]) for row in rows] == pytest.approx(sorted(values, reverse=True), abs=0.006)
    assert all("optim.lr=" in row and "data.path=" not in row for row in rows)  # what differs; the rest above
    assert (sweep_dir / "trials.md").read_text() == table.stdout
