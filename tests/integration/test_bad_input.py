"""Bad input, item by item (the Reliability list): each gives a one-line user error that names the
file, field or value and what was expected, and overwrites nothing; odd but valid translation input
(empty, very long or unknown-character lines, CRLF) is translated with the line alignment kept.

Items already tested elsewhere are not repeated here: misaligned, invalid UTF-8, missing-split and
unknown-key corpora and the unreachable hub (tests/unit/data/test_corpus.py, test_readers.py and
test_preprocess.py), impossible config values (tests/unit/test_config.py), missing and random-bytes
checkpoints (tests/integration/test_pipeline.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.config import DataConfig, EvaluateConfig, SearchConfig, TranslateConfig, from_dict, to_dict
from mt.data.corpus import load_split
from mt.data.tokenizer import UNK_ID, train_tokenizer
from mt.decode.scoring import score_checkpoint
from mt.decode.translator import translate
from mt.errors import USER_ERRORS, CheckpointError, DataError, RunError
from mt.model.checkpoint import load_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import ROOT, compose_config, fit_tiny

# Short outputs keep decoding with the (barely trained) tiny model fast.
FAST_SEARCH = SearchConfig(beam=2, max_len_a=0.0, max_len_b=8)
CLI_SEARCH = ("beam=2", "search.max_len_a=0", "search.max_len_b=8", "threads=1")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(toy_corpus_dir, tmp_path_factory) -> Path:
    """One tiny checkpoint (model and tokenizer) shared by every test here."""
    run_dir = tmp_path_factory.mktemp("bad_input_run")
    _, trainer = fit_tiny(toy_corpus_dir, run_dir, max_steps=10)
    path = run_dir / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_checkpoint(checkpoint)


def with_changes(checkpoint: Path, target: Path, **changes) -> Path:
    """A copy of ``checkpoint`` with top-level entries replaced (``hyper_parameters`` merged)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hyper = changes.pop("hyper_parameters", {})
    state["hyper_parameters"] = {**state["hyper_parameters"], **hyper}
    state.update(changes)
    torch.save(state, target)
    return target


def assert_user_error(error: BaseException, *fragments: str) -> None:
    """What ``mt.cli.entry_point`` prints as one ``error: ...`` line with exit status 2."""
    assert isinstance(error, (*USER_ERRORS, RunError)), f"{type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def cli_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a CLI that refused its input (exit status 2, no traceback)."""
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


# -- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("empty_split", ["train", "valid"])
def test_empty_corpus_files_are_named(tmp_path, empty_split):
    pairs = toy_pairs(60)
    splits = {"train": pairs, "valid": pairs[:8], empty_split: []}
    data_dir = write_text_corpus(tmp_path / "data", splits, gz=False)
    assert (data_dir / f"{empty_split}.de").read_bytes() == b""
    config = tiny_train_config(data_dir, **{"trainer.max_steps": 2, "test_after_training": False})
    with pytest.raises(Exception) as caught:
        train(config, tmp_path / "run")
    assert_user_error(caught.value, f"{empty_split}.de", "empty")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


def test_a_missing_test_split_fails_before_training_when_it_is_to_be_scored(tmp_path):
    pairs = toy_pairs(60)
    data_dir = write_text_corpus(tmp_path / "data", {"train": pairs, "valid": pairs[:8]}, gz=False)  # no test
    config = tiny_train_config(data_dir, **{"trainer.max_steps": 2, "test_after_training": True})
    with pytest.raises(DataError) as caught:
        train(config, tmp_path / "run")
    assert_user_error(caught.value, "test.de[.gz]", "no such file")
    assert not (tmp_path / "run" / "tokenizer").exists()  # refused at the start: nothing trained
    write_text_corpus(data_dir, {"test": pairs[:8]}, gz=False)
    (data_dir / "test.en").write_text("".join(t + "\n" for _, t in pairs[:7]))  # a line short
    with pytest.raises(DataError) as caught:
        train(config, tmp_path / "run")
    assert_user_error(caught.value, "test", "misaligned")
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_a_validation_interval_longer_than_an_epoch_is_a_one_line_error(toy_corpus_dir, tmp_path):
    """Lightning finds it only inside fit, once the epoch's batches are counted; mt names its own key."""
    config = tiny_train_config(toy_corpus_dir, **{"trainer.val_check_interval": 100000, "trainer.max_steps": 2})
    with pytest.raises(RunError) as caught:
        train(config, tmp_path / "run")
    assert_user_error(caught.value, "trainer.val_check_interval=100000", "check_val_every_n_epoch=null")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


