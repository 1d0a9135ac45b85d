"""Hostile input found by trying the commands as a user would, one behavioural test each: a one-line error
(``error: ...``, exit status 2, no traceback) or the right output, never a traceback or a stall.

Errors of the machine (a read-only run directory, a full disk) are injected at named fault points
(``MT_FAULT=NAME:N:ERRNO``, ``mt/faults.py``): CI runs as root, which may write anywhere.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.config import SearchConfig
from mt.decode.search import max_output_lengths
from mt.decode.translator import translate
from mt.errors import DataError, RunError
from mt.model.averaging import average_checkpoints
from mt.model.checkpoint import load_checkpoint
from mt.training.run import train
from tests.conftest import tiny_train_config, toy_pairs, write_text_corpus
from tests.helpers import ROOT, fit_tiny, toy_args


@pytest.fixture(scope="module")
def checkpoint(toy_corpus_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hostile")
    _, trainer = fit_tiny(toy_corpus_dir, run_dir, max_steps=40)
    path = run_dir / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    return errors[0]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, **kwargs)


# -- translation -----------------------------------------------------------------------------------


def test_the_output_length_has_a_ceiling_whatever_the_source_length():
    pad_mask = torch.zeros(2, 3000, dtype=torch.bool)
    pad_mask[1, 5:] = True  # 3000 and 5 source tokens
    assert max_output_lengths(pad_mask, 1.2, 10).tolist() == [3610, 16]  # floor(1.2 * n + 10), by hand
    assert max_output_lengths(pad_mask, 1.2, 10, ceiling=512).tolist() == [512, 16]


def test_a_very_long_line_is_cut_and_translated_without_holding_the_others(checkpoint, caplog):
    loaded = load_checkpoint(checkpoint)
    long_line = " ".join(["der hund sieht den ball"] * 800)  # thousands of subwords
    lines = ["Der hund sieht den ball.", long_line, "Die katze."]
    search = SearchConfig(beam=2, max_len=40, max_src_len=100)
    with caplog.at_level("WARNING"):
        out = translate(loaded.model, loaded.tokenizer, lines, search)
    assert len(out) == 3 and all(nbest[0][0] for nbest in out)
    assert len(loaded.tokenizer.encode_tgt([out[1][0][0]])[0]) <= 40
    assert any("line 2:" in r.message and "cut to the first 100" in r.message for r in caplog.records)
    # The cut line translates as its first 100 subwords do.
    first_100 = loaded.tokenizer.src.decode(loaded.tokenizer.encode_src([long_line])[0][:100])
    assert out[1][0][0] == translate(loaded.model, loaded.tokenizer, [first_100], search)[0][0][0]


def test_a_line_of_nothing_the_tokenizer_keeps_is_translated_as_an_empty_line(checkpoint):
    """A zero-width space, a byte-order mark or a control character alone encode to no subword: decoded from EOS
    alone, the model made a sentence up, where an empty line stays empty."""
    loaded = load_checkpoint(checkpoint)
    lines = ["\u200b", "\ufeff", "\x01", "", "Der hund sieht der ball."]
    assert loaded.tokenizer.encode_src(lines[:3]) == [[], [], []]  # what makes them empty
    outputs = translate(loaded.model, loaded.tokenizer, lines, SearchConfig(beam=2, nbest=2, max_len_b=8))
    assert outputs[:4] == [[("", 0.0), ("", 0.0)]] * 4
    assert all(text for text, _ in outputs[4])


def test_an_output_under_a_file_is_refused_before_the_checkpoint_is_loaded(checkpoint, tmp_path, monkeypatch):
    """``mt.evaluate output=A/hyp`` where A is a file: refused at once, not after decoding the whole set (the
    folder was first made when the output was written)."""
    import mt.decode.scoring
    from mt.decode.scoring import score_checkpoint

    (tmp_path / "src.de").write_text("Der hund.\n")
    (tmp_path / "ref.en").write_text("The dog.\n")
    (tmp_path / "a-file").write_text("x\n")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(mt.decode.scoring, "load_translator", no_decoding)
    for output in (tmp_path / "a-file/hyp.en", tmp_path / "a-file/deeper/hyp.en"):
        with pytest.raises(RunError, match=f"output {output}: {tmp_path / 'a-file'} is a file, not a folder"):
            score_checkpoint(
                checkpoint, source=str(tmp_path / "src.de"), references=[str(tmp_path / "ref.en")], output=str(output)
            )
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a folder that cannot be made either
    output = tmp_path / "dangling/hyp.en"
    with pytest.raises(RunError, match=f"output {output}: {tmp_path / 'dangling'} is a symbolic link to nothing"):
        score_checkpoint(
            checkpoint, source=str(tmp_path / "src.de"), references=[str(tmp_path / "ref.en")], output=str(output)
        )


def test_an_nbest_wider_than_the_beam_says_that_it_widens_the_beam(checkpoint):
    """``nbest=K`` over a narrower beam decodes with beam K, whose best may differ from the plain translation:
    said on stderr."""
    from mt.config import saved_search

    saved = saved_search(load_checkpoint(checkpoint).search, {}).beam
    wide = subprocess.run(
        command("mt.translate", f"checkpoint={checkpoint}", f"nbest={saved + 2}", "search.max_len_b=4", "threads=1"),
        cwd=ROOT, input=b"Der hund.\n", capture_output=True, timeout=120,
    )  # fmt: skip
    assert wide.returncode == 0 and len(wide.stdout.decode().splitlines()) == saved + 2
    assert f"nbest={saved + 2}: beam {saved + 2} instead of {saved}, so the best" in wide.stderr.decode()


def test_an_interactive_translate_answers_each_line_before_the_next_is_written(checkpoint):
    """buffer=1 through a pipe, as a terminal gets it: line 2 is written only after line 1's translation came
    back (a translate that waits for more input would never answer; the 120 s limit only stops a hang)."""
    process = subprocess.Popen(
        command("mt.translate", f"checkpoint={checkpoint}", "buffer=1", "beam=2", "threads=1"),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        answers = []
        for line in (b"Der hund sieht den ball.\n", b"Die katze sucht den hund.\n"):
            process.stdin.write(line)
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 120)
            assert ready, "no answer while the input stayed open"
            answers.append(process.stdout.readline())
        process.stdin.close()
        assert process.wait(timeout=60) == 0 and process.stdout.read() == b""
        assert all(answer.endswith(b"\n") and answer.strip() for answer in answers)
    finally:
        process.kill()


def test_closing_stdout_early_ends_translate_quietly(checkpoint, tmp_path):
    """``mt.translate ... | head -1``: status 141 (as a tool killed by SIGPIPE), nothing on stderr."""
    source = tmp_path / "in.de"
    source.write_text("".join(f"{s}\n" for s, _ in toy_pairs(50, seed=3)))
    process = subprocess.Popen(
        command("mt.translate", f"checkpoint={checkpoint}", f"input={source}", "buffer=1", "beam=1", "threads=1"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout.readline().strip()
        process.stdout.close()  # the reader goes away: the next write fails with EPIPE
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 141, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr


def test_a_key_added_with_plus_is_checked_against_the_schema(checkpoint):
    line = one_error_line(run(command("mt.translate", f"checkpoint={checkpoint}", "+bem=3"), input=""))
    assert line.startswith("error: unknown key 'bem' (added with +bem=...?)")
    line = one_error_line(run(command("mt.evaluate", f"checkpoint={checkpoint}", "+search.bem=3")))
    assert "unknown key 'search.bem'" in line


# -- training --------------------------------------------------------------------------------------


def test_a_run_directory_under_a_file_is_a_one_line_error(toy_corpus_dir, tmp_path):
    (tmp_path / "file").write_text("a file, not a directory\n")
    run_dir = tmp_path / "file" / "run"
    line = one_error_line(run(command("mt.train", *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=2"))))
    assert line.startswith(f"error: cannot write {run_dir}: Not a directory")
    assert (tmp_path / "file").read_text() == "a file, not a directory\n"


def test_a_run_directory_that_cannot_be_written_is_a_one_line_error(toy_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        command("mt.train", *toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=2")),
        env={"MT_FAULT": "run_directory:1:EACCES"},
    )
    assert one_error_line(result) == (
        f"error: cannot write {run_dir / '.lock'}: Permission denied (not writable by this user)"
    )


def test_a_full_disk_during_a_checkpoint_is_a_one_line_error_and_keeps_the_last_checkpoint(toy_corpus_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = toy_args(toy_corpus_dir, run_dir, "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=2")
    result = run(command("mt.train", *args), env={"MT_FAULT": "checkpoint_write:2:ENOSPC"})
    last = run_dir / "checkpoints/last.ckpt"
    assert one_error_line(result) == f"error: cannot write {last}: No space left on device (the disk is full)"
    assert torch.load(last, weights_only=False)["global_step"] == 2  # the first save, whole
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_resuming_from_a_weights_only_checkpoint_is_refused(toy_corpus_dir, tmp_path):
    config = tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 2, "test_after_training": False})
    train(config, tmp_path / "run")
    averaged = tmp_path / "average.ckpt"
    torch.save(average_checkpoints([tmp_path / "run/checkpoints/last.ckpt"]), averaged)
    config = tiny_train_config(toy_corpus_dir, **{"trainer.max_steps": 4, "resume": str(averaged)})
    with pytest.raises(RunError, match=r"holds weights only \(no optimizer_states or loops\)"):
        train(config, tmp_path / "run")


def test_a_corpus_of_blank_lines_names_the_file_not_the_vocabulary(tmp_path):
    data = write_text_corpus(tmp_path / "blank", {"train": [("", "")] * 30, "valid": toy_pairs(4, seed=2)})
    config = tiny_train_config(data, **{"trainer.max_steps": 2, "test_after_training": False})
    with pytest.raises(DataError, match=r"every de line of the train split \(of 30 sampled\) is blank") as caught:
        train(config, tmp_path / "run")
    assert "train.de" in str(caught.value) and "vocab" not in str(caught.value)


def test_conflicting_hydra_flags_are_a_one_line_error():
    line = one_error_line(run(command("mt.train", "-m", "model=tiny", "seed=1,2", "--cfg", "job")))
    assert line == "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"


def test_a_run_directory_tokenizer_of_other_training_files_is_refused(tmp_path):
    """A start that failed after training its tokenizer (no checkpoint yet), relaunched in the same directory on
    other data, kept the first data's vocabulary without a word (15.8% <unk> on Czech sources in the audit). The
    same files moved elsewhere still load it."""
    from mt.errors import TokenizerError
    from mt.training.datamodule import TranslationDataModule

    first_data = write_text_corpus(tmp_path / "first", {"train": toy_pairs(40), "valid": toy_pairs(4, seed=1)})
    other_data = write_text_corpus(tmp_path / "other", {"train": toy_pairs(50, seed=7), "valid": toy_pairs(4, seed=1)})
    run_dir = tmp_path / "run"

    def prepare(data_dir):
        config = tiny_train_config(data_dir)
        return TranslationDataModule(config.data, config.tokenizer, run_dir=run_dir, seed=1).prepare_tokenizer()

    first = prepare(first_data)
    with pytest.raises(
        TokenizerError, match=r"/run/tokenizer was trained on other training files \(the training data: train"
    ):
        prepare(other_data)
    moved = tmp_path / "moved"
    first_data.rename(moved)
    assert prepare(moved).to_state() == first.to_state()


def test_a_validation_line_longer_than_max_tokens_is_validated_alone_and_named(tmp_path, caplog):
    """Only the training split is cleaned to data.max_len: one long validation line stopped the run at the start
    with "raise data.max_tokens" (which also sizes every training batch), naming neither file nor line."""
    import gzip

    data = write_text_corpus(tmp_path / "data", {"train": toy_pairs(60), "valid": toy_pairs(6, seed=1)})
    valid = gzip.decompress((data / "valid.en.gz").read_bytes()).decode().splitlines()
    valid[3] = " ".join(["The dog sees the red ball."] * 120)  # far above max_tokens=512 subwords
    (data / "valid.en.gz").write_bytes(gzip.compress(("\n".join(valid) + "\n").encode()))
    config = tiny_train_config(data, **{"trainer.max_steps": 4, "test_after_training": False})
    with caplog.at_level("WARNING", logger="mt.training.datamodule"):
        train(config, tmp_path / "run")
    assert f"{data / 'valid.de.gz'} + {data / 'valid.en.gz'}: 1 pair longer than data.max_tokens=512" in caplog.text
    assert "each validated in a batch of its own: line 4 (" in caplog.text
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()
