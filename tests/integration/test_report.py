"""mt.report: every checkpoint of a run (and the average of the last N) scored on several test sets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import mt.report
from mt.config import ReportConfig, SearchConfig
from mt.errors import RunError
from mt.report import build_report, curves, write_report
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import ROOT, load_script


@pytest.fixture(scope="module")
def trained_run(toy_corpus_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = tiny_train_config(
        toy_corpus_dir,
        **{
            "trainer.max_steps": 30,
            "trainer.val_check_interval": 10,
            "trainer.check_val_every_n_epoch": None,
            "trainer.keep_checkpoints": 3,
            "test_after_training": False,
            "search.beam": 3,  # the run's own search, which report uses unless told otherwise
            "search.length_penalty": 1.5,
        },
    )
    train(config, run_dir)
    return run_dir


def test_report_scores_every_checkpoint_and_the_average_on_each_test_set(trained_run, tmp_path, monkeypatch):
    extra = write_text_corpus(tmp_path / "extra", {"extra": toy_pairs(12, seed=9)}, gz=False)
    config = ReportConfig(
        run=str(trained_run),
        average_last=2,
        sources=[str(extra / "extra.de")],
        references=[str(extra / "extra.en")],
        search=SearchConfig(beam=2),
    )
    report = build_report(config)
    labels = [row["checkpoint"] for row in report["rows"]]
    assert labels == ["step0000010", "step0000020", "step0000030", "best", "last", "avg_last2"]
    assert [t["name"] for t in report["test_sets"]] == ["test", "extra.de"]
    assert [row["step"] for row in report["rows"]][:3] == [10, 20, 30]
    assert all(row["val_bleu"] is not None for row in report["rows"][:3])  # saved right after validation
    for row in report["rows"]:
        assert 0 <= row["test"]["bleu"] <= 100 and row["test"]["bleu_signature"].startswith("nrefs:1|case:mixed")
    best_row = report["rows"][3]
    assert best_row["val_bleu"] == max(row["val_bleu"] for row in report["rows"][:3])

    write_report(report, tmp_path / "out")
    table = (tmp_path / "out/report.md").read_text()
    header = "| val BLEU | test BLEU | test chrF | test TER | extra.de BLEU | extra.de chrF | extra.de TER |"
    assert "| checkpoint | step " + header in table
    assert table.count("\n| step") == 3 and "| avg_last2 |" in table
    assert json.loads((tmp_path / "out/report.json").read_text())["rows"] == report["rows"]
    assert (tmp_path / "out/report.png").stat().st_size > 1000

    # A second report reuses every decode: nothing is loaded or translated again.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(mt.report, "load_checkpoint", no_decoding)
    assert build_report(config)["rows"] == report["rows"]
    # Other decoding settings are other decodes.
    with pytest.raises(AssertionError, match="decoded again"):
        build_report(ReportConfig(run=str(trained_run), search=SearchConfig(beam=1)))


def test_report_cli_writes_the_three_files(trained_run, tmp_path):
    """Each checkpoint decodes with its saved search (beam 3, alpha 1.5) except what the command line sets
    (beam 2); two references for one test set; paired bootstrap against best."""
    extra = write_text_corpus(tmp_path / "extra", {"extra": toy_pairs(12, seed=9)}, gz=False)
    second = tmp_path / "second.en"
    second.write_text("".join(f"{line} Again.\n" for line in (extra / "extra.en").read_text().splitlines()))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mt.report",
            f"run={trained_run}",
            f"output_dir={tmp_path / 'out'}",
            "search.beam=2",
            f"sources=[{extra / 'extra.de'}]",
            f"references=[[{extra / 'extra.en'},{second}]]",
            "baseline=best",
            "include_data_splits=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == 5
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"report.md", "report.json", "report.png"}
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert {(r["search"]["beam"], r["search"]["length_penalty"]) for r in report["rows"]} == {(2, 1.5)}
    assert report["test_sets"] == [{"name": "extra.de", "sentences": 12, "references": 2}]
    for row in report["rows"]:
        scores = row["extra.de"]
        assert scores["references"] == 2 and scores["bleu_signature"].startswith("nrefs:2|")
        assert ("paired_bootstrap" in scores) == (row["checkpoint"] != "best")
    table = (tmp_path / "out/report.md").read_text()
    assert "extra.de p (BLEU vs best)" in table and "sacreBLEU's paired bootstrap" in table
    assert f"BLEU signature: `{report['rows'][0]['extra.de']['bleu_signature']}`" in table


def test_each_test_set_is_shown_with_its_own_signatures(trained_run, tmp_path):
    """Two test sets of one and two references: report.md printed the first one's signatures (nrefs:1) only."""
    extra = write_text_corpus(tmp_path / "extra", {"extra": toy_pairs(6, seed=9)}, gz=False)
    other = write_text_corpus(tmp_path / "other", {"other": toy_pairs(6, seed=3)}, gz=False)
    run = copied_run(tmp_path / "run", {"best": trained_run / "checkpoints" / "step0000030.ckpt"})
    config = ReportConfig(
        run=str(run),
        include_data_splits=False,
        sources=[str(extra / "extra.de"), str(other / "other.de")],
        references=[str(extra / "extra.en"), [str(other / "other.en"), str(extra / "extra.en")]],
        search=SearchConfig(beam=1),
    )
    write_report(build_report(config), tmp_path / "out")
    table = (tmp_path / "out/report.md").read_text()
    for which, refs in (("extra.de", 1), ("other.de", 2)):
        for metric in ("BLEU", "chrF", "TER"):
            (line,) = [line for line in table.splitlines() if line.startswith(f"{metric} signature ({which}): ")]
            assert f"nrefs:{refs}|" in line