def test_unknown_language_of_a_text_corpus_names_the_missing_file(toy_corpus_dir):
    config = from_dict(DataConfig, {"name": "toy", "path": str(toy_corpus_dir), "tgt_lang": "fr"})
    with pytest.raises(DataError) as caught:
        load_split(config, "train")
    assert_user_error(caught.value, str(toy_corpus_dir / "train.fr"), "no such file")


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,schema", [("translate", TranslateConfig), ("evaluate", EvaluateConfig)])
@pytest.mark.parametrize("override", ["beam=0", "search.beam=0"])
def test_beam_zero_is_refused_by_translate_and_evaluate(name, schema, override):
    from mt.cli import to_typed

    with pytest.raises(Exception) as caught:
        to_typed(compose_config(name, ["checkpoint=x.ckpt", override]), schema)
    assert_user_error(caught.value, "beam=0", "expected >= 1")


@pytest.mark.parametrize(
    "args,fragment",
    [(("mt.translate", "bem=3"), "bem"), (("mt.evaluate", "beam=wide"), "wide")],
    ids=["misspelt-key", "wrong-type"],
)
def test_misspelt_keys_and_wrong_types_are_one_line_errors(checkpoint, args, fragment):
    result = run_cli(*args, f"checkpoint={checkpoint}")
    assert fragment in cli_error_line(result)


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999], ids=["empty", "half", "last-bytes-missing"])
def test_truncated_checkpoints_are_refused(checkpoint, tmp_path, keep):
    data = checkpoint.read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_user_error(caught.value, str(path), "cannot be loaded")
    assert len(path.read_bytes()) == int(len(data) * keep)


@pytest.mark.parametrize(
    "model_change,fragment",
    [({"d_model": 48}, "has shape [58, 32], its hyperparameters give [58, 48]"), ({"encoder_layers": 2}, "Missing")],
    ids=["d_model", "layers"],
)
def test_checkpoint_whose_weights_do_not_fit_its_hyperparameters(checkpoint, loaded, tmp_path, model_change, fragment):
    assert loaded.tokenizer.src_vocab_size == 58  # the shapes named below
    hyper = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    path = with_changes(
        checkpoint, tmp_path / "other.ckpt", hyper_parameters={"model": {**hyper["model"], **model_change}}
    )
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_user_error(caught.value, str(path), "do not fit its model hyperparameters", fragment)


def test_tokenizer_that_does_not_fit_the_embeddings_is_refused(checkpoint, loaded, tmp_path):
    pairs = toy_pairs(200, seed=7)
    other = train_tokenizer([s for s, _ in pairs], [t for _, t in pairs], vocab_size=48)
    assert other.src_vocab_size != loaded.tokenizer.src_vocab_size
    path = with_changes(checkpoint, tmp_path / "mixed.ckpt", tokenizer=other.to_state())
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert_user_error(
        caught.value,
        str(path),
        f"vocabulary of {other.src_vocab_size} pieces",
        f"{loaded.tokenizer.src_vocab_size} rows",
    )


def test_resume_from_a_checkpoint_of_another_model_size_is_refused(checkpoint, toy_corpus_dir, tmp_path):
    before = checkpoint.read_bytes()
    config = tiny_train_config(
        toy_corpus_dir,
        resume=str(checkpoint),
        **{"model.d_model": 48, "trainer.max_steps": 2, "test_after_training": False, "validation.decode": "none"},
    )
    try:
        with pytest.raises(Exception) as caught:
            train(config, tmp_path / "run")
        assert_user_error(caught.value, str(checkpoint))
    finally:
        assert checkpoint.read_bytes() == before


# -- translate and evaluate input ----------------------------------------------------------------


def test_long_unknown_and_empty_lines_are_translated_in_place(loaded):
    long_line = " ".join(["Der hund sieht der ball rot."] * 334)  # 2004 words; training lines have 7 at most
    lines = [long_line, "😀🙈🎉", "日本語の文です", "", "Der hund sieht der ball."]
    tokenizer = loaded.tokenizer
    for unknown in lines[1:3]:  # nothing but unknown pieces (and the word-boundary marker)
        assert set(tokenizer.encode_src([unknown])[0]) <= {UNK_ID, tokenizer.src.piece_to_id("▁")}
    # max_tokens below the long line's length: it still gets a batch of its own.
    search = SearchConfig(beam=2, max_len_a=0.02, max_len_b=10, max_tokens=64)
    outputs = translate(loaded.model, tokenizer, lines, search)
    assert len(outputs) == len(lines)
    assert outputs[3] == [("", 0.0)]
    for nbest in outputs[:3] + outputs[4:]:
        ((text, score),) = nbest
        assert "\n" not in text and math.isfinite(score)


