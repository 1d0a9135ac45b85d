"""mt.evaluate as a user runs it: the checkpoint's own search unless the command line says otherwise, several
references, TER, and a paired bootstrap test against a baseline, each checked against sacreBLEU's command line."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mt.config import SearchConfig
from mt.data.tokenizer import EOS_ID
from mt.decode.scoring import score_checkpoint
from mt.decode.search import beam_search, greedy_search
from mt.decode.translator import translate
from mt.model.checkpoint import load_checkpoint
from tests.conftest import toy_pairs
from tests.helpers import ROOT, fit_tiny

SAVED_SEARCH = {"beam": 3, "length_penalty": 1.5, "max_len_a": 0.0, "max_len_b": 8}


@pytest.fixture(scope="module")
def tuned_checkpoint(toy_corpus_dir, tmp_path_factory) -> Path:
    """A tiny checkpoint whose training config had its own search (beam 3, alpha 1.5, short outputs). Trained
    enough (80 steps, from a fixed initialisation) that beam size and length limits change its translations."""
    directory = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    _, trainer = fit_tiny(toy_corpus_dir, directory / "run", max_steps=80)
    trainer.save_checkpoint(directory / "plain.ckpt")
    state = torch.load(directory / "plain.ckpt", weights_only=False)
    state["hyper_parameters"]["search"] = SAVED_SEARCH
    torch.save(state, directory / "tuned.ckpt")
    return directory / "tuned.ckpt"


def evaluate(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "mt.evaluate", *args, "threads=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def sacrebleu_cli(references: list[str], hypotheses: str | Path) -> dict:
    command = [sys.executable, "-m", "sacrebleu", *references, "-i", str(hypotheses), "-m", "bleu", "chrf", "ter"]
    result = subprocess.run([*command, "-w", "4"], capture_output=True, text=True, timeout=120)
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def decode_alone(checkpoint: Path, sentences: list[str], **search) -> list[str]:
    """The reference decode: each sentence on its own (a batch of one, EOS appended, no padding) by the search
    function called directly with ``search``'s arguments (greedy where there are none), then detokenized."""
    loaded = load_checkpoint(checkpoint)
    outputs = []
    for ids in loaded.tokenizer.encode_src(sentences):
        src = torch.tensor([[*ids, EOS_ID]])
        mask = torch.zeros_like(src, dtype=torch.bool)
        if search:
            outputs.append(beam_search(loaded.model, src, mask, **search)[0][0].tokens)
        else:
            outputs.append(greedy_search(loaded.model, src, mask)[0].tokens)
    return loaded.tokenizer.decode_tgt(outputs)


SEARCH_CASES = {  # the command line, and the search_batch arguments it should come to (max_len_b=8 is the saved one)
    "saved": ((), {"beam": 3, "length_penalty_alpha": 1.5, "max_len_a": 0.0, "max_len_b": 8}),
    "beam=": (("beam=2",), {"beam": 2, "length_penalty_alpha": 1.5, "max_len_a": 0.0, "max_len_b": 8}),
    "search.field=": (
        ("search.length_penalty=0.5", "search.max_len_b=12"),
        {"beam": 3, "length_penalty_alpha": 0.5, "max_len_a": 0.0, "max_len_b": 12},
    ),
    "search=preset": (("search=greedy",), {}),  # conf/search/greedy.yaml: beam 1, max_len 1.2 |src| + 10
}


@pytest.mark.parametrize("case", SEARCH_CASES)
def test_evaluate_decodes_with_the_checkpoints_search_and_the_command_line_wins(tuned_checkpoint, tmp_path, case):
    """The hypotheses evaluate writes are those of its search, decoded independently: each sentence alone
    through ``beam_search`` (``greedy_search`` for the greedy preset) with the checkpoint's saved arguments
    and the command line's over them. The search evaluate reports is not enough: it is only the merged
    config, whatever decoded. So that a decode with the defaults (beam 5, alpha 1, 1.2 |src| + 10), or one
    that ignores the command line, cannot pass, the expected output must differ from those decodes."""
    overrides, search = SEARCH_CASES[case]
    pairs = toy_pairs(12, seed=4)
    sources = [s for s, _ in pairs]
    source = write(tmp_path / "src.de", sources)
    reference = write(tmp_path / "ref.en", [t for _, t in pairs])
    output = tmp_path / "hyp.en"
    result = evaluate(
        f"checkpoint={tuned_checkpoint}", f"source={source}", f"reference={reference}", f"output={output}", *overrides
    )
    expected = decode_alone(tuned_checkpoint, sources, **search)
    assert output.read_text().splitlines() == expected
    assert expected != decode_alone(tuned_checkpoint, sources, beam=5)  # the defaults decode otherwise
    if overrides:  # and so does the saved search alone
        assert expected != decode_alone(tuned_checkpoint, sources, **SEARCH_CASES["saved"][1])
    reported = (result["search"]["beam"], result["search"]["length_penalty"], result["search"]["max_len_b"])
    assert reported == (
        (search["beam"], search["length_penalty_alpha"], search["max_len_b"]) if search else (1, 0.0, 10)
    )