def test_a_checkpoint_rewritten_in_place_is_decoded_again(trained_run, tmp_path, monkeypatch):
    """The cache follows the checkpoint file's version, not its name: a best.ckpt that training replaced is
    decoded again (and scores as the weights it now holds), the files left alone are not."""
    step = str(trained_run / "checkpoints" / "step{:07d}.ckpt")
    run = copied_run(tmp_path / "run", {"step0000010": step.format(10), "best": step.format(30)})
    config = ReportConfig(run=str(run), search=SearchConfig(beam=1))
    first = {row["checkpoint"]: row["test"] for row in build_report(config)["rows"]}
    assert first["best"]["chrf"] != first["step0000010"]["chrf"]  # other weights, so the check below can fail
    shutil.copyfile(step.format(10), run / "checkpoints" / "best.ckpt")
    loaded, load = [], mt.report.load_checkpoint
    monkeypatch.setattr(mt.report, "load_checkpoint", lambda path, *a, **k: loaded.append(path) or load(path, *a, **k))
    second = {row["checkpoint"]: row["test"] for row in build_report(config)["rows"]}
    assert [str(path) for path in loaded] == [str(run / "checkpoints" / "best.ckpt")]
    assert second["best"] == first["step0000010"]


def test_an_output_dir_under_a_file_is_refused_before_decoding(trained_run, tmp_path):
    (tmp_path / "a-file").write_text("x")
    command = [sys.executable, "-m", "mt.report", f"run={trained_run}", f"output_dir={tmp_path / 'a-file/report'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "translate" not in result.stderr  # no progress bar: nothing decoded
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: output {tmp_path / 'a-file/report/report.md'}: {tmp_path / 'a-file'} is a file, not a folder"
    )


def test_report_refuses_a_baseline_that_is_not_one_of_its_checkpoints(trained_run, tmp_path):
    with pytest.raises(Exception, match="baseline=nope: no such checkpoint; expected one of step0000010"):
        build_report(ReportConfig(run=str(trained_run), baseline="nope"))
    with pytest.raises(Exception, match=r"step\*.ckpt files, fewer than average_last=9 "):
        build_report(ReportConfig(run=str(trained_run), average_last=9))
    (tmp_path / "taken").write_text("a file")
    command = [sys.executable, "-m", "mt.report", f"run={trained_run}", f"output_dir={tmp_path / 'taken'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and (tmp_path / "taken").read_text() == "a file"
    assert result.stderr.strip().endswith(
        f"error: output_dir={tmp_path / 'taken'}: a file, expected a directory for report.md, .json and .png"
    )


def test_report_of_a_directory_without_checkpoints_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mt.report", f"run={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: run={tmp_path}: no checkpoints/ directory (is it a training run directory?)"
    )


def test_test_splits_of_a_hub_dataset_are_the_hubs_splits(tmp_path):
    from mt.report import load_test_sets

    pairs = {"validation": toy_pairs(3, seed=2), "test": toy_pairs(2, seed=3)}
    for split, split_pairs in pairs.items():
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in split_pairs)
        )
    data = {"name": "hubtest", "hub_name": str(tmp_path)}
    sets = load_test_sets(ReportConfig(run="r", test_splits=["validation", "test"]), data)
    assert [(s.name, list(zip(s.sources, *s.references))) for s in sets] == list(pairs.items())
    (default,) = load_test_sets(ReportConfig(run="r"), data)
    assert default.name == "test" and list(zip(default.sources, *default.references)) == pairs["test"]