def test_translate_cli_keeps_alignment_and_treats_crlf_like_lf(checkpoint):
    text = "Der hund sieht der ball.|  |Die katze hat der baum rot.|Der hund."
    crlf = text.replace("|", "\r\n") + "\r\n"
    lf = text.replace("|", "\n") + "\n"
    result = run_cli("mt.translate", f"checkpoint={checkpoint}", *CLI_SEARCH, stdin=(crlf + lf).encode())
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode("utf-8").split("\n")
    assert len(out) == 9 and out[-1] == ""  # eight lines in, eight out
    assert out[:4] == out[4:8]
    assert out[1] == "" and all(out[i] for i in (0, 2, 3))
    assert all("\r" not in line for line in out)


def test_translate_cli_names_the_stdin_line_that_is_not_utf8(checkpoint):
    result = run_cli("mt.translate", f"checkpoint={checkpoint}", *CLI_SEARCH, stdin=b"Der hund.\nDie katze \xff.\n")
    assert "<stdin>:2: invalid UTF-8" in cli_error_line(result)
    assert result.stdout == b""


def test_evaluate_treats_crlf_like_lf_and_keeps_empty_lines(checkpoint, tmp_path):
    source = ["Der hund sieht der ball.", "", "Die katze hat der baum."]
    (tmp_path / "lf.de").write_bytes("".join(s + "\n" for s in source).encode())
    (tmp_path / "crlf.de").write_bytes("".join(s + "\r\n" for s in source).encode())
    (tmp_path / "ref.en").write_text("The dog sees the ball.\n\nThe cat has the tree.\n")
    for name in ("lf", "crlf"):
        scores = score_checkpoint(
            checkpoint,
            search=FAST_SEARCH,
            source=str(tmp_path / f"{name}.de"),
            references=[str(tmp_path / "ref.en")],
            output=str(tmp_path / f"{name}.hyp"),
            progress=False,
        )
        assert scores["sentences"] == 3
    hypotheses = (tmp_path / "lf.hyp").read_bytes()
    assert hypotheses == (tmp_path / "crlf.hyp").read_bytes()
    assert hypotheses.decode().split("\n")[1] == "" and hypotheses.count(b"\n") == 3


def test_evaluate_refuses_a_reference_with_another_line_count(checkpoint, tmp_path):
    (tmp_path / "src.de").write_text("Der hund.\nDie katze.\nDer mann.\n")
    (tmp_path / "ref.en").write_text("The dog.\nThe cat.\n")
    with pytest.raises(DataError) as caught:
        score_checkpoint(
            checkpoint,
            search=FAST_SEARCH,
            source=str(tmp_path / "src.de"),
            references=[str(tmp_path / "ref.en")],
            output=str(tmp_path / "hyp.en"),
            progress=False,
        )
    assert_user_error(caught.value, f"{tmp_path / 'ref.en'} has 2 lines", f"{tmp_path / 'src.de'} has 3")
    assert not (tmp_path / "hyp.en").exists()


def test_evaluate_refuses_empty_input(checkpoint, tmp_path):
    (tmp_path / "empty.de").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        score_checkpoint(checkpoint, search=FAST_SEARCH, source=str(tmp_path / "empty.de"), progress=False)
    assert_user_error(caught.value, str(tmp_path / "empty.de"), "empty")
    (tmp_path / "blank.de").write_text("\n \n\t\n")  # lines, none with a sentence: BLEU 0 of nothing
    with pytest.raises(DataError) as caught:
        score_checkpoint(checkpoint, search=FAST_SEARCH, source=str(tmp_path / "blank.de"), progress=False)
    assert_user_error(caught.value, str(tmp_path / "blank.de"), "3 lines are all blank")

    # The checkpoint's own test split, when its files are empty.
    data_dir = write_text_corpus(tmp_path / "data", {"test": []}, gz=False)
    data = to_dict(from_dict(DataConfig, {"name": "toy", "path": str(data_dir)}))
    path = with_changes(checkpoint, tmp_path / "with_data.ckpt", hyper_parameters={"data": data})
    with pytest.raises(DataError) as caught:
        score_checkpoint(path, search=FAST_SEARCH, progress=False)
    assert_user_error(caught.value, str(data_dir / "test.de"), "empty")


