"""mt.translate input=FILE output=FILE: in order, resumable after kill -9, sharded across processes.

The references: the same translation streamed to stdout (one uninterrupted process), and one process's file
for the sharded runs. Kills are injected at the named point ``translate_chunk`` (a chunk's lines written to
the file, its progress not yet recorded: the worst moment)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mt.decode.bulk import shard_lines, shard_of_environment
from tests.conftest import toy_pairs
from tests.helpers import ROOT, fit_tiny

CHUNK = 7  # buffer=7: 50 lines make 8 chunks


@pytest.fixture(scope="module")
def checkpoint(toy_corpus_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("bulk")
    _, trainer = fit_tiny(toy_corpus_dir, run_dir, max_steps=40)
    path = run_dir / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "mono.src"
    lines = [src for src, _ in toy_pairs(50, seed=7)]
    lines[10] = ""  # an empty line stays an empty line
    path.write_text("".join(line + "\n" for line in lines))
    return path


def translate(checkpoint: Path, *args: str, env: dict | None = None, stdin: str | None = None):
    command = [sys.executable, "-m", "mt.translate", f"checkpoint={checkpoint}", f"buffer={CHUNK}", *args]
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MT_FAULT")}
    environment |= {"OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, input=stdin, env=environment, timeout=300)


@pytest.fixture(scope="module")
def streamed(checkpoint, source) -> str:
    """The reference: the same translation streamed to stdout by one process."""
    result = translate(checkpoint, stdin=source.read_text())
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_file_translated_in_one_run_equals_the_streamed_translation(checkpoint, source, streamed, tmp_path):
    output = tmp_path / "out.txt"
    result = translate(checkpoint, f"input={source}", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.read_text() == streamed
    assert len(streamed.splitlines()) == 50 and streamed.splitlines()[10] == ""
    assert json.loads((tmp_path / "out.txt.progress.json").read_text())["done"] is True
    again = translate(checkpoint, f"input={source}", f"output={output}")  # finished: nothing to do
    assert again.returncode == 0 and output.read_text() == streamed


def test_killed_after_writing_a_chunk_and_restarted_it_gives_the_same_file(checkpoint, source, streamed, tmp_path):
    output = tmp_path / "out.txt"
    killed = translate(checkpoint, f"input={source}", f"output={output}", env={"MT_FAULT": "translate_chunk:3"})
    assert killed.returncode == -9
    record = json.loads((tmp_path / "out.txt.progress.json").read_text())
    assert record["lines"] == 2 * CHUNK and len(output.read_text().splitlines()) == 3 * CHUNK  # one unrecorded
    result = translate(checkpoint, f"input={source}", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.read_text() == streamed  # no line lost or written twice


def test_a_gz_output_is_gzip_and_resumes_after_a_kill(checkpoint, source, streamed, tmp_path):
    """output=*.gz: a gzip member a chunk, so a resumed file is still one gzip stream, read back by Python's gzip
    (the reference) as the streamed translation."""
    output = tmp_path / "out.txt.gz"
    killed = translate(checkpoint, f"input={source}", f"output={output}", env={"MT_FAULT": "translate_chunk:3"})
    assert killed.returncode == -9
    result = translate(checkpoint, f"input={source}", f"output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.read_bytes()[:2] == b"\x1f\x8b" and gzip.decompress(output.read_bytes()).decode() == streamed


def test_a_resumed_output_with_other_settings_is_refused(checkpoint, source, tmp_path):
    """An output left unfinished by a kill (its record says so) is not resumed with another search, whose lines
    would differ from those already written; the refusal leaves the partial file and its record as they were."""
    output = tmp_path / "out.txt"
    killed = translate(checkpoint, f"input={source}", f"output={output}", env={"MT_FAULT": "translate_chunk:2"})
    assert killed.returncode == -9  # a resume, not a finished output
    progress = tmp_path / "out.txt.progress.json"
    record, written = progress.read_text(), output.read_bytes()
    assert json.loads(record)["done"] is False and json.loads(record)["lines"] == CHUNK
    result = translate(checkpoint, f"input={source}", f"output={output}", "beam=2")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "was started with search=" in errors[0] and "overwrite=true" in errors[0]
    assert progress.read_text() == record and output.read_bytes() == written
    result = translate(checkpoint, f"input={source}", f"output={output}", "precision=bf16")  # other numbers too
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "was started without precision=" in errors[0]
    assert progress.read_text() == record and output.read_bytes() == written


def test_a_resumed_output_whose_checkpoint_file_changed_is_refused(checkpoint, source, tmp_path):
    """Another checkpoint copied over the name (or a best.ckpt that training rewrote) is not resumed into the
    same file: its lines would come from two models."""
    model = tmp_path / "model.ckpt"
    model.write_bytes(checkpoint.read_bytes())
    output = tmp_path / "out.txt"
    killed = translate(model, f"input={source}", f"output={output}", env={"MT_FAULT": "translate_chunk:2"})
    assert killed.returncode == -9  # a resume, not a finished output
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # rewritten, same bytes
    result = translate(model, f"input={source}", f"output={output}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"was started with checkpoint={model} as it was then" in errors[0], errors
    assert "it has changed since" in errors[0]


def test_shards_translated_with_two_versions_of_the_checkpoint_are_not_merged(checkpoint, source, tmp_path):
    """A job array's tasks start apart: a best.ckpt rewritten between them is found at the merge."""
    model = tmp_path / "model.ckpt"
    model.write_bytes(checkpoint.read_bytes())
    output = tmp_path / "out.txt.gz"
    first = translate(model, f"input={source}", f"output={output}", env={"WORLD_SIZE": "2", "RANK": "0"})
    assert first.returncode == 0, first.stderr[-2000:]
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    last = translate(model, f"input={source}", f"output={output}", env={"WORLD_SIZE": "2", "RANK": "1"})
    assert last.returncode == 2 and "it has changed since" in last.stderr, last.stderr[-2000:]
    assert not output.exists()
    # An empty input still makes a gzip file of nothing.
    (tmp_path / "empty.src").write_text("")
    empty = translate(checkpoint, f"input={tmp_path / 'empty.src'}", f"output={tmp_path / 'empty.txt.gz'}")
    assert empty.returncode == 0 and gzip.decompress((tmp_path / "empty.txt.gz").read_bytes()) == b""