def test_test_files_of_the_same_name_keep_their_own_scores_and_empty_ones_are_refused(tmp_path):
    from mt.errors import DataError
    from mt.report import load_test_sets

    for year, pairs in (("wmt14", toy_pairs(2, seed=1)), ("wmt17", toy_pairs(3, seed=2))):
        (tmp_path / year).mkdir()
        (tmp_path / year / "test.de").write_text("".join(s + "\n" for s, _ in pairs))
        (tmp_path / year / "test.en").write_text("".join(t + "\n" for _, t in pairs))
    files = [str(tmp_path / year / "test.{}") for year in ("wmt14", "wmt17")]
    config = ReportConfig(run="r", sources=[f.format("de") for f in files], references=[f.format("en") for f in files])
    sets = load_test_sets(config, None)
    assert [s.name for s in sets] == ["test.de", files[1].format("de")]
    assert [len(s.sources) for s in sets] == [2, 3]
    (tmp_path / "empty.de").write_text("")
    (tmp_path / "empty.en").write_text("")
    config = ReportConfig(run="r", sources=[str(tmp_path / "empty.de")], references=[str(tmp_path / "empty.en")])
    with pytest.raises(DataError, match=r"empty.de is empty"):
        load_test_sets(config, None)


def test_tune_search_scores_each_setting_as_evaluate_does_and_refuses_a_test_split(trained_run):
    """scripts/tune_search.py decodes best.ckpt (and the average) under each beam × alpha through mt.report's cache;
    its figures for best.ckpt must be mt.evaluate's for the same checkpoint, split and search."""
    script = [sys.executable, "scripts/tune_search.py", "--run", str(trained_run)]
    result = subprocess.run(
        [*script, "--split", "valid", "--beams", "1,2", "--alphas", "1.0", "--average-last", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| best") or "avg" in line]
    table = {(cells[0].strip(), int(cells[1]), float(cells[2])): float(cells[3].split()[0]) for cells in rows}
    assert set(table) == {("best", 1, 0.0), ("best", 2, 1.0), ("avg_last2", 1, 0.0), ("avg_last2", 2, 1.0)}
    best = trained_run / "checkpoints" / "best.ckpt"
    for (label, beam, alpha), bleu in table.items():
        if label != "best":
            continue
        search = ["search=greedy"] if beam == 1 else [f"beam={beam}", f"search.length_penalty={alpha}"]
        evaluated = subprocess.run(
            [sys.executable, "-m", "mt.evaluate", f"checkpoint={best}", "split=valid", *search],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        assert bleu == json.loads(evaluated.stdout.strip().splitlines()[-1])["bleu"], (label, beam, alpha)

    refused = subprocess.run([*script, "--split", "test"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip() == "--split=test: tune on a validation split, not a test set"


def test_tune_search_refuses_bad_settings_and_a_missing_run_in_one_line(tmp_path, capsys):
    """Bad settings and a run that is not there are refused before anything is loaded; a checkpoint that cannot be
    read is an ``error:`` line. Each with status 2, without a traceback."""
    main = load_script("tune_search").main

    def refusal(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(["--run", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        return err.strip().splitlines()[-1]

    assert refusal().endswith(
        f"error: --run {tmp_path}: no checkpoints/best.ckpt (not a training run, or one not validated yet)"
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_text("not a checkpoint")
    assert refusal("--beams", "0").endswith("error: argument --beams: '0': expected one or more beam sizes >= 1")
    assert refusal("--beams", "5", "--alphas", "").endswith(
        "error: --alphas is empty: beams > 1 need at least one alpha"
    )
    assert refusal("--beams", "1,x").endswith(
        "error: argument --beams: '1,x': expected comma-separated whole numbers, e.g. 1,5,10"
    )
    assert refusal("--beams", "1", "--alphas", "").startswith(
        f"error: checkpoint {tmp_path / 'checkpoints' / 'best.ckpt'}: cannot be loaded"
    )
    nosuch = tmp_path / "nosuch"
    assert refusal("--run", str(nosuch)).endswith(f"error: --run {nosuch}: no such directory")  # the last --run


def copied_run(run_dir, checkpoints: dict):
    """A run directory whose ``checkpoints/NAME.ckpt`` are copies of the given checkpoint files."""
    (run_dir / "checkpoints").mkdir(parents=True)
    for name, source in checkpoints.items():
        shutil.copy(source, run_dir / "checkpoints" / f"{name}.ckpt")
    return run_dir


def test_runs_of_the_same_name_get_their_own_labels_and_baseline(trained_run, tmp_path):
    """Job 0 of two sweeps: rows labelled by the shortest distinguishing end of each run's path; the p-values of
    s1/0 are against s2/0's own translations, and a baseline naming both is refused."""
    step = str(trained_run / "checkpoints" / "step{:07d}.ckpt")
    runs = [
        copied_run(tmp_path / "s1" / "0", {"best": step.format(10)}),
        copied_run(tmp_path / "s2" / "0", {"best": step.format(30)}),
        copied_run(tmp_path / "s1" / "1", {"best": step.format(20)}),
    ]

    def report(baseline, run_dirs=runs):
        return build_report(
            ReportConfig(runs=[str(r) for r in run_dirs], baseline=baseline, search=SearchConfig(beam=1))
        )

    with pytest.raises(RunError, match=r"^baseline=0/best: names 2 checkpoints \(s1/0/best, s2/0/best\); expected"):
        report("0/best")
    with pytest.raises(RunError, match=r"^runs: .*s1/\.\./s1/0 is the same run directory as .*s1/0; expected"):
        report(None, [*runs, tmp_path / "s1" / ".." / "s1" / "0"])

    found = report("s2/0/best")
    rows = {row["checkpoint"]: row["test"] for row in found["rows"]}
    assert list(rows) == ["s1/0/best", "s2/0/best", "1/best"] and found["baseline"] == "s2/0/best"
    assert rows["s1/0/best"]["chrf"] != rows["s2/0/best"]["chrf"]  # two systems, so the check below can fail
    for label in ("s1/0/best", "1/best"):
        test = rows[label]["paired_bootstrap"]
        assert (test["chrf"]["baseline"], test["chrf"]["system"]) == (rows["s2/0/best"]["chrf"], rows[label]["chrf"])
        assert (test["bleu"]["baseline"], test["bleu"]["system"]) == (rows["s2/0/best"]["bleu"], rows[label]["bleu"])
    assert "paired_bootstrap" not in rows["s2/0/best"]
    # The plot draws each run's checkpoints as a line of its own (they were one line across runs).
    lines = curves(found)
    assert list(lines) == ["s1/0 · test", "s2/0 · test", "1 · test"]
    assert lines["s2/0 · test"] == ([(30, rows["s2/0/best"]["bleu"])], [])
    # The whole path names a row too; its label is the baseline.
    assert report(str(tmp_path / "s1" / "0" / "best"))["baseline"] == "s1/0/best"


def test_a_checkpoint_with_the_baselines_translations_is_shown_identical_not_significant(trained_run, tmp_path):
    """last.ckpt is best.ckpt's copy: the same translations, which sacreBLEU's bootstrap would give p = 0.001."""
    step = str(trained_run / "checkpoints" / "step{:07d}.ckpt")
    run = copied_run(
        tmp_path / "run", {"step0000010": step.format(10), "best": step.format(30), "last": step.format(30)}
    )
    report = build_report(ReportConfig(run=str(run), baseline="best", search=SearchConfig(beam=1)))
    write_report(report, tmp_path / "out")
    rows = {row["checkpoint"]: row["test"] for row in json.loads((tmp_path / "out/report.json").read_text())["rows"]}
    assert rows["last"]["paired_bootstrap"] == {"identical_to_baseline": True}
    assert rows["step0000010"]["chrf"] != rows["best"]["chrf"]  # other translations: tested as before
    tested = rows["step0000010"]["paired_bootstrap"]
    assert tested["identical_to_baseline"] is False and 0 < tested["bleu"]["p_value"] <= 1
    table = {line.split(" | ")[0]: line for line in (tmp_path / "out/report.md").read_text().splitlines()}
    assert table["| last"].endswith(" | = baseline |")
    assert table["| step0000010"].endswith(f" | {tested['bleu']['p_value']:.4f} |")
    assert table["| best"].endswith(" | — |")
    assert any(line.startswith("= baseline: the same translations as best") for line in table)


def test_the_bootstrap_tokenizes_bleu_as_the_rows_do_for_a_model_of_another_target(trained_run, tmp_path):
    """A model whose one corpus entry translates into Chinese while ``data.tgt_lang`` says en: its rows were
    scored with sacreBLEU's zh tokenizer but the paired bootstrap with 13a (the base data's language), so the two
    BLEU columns of one report disagreed."""
    import torch

    extra = write_text_corpus(tmp_path / "extra", {"extra": toy_pairs(12, seed=9)}, gz=False)
    checkpoints = {}
    for step in (10, 30):
        stored = torch.load(trained_run / "checkpoints" / f"step{step:07d}.ckpt", weights_only=False)
        stored["hyper_parameters"]["data"]["corpora"] = [{"tgt_lang": "zh"}]
        checkpoints[f"step{step}"] = tmp_path / f"step{step}.ckpt"
        torch.save(stored, checkpoints[f"step{step}"])
    run = copied_run(tmp_path / "run", checkpoints)
    config = ReportConfig(
        run=str(run),
        baseline="step30",
        include_data_splits=False,
        sources=[str(extra / "extra.de")],
        references=[str(extra / "extra.en")],
        search=SearchConfig(beam=1),
    )
    rows = {row["checkpoint"]: row["extra.de"] for row in build_report(config)["rows"]}
    assert rows["step10"]["chrf"] != rows["step30"]["chrf"]  # other translations: tested
    assert "|tok:zh|" in rows["step10"]["bleu_signature"]
    assert "|tok:zh|" in rows["step10"]["paired_bootstrap"]["bleu"]["signature"]
