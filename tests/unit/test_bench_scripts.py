"""The benchmark scripts' refusals of bad input (one line and status 2, not a traceback; bad arguments before any
work), bench_startup's check that a tree times its own code, bench_loss's rows labelled with the tokens measured,
and gpu_report's card peaks."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, load_script


def refusal(main, argv: list[str], capsys) -> str:
    """The one error line with which ``main(argv)`` exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def stub_tree(tree: Path, translate: str) -> Path:
    """A source tree whose ``mt/translate.py`` is ``translate``."""
    (tree / "mt").mkdir(parents=True)
    (tree / "mt" / "translate.py").write_text(translate)
    return tree


def test_bench_startup_refuses_no_rounds_and_a_tree_without_mt_code(tmp_path, capsys):
    main = load_script("bench_startup").main
    assert refusal(main, ["--rounds", "0"], capsys).endswith("error: --rounds 0: expected >= 1")
    missing = tmp_path / "missing"
    assert refusal(main, ["--tree", str(missing)], capsys).endswith(f"error: --tree {missing}: no such directory")
    (tmp_path / "empty" / "mt").mkdir(parents=True)  # a wrong path: the editable install's mt would be timed
    assert refusal(main, ["--tree", str(tmp_path / "empty")], capsys).endswith(
        f"error: --tree {tmp_path / 'empty'}: no mt/translate.py there (not an mt source tree)"
    )


def test_bench_startup_stops_when_a_module_comes_from_outside_the_tree(tmp_path):
    """mt is a namespace package: a module missing from the timed tree is found in any other ``mt`` folder on the
    path (here one the stub appends; in a checkout, the editable install's)."""
    bench = load_script("bench_startup")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mt").mkdir(parents=True)
    (elsewhere / "mt" / "helper.py").write_text("")
    translate = f"import sys\nsys.path.append({str(elsewhere)!r})\nimport mt.helper\nprint(input().upper())\n"
    tree = stub_tree(tmp_path / "tree", translate)
    with pytest.raises(SystemExit) as exit_info:
        bench.cold_start(tree.resolve(), tmp_path / "unused.ckpt")
    assert str(exit_info.value) == (
        f"{tree.resolve()}: mt.helper was imported from {elsewhere.resolve() / 'mt' / 'helper.py'}, outside this tree"
    )

    (tree / "mt" / "helper.py").write_text("")  # now the tree has its own: the module found first is the tree's
    seconds, modules = bench.cold_start(tree.resolve(), tmp_path / "unused.ckpt")
    assert seconds > 0 and modules == "-"


def test_bench_loss_refuses_bad_sizes_and_counts(capsys):
    main = load_script("bench_loss").main
    assert refusal(main, ["--tokens", "abc"], capsys).endswith(
        "error: argument --tokens: 'abc': expected comma-separated whole numbers, e.g. 4096,32000"
    )
    assert refusal(main, ["--tokens", "4096,0"], capsys).endswith(
        "error: argument --tokens: '4096,0': expected counts >= 1"
    )
    assert refusal(main, ["--repeats", "0"], capsys).endswith("error: --repeats 0: expected >= 1")


def test_bench_loss_labels_a_row_with_the_tokens_it_measures(monkeypatch, capsys):
    """Whole sentences of 32 tokens: 100 asked are 3 sentences (96 tokens), 10 asked are one (32)."""
    bench = load_script("bench_loss")
    asked = []

    def child(command, what):
        asked.append(int(command[command.index("--child") + 3]))
        return {"peak_gib": 1.0, "seconds": 2.0, "min": 2.0, "max": 2.0}

    monkeypatch.setattr(bench, "run_child", child)
    bench.main(["--kind", "loss", "--tokens", "100,10", "--repeats", "1"])
    rows = [line.split(" | ")[1] for line in capsys.readouterr().out.splitlines() if line.startswith("| loss alone")]
    assert rows == ["96", "32"] and asked == [96, 96, 32, 32]


def test_bench_loss_passes_a_failed_measurements_error_on(capfd):
    run_child = load_script("bench_loss").run_child
    failing = [sys.executable, "-c", "import sys; sys.exit('RuntimeError: out of memory')"]
    with pytest.raises(SystemExit) as exit_info:
        run_child(failing, "the textbook loss measurement at 96 tokens")
    assert str(exit_info.value) == (
        "error: the textbook loss measurement at 96 tokens failed (exit status 1); its error is above"
    )
    assert capfd.readouterr().err.strip() == "RuntimeError: out of memory"
    assert run_child([sys.executable, "-c", "print('noise'); print('{\"seconds\": 2.5}')"], "") == {"seconds": 2.5}


@pytest.mark.parametrize("flag", ["--calls", "--rounds", "--tokens"])
def test_bench_matmul_refuses_counts_below_one(flag, capsys):
    main = load_script("bench_matmul").main
    assert refusal(main, [flag, "0"], capsys).endswith(f"error: {flag} 0: expected >= 1")


def test_mutation_check_refuses_a_row_it_does_not_have():
    done = subprocess.run(
        [sys.executable, "scripts/mutation_check.py", "nosuchrow"],  # a real row would sabotage mt/ and run its tests
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("mutation_check.py: error: no row starts with nosuchrow; the rows: rng, final-update, ")
    assert line.endswith(", misaligned")


def test_gpu_report_knows_each_cards_own_peak():
    """Dense bf16 peaks from NVIDIA's datasheets (the figures without sparsity); a card not in the table is
    unknown (its MFU needs --peak-tflops), not another card whose name is part of its own."""
    peaks = {
        "NVIDIA H100 80GB HBM3": 989.0,  # the SXM5 card
        "NVIDIA H100 SXM5 80GB": 989.0,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H100 NVL": 835.0,
        "NVIDIA H200": 989.0,
        "NVIDIA H200 NVL": 835.0,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A100 80GB PCIe": 312.0,
        "NVIDIA L40S": 362.0,
        "NVIDIA L40": 181.0,
        "NVIDIA L4": 121.0,
        "NVIDIA A10": 125.0,
        "NVIDIA A10G": None,
        "NVIDIA GH200 480GB": None,
        "cpu": None,
    }
    card_peak_tflops = load_script("gpu_report").card_peak_tflops
    assert {name: card_peak_tflops(name) for name in peaks} == peaks


def test_gpu_report_says_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    main = load_script("gpu_report").main
    (tmp_path / "run" / "csv").mkdir(parents=True)
    (tmp_path / "run" / "csv" / "metrics.csv").write_text("step,train/tgt_tokens_per_s\n10,1000\n20,1100\n")
    line = refusal(main, ["train", str(tmp_path / "run")], capsys)
    assert line == f"error: checkpoint {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}: no such file"
    assert refusal(main, ["train", str(tmp_path / "run"), "--devices", "0"], capsys).endswith(
        "error: --devices 0: expected >= 1"
    )


def test_bench_preprocess_refuses_an_empty_sample_and_says_a_data_error_in_one_line(tmp_path, capsys):
    main = load_script("bench_preprocess").main
    argv = ["--data", str(tmp_path / "corpus"), "--pairs", "100"]  # 100: quick, should a corpus be generated
    assert refusal(main, [*argv, "--input-sentence-size", "0"], capsys).endswith(
        "error: --input-sentence-size 0: expected >= 1"
    )
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.de.gz").write_bytes(gzip.compress(b"ein hund\n"))  # no English side
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: {tmp_path / 'corpus' / 'train.en'}[.gz]: no such file", err