@pytest.mark.parametrize("search", [[], ["search=sample", "search.seed=3"]], ids=["beam", "sampling"])
def test_shards_merged_in_order_equal_one_process(checkpoint, source, streamed, tmp_path, search):
    single = tmp_path / "single.txt"
    if search:
        assert translate(checkpoint, f"input={source}", f"output={single}", *search).returncode == 0
        expected = single.read_text()
        assert expected != streamed  # it sampled
    else:
        expected = streamed
    output = tmp_path / "sharded.txt"
    world = 3
    for rank in range(world):  # one after another: the last to finish merges
        result = translate(
            checkpoint, f"input={source}", f"output={output}", *search, env={"WORLD_SIZE": "3", "RANK": str(rank)}
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert output.exists() == (rank == world - 1)
    assert output.read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("sharded")) == [
        "sharded.txt",
        "sharded.txt.lock",
        "sharded.txt.progress.json",
    ]


def test_shards_are_whole_chunks_covering_every_line_once() -> None:
    for total in (0, 1, 49, 50, 51, 1000):
        for world in (1, 2, 3, 8):
            spans = [shard_lines(total, CHUNK, rank, world) for rank in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert all(first % CHUNK == 0 or first == total for first, _ in spans)
    assert shard_of_environment({"WORLD_SIZE": "4", "RANK": "2"}) == (2, 4)
    assert shard_of_environment(
        {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}
    ) == (2, 3)
    assert shard_of_environment({}) == (0, 1)