def test_evaluate_refuses_an_existing_output_unless_overwrite(checkpoint, tmp_path):
    (tmp_path / "src.de").write_text("Der hund.\n\nDie katze.\n")
    output = tmp_path / "hyp.en"
    options = dict(search=FAST_SEARCH, source=str(tmp_path / "src.de"), output=str(output), progress=False)

    output.write_text("precious\n")
    with pytest.raises(RunError) as caught:
        score_checkpoint(checkpoint, **options)
    assert_user_error(caught.value, str(output), "exists", "overwrite=true")
    assert output.read_text() == "precious\n" and not Path(f"{output}.scores.json").exists()

    output.unlink()
    Path(f"{output}.scores.json").write_text("{}\n")  # the scores file alone is protected too
    with pytest.raises(RunError) as caught:
        score_checkpoint(checkpoint, **options)
    assert_user_error(caught.value, f"{output}.scores.json", "overwrite=true")
    assert not output.exists() and Path(f"{output}.scores.json").read_text() == "{}\n"

    output.mkdir()  # a directory is never replaced, even with overwrite=true
    with pytest.raises(RunError) as caught:
        score_checkpoint(checkpoint, **options, overwrite=True)
    assert_user_error(caught.value, str(output), "is a directory")
    output.rmdir()

    output.write_text("precious\n")
    assert score_checkpoint(checkpoint, **options, overwrite=True)["sentences"] == 3
    assert output.read_text().count("\n") == 3 and output.read_text().split("\n")[1] == ""
    assert '"sentences": 3' in Path(f"{output}.scores.json").read_text()


def test_an_output_that_is_a_directory_is_refused_naming_it(tmp_path):
    """Every file a command writes goes through atomic_write: a directory there (mt.trials output=DIR) is named,
    not an internal temporary file, and nothing is left behind."""
    from mt.atomic import atomic_write

    (tmp_path / "out").mkdir()
    with pytest.raises(RunError) as caught:
        with atomic_write(tmp_path / "out") as handle:
            handle.write(b"table")
    assert_user_error(caught.value, str(tmp_path / "out"), "a directory, expected a file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())


def test_evaluate_cli_refuses_to_overwrite_before_loading_anything(checkpoint, tmp_path):
    (tmp_path / "src.de").write_text("Der hund.\n")
    output = tmp_path / "hyp.en"
    output.write_text("precious\n")
    result = run_cli(
        "mt.evaluate", f"checkpoint={checkpoint}", f"source={tmp_path / 'src.de'}", f"output={output}", *CLI_SEARCH
    )
    line = cli_error_line(result)
    assert str(output) in line and "overwrite=true" in line
    assert output.read_text() == "precious\n"


def test_a_run_directory_tokenizer_of_other_settings_is_refused(toy_corpus_dir, tmp_path):
    """A run directory keeps the tokenizer it trained: a new start there with the same settings loads it again,
    one with another vocabulary is refused, not silently given the old one. The refusal holds for a run
    directory without checkpoints too (as after debug=fast): this one has a tokenizer and nothing else."""
    from mt.errors import TokenizerError
    from mt.training.datamodule import TranslationDataModule

    config = tiny_train_config(toy_corpus_dir)
    first = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path, seed=1).prepare_tokenizer()
    again = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path, seed=1).prepare_tokenizer()
    assert again.to_state() == first.to_state()
    assert not (tmp_path / "checkpoints").exists()
    other = tiny_train_config(toy_corpus_dir, **{"tokenizer.vocab_size": 72})
    with pytest.raises(
        TokenizerError, match=r"trained with other settings: this run asks for tokenizer.vocab_size=72 \(it has 64\)"
    ):
        TranslationDataModule(other.data, other.tokenizer, run_dir=tmp_path, seed=1).prepare_tokenizer()


def test_a_vocabulary_smaller_than_the_corpus_characters_is_a_one_line_error():
    from mt.errors import TokenizerError

    with pytest.raises(
        TokenizerError, match=r"cannot train a 16-piece unigram vocabulary .* raise tokenizer.vocab_size"
    ):
        train_tokenizer(["abcdefghijklmnopqrstuvwxyz 0123456789"] * 20, ["xyz"] * 20, vocab_size=16)


def test_trials_output_replaces_only_an_earlier_table_and_only_with_overwrite(tmp_path):
    """mt.trials output= wrote its table over any file (a checkpoint, a trial's selection.json) with status 0."""
    trial = tmp_path / "sweep/0"
    trial.mkdir(parents=True)
    (trial / "selection.json").write_text('{"metric": "val/bleu", "mode": "max", "value": 30.0, "step": 10}')
    precious = tmp_path / "best.ckpt"
    precious.write_bytes(b"PK\x03\x04 a checkpoint")
    line = cli_error_line(run_cli("mt.trials", f"dir={tmp_path / 'sweep'}", f"output={precious}", "overwrite=true"))
    assert str(precious) in line and "not an earlier table of trials" in line
    assert precious.read_bytes() == b"PK\x03\x04 a checkpoint"
    table = tmp_path / "trials.md"
    table.write_text("# Trials: an earlier table\n")
    line = cli_error_line(run_cli("mt.trials", f"dir={tmp_path / 'sweep'}", f"output={table}"))
    assert str(table) in line and "overwrite=true" in line
    assert table.read_text() == "# Trials: an earlier table\n"