def test_several_references_ter_and_a_baseline_match_sacrebleus_command_line(tuned_checkpoint, tmp_path):
    pairs = toy_pairs(12, seed=5)
    source = write(tmp_path / "src.de", [s for s, _ in pairs])
    references = [write(tmp_path / "ref1.en", [t for _, t in pairs])]
    references.append(write(tmp_path / "ref2.en", [t.replace("The ", "A ", 1) for _, t in pairs]))
    baseline = write(tmp_path / "baseline.en", [" ".join(t.split()[:-1]) for _, t in pairs])  # a weaker system
    output = tmp_path / "hyp.en"
    result = evaluate(
        f"checkpoint={tuned_checkpoint}",
        f"source={source}",
        f"references=[{references[0]},{references[1]}]",
        f"baseline={baseline}",
        f"output={output}",
    )
    theirs = sacrebleu_cli(references, output)
    assert result["references"] == 2
    assert result["bleu"] == pytest.approx(theirs["BLEU"]["score"], abs=0.006)
    assert result["chrf"] == pytest.approx(theirs["chrF2"]["score"], abs=0.006)
    assert result["ter"] == pytest.approx(theirs["TER"]["score"], abs=0.006)
    assert result["bleu_signature"] == theirs["BLEU"]["signature"]
    test = result["paired_bootstrap"]
    assert test["baseline"] == baseline and test["samples"] == 1000
    assert test["bleu"]["system"] == pytest.approx(result["bleu"], abs=0.006)
    assert test["bleu"]["baseline"] == pytest.approx(sacrebleu_cli(references, baseline)["BLEU"]["score"], abs=0.006)
    assert 0 < test["bleu"]["p_value"] <= 1 and test["bleu"]["baseline_ci95"] > 0
    assert json.loads(Path(f"{output}.scores.json").read_text()) == result
    assert test["identical_to_baseline"] is False
    # Against its own translations: no test (sacreBLEU's would give identical systems p = 0.001).
    args = (f"checkpoint={tuned_checkpoint}", f"source={source}", f"references=[{references[0]},{references[1]}]")
    again = evaluate(*args, f"baseline={output}", f"output={tmp_path / 'hyp.en.gz'}")
    assert again["paired_bootstrap"] == {"baseline": str(output), "identical_to_baseline": True}
    assert gzip.decompress((tmp_path / "hyp.en.gz").read_bytes()) == output.read_bytes()  # output=*.gz: gzip


def test_a_baseline_of_another_length_is_refused_before_decoding(tuned_checkpoint, tmp_path):
    source = write(tmp_path / "src.de", ["Der hund.", "Die katze."])
    reference = write(tmp_path / "ref.en", ["The dog.", "The cat."])
    baseline = write(tmp_path / "baseline.en", ["The dog."])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mt.evaluate",
            f"checkpoint={tuned_checkpoint}",
            f"source={source}",
            f"reference={reference}",
            f"baseline={baseline}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: baseline {baseline} has 1 lines but there are 2 sentences to translate"


class Bf16Ops(TorchDispatchMode):
    """Counts the ops that reach the kernels with a bfloat16 tensor among their arguments (autocast casts before
    this mode sees them)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [*args, *kwargs.values()]
        self.count += any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in flat)
        return func(*args, **kwargs)


def test_precision_bf16_decodes_under_bf16_autocast_and_32_leaves_a_callers_autocast_on(tuned_checkpoint, tmp_path):
    """precision=bf16: the matrix products run in bfloat16 and the hypotheses are those of the search called
    under torch's own bf16 autocast; 32: no bfloat16 op at all, yet an autocast the caller set (Lightning's, in a
    bf16 run's validation) stays on."""
    pairs = toy_pairs(8, seed=5)
    source = write(tmp_path / "src.de", [s for s, _ in pairs])
    reference = write(tmp_path / "ref.en", [t for _, t in pairs])
    counts, results = {}, {}
    for precision in ("32", "bf16"):
        output = tmp_path / f"hyp.{precision}.en"
        with Bf16Ops() as ops:
            results[precision] = score_checkpoint(
                tuned_checkpoint,
                source=source,
                references=[reference],
                output=str(output),
                progress=False,
                search_overrides={"beam": 2},
                precision=precision,
            )
        counts[precision] = ops.count
        assert json.loads(Path(f"{output}.scores.json").read_text())["precision"] == precision
    assert counts["32"] == 0 and counts["bf16"] > 0, counts
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = decode_alone(
            tuned_checkpoint, [s for s, _ in pairs], beam=2, length_penalty_alpha=1.5, max_len_a=0.0, max_len_b=8
        )
    assert (tmp_path / "hyp.bf16.en").read_text().splitlines() == expected
    loaded = load_checkpoint(tuned_checkpoint)
    with torch.autocast("cpu", dtype=torch.bfloat16), Bf16Ops() as ops:
        translate(loaded.model, loaded.tokenizer, ["a b c"], SearchConfig(beam=2), precision="32")
    assert ops.count > 0
