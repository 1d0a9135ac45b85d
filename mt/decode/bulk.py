"""Translating a file into a file: in input order, resumable, and sharded across processes.

The input is cut into chunks of ``chunk_lines`` lines counted from its first line, the same chunks however
many processes share the work: process ``rank`` of ``world`` takes a contiguous run of whole chunks, so a
sharded run decodes exactly the batches one process would (and sampling, seeded per chunk, draws the same
numbers). Each chunk's output is appended to the process's file and made durable, then the progress file
beside it records how many input lines and output bytes are done (replaced atomically). A process killed at
any point is restarted with the same command: it cuts its file back to the recorded bytes (dropping a chunk
written but not recorded) and goes on from the next line, so no line is lost or written twice.

With several processes each writes ``OUTPUT.shardRRRRR-of-WWWWW``; the last to finish (under a file lock)
concatenates the shards in order into ``OUTPUT`` (atomically) and removes them. ``OUTPUT.progress.json``
records a finished output, so running the command again does nothing.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

from mt import faults
from mt.atomic import atomic_write, exclusive
from mt.data.readers import line_chunks
from mt.errors import RunError

PROGRESS = ".progress.json"


class ProgressBar(Protocol):
    """What ``translate_file`` needs of a progress bar (``tqdm`` is one)."""

    def update(self, n: int) -> object: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc_info: object) -> object: ...


# lines of one chunk, the index of its first line -> the output lines they give (without line ends)
Translate = Callable[[list[str], int], list[str]]


def shard_of_environment(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world) from torchrun (``RANK``, ``WORLD_SIZE``) or a SLURM job array (``SLURM_ARRAY_TASK_ID``
    from ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``); (0, 1) otherwise."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        return int(env.get("RANK", 0)), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_COUNT" in env:
        task, first = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return task - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def count_lines(path: Path) -> int:
    return sum(len(chunk) for chunk in line_chunks(path))


def shard_lines(total: int, chunk_lines: int, rank: int, world: int) -> tuple[int, int]:
    """The input lines [first, end) of process ``rank``: whole chunks, split as evenly as they go."""
    chunks = -(-total // chunk_lines)
    first_chunk, end_chunk = rank * chunks // world, (rank + 1) * chunks // world
    return min(first_chunk * chunk_lines, total), min(end_chunk * chunk_lines, total)


def shard_path(output: Path, rank: int, world: int) -> Path:
    return output if world == 1 else output.with_name(f"{output.name}.shard{rank:05d}-of-{world:05d}")


def progress_path(path: Path) -> Path:
    return path.with_name(path.name + PROGRESS)


def translate_file(
    source: Path,
    output: Path,
    translate: Translate,
    *,
    identity: dict,
    chunk_lines: int,
    rank: int = 0,
    world: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], ProgressBar] | None = None,
) -> bool:
    """Translate this process's shard of ``source`` into ``output`` (merging the shards when it is the last to
    finish); returns whether ``output`` is now complete. ``identity`` (the checkpoint, search, …) must match the
    one a resumed output was started with. ``progress(done, total)`` returns a bar (``tqdm``'s) updated at each
    chunk and closed at the end."""
    if not 0 <= rank < world:
        raise RunError(f"rank {rank} of {world}: expected 0 <= rank < world size")
    final = _read_progress(progress_path(output))
    if final is not None and final.get("done") and not overwrite:
        _check_identity(output, final, identity | {"world": world})
        return True
    if overwrite:
        _remove(output, progress_path(output))
    total = count_lines(source)
    first, end = shard_lines(total, chunk_lines, rank, world)
    target, record = shard_path(output, rank, world), progress_path(shard_path(output, rank, world))
    expected = identity | {"rank": rank, "world": world, "lines": [first, end], "chunk_lines": chunk_lines}
    state = None if overwrite else _read_progress(record)
    if state is None:
        if target.exists() and not overwrite:
            raise RunError(f"{target} exists and holds no progress record; pass overwrite=true to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
        state = {"identity": expected, "lines": 0, "bytes": 0, "done": False}
        _write_progress(record, state)
    _check_identity(target, state, expected)

    if not state["done"]:
        done_lines, done_bytes = state["lines"], state["bytes"]
        bar = progress(done_lines, end - first) if progress else None
        with bar or nullcontext(), open(target, "r+b") as handle:  # the bar closed (its last count drawn) at the end
            handle.truncate(done_bytes)  # a chunk written but not recorded is dropped: it is done again
            handle.seek(done_bytes)
            for index, lines in _chunks(source, first + done_lines, end, chunk_lines):
                data = "".join(line + "\n" for line in translate(lines, index)).encode("utf-8")
                if output.name.endswith(".gz"):  # a gzip member a chunk: their concatenation is one gzip file
                    data = gzip.compress(data, compresslevel=6, mtime=0)
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                faults.point("translate_chunk", target)  # written, not yet recorded
                done_lines, done_bytes = done_lines + len(lines), done_bytes + len(data)
                _write_progress(record, {**state, "lines": done_lines, "bytes": done_bytes})
                if bar is not None:
                    bar.update(len(lines))
        if done_bytes == 0 and output.name.endswith(".gz"):  # no line in this shard: still a gzip file
            with open(target, "ab") as handle:
                done_bytes = handle.write(gzip.compress(b"", mtime=0))
        state = {**state, "lines": done_lines, "bytes": done_bytes, "done": True}
        _write_progress(record, state)
    if world == 1:
        return True
    return _merge_if_last(output, world, identity)


def _chunks(source: Path, start: int, end: int, size: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first line, lines) of ``source``'s lines [start, end), ``size`` at a time (``start`` is at
    a chunk boundary, so the chunks are those of the whole file)."""
    index, pending = 0, []
    for block in line_chunks(source):
        if index + len(block) <= start:
            index += len(block)
            continue
        for line in block:
            if index >= end:
                break
            if index >= start:
                pending.append(line)
                if len(pending) == size:
                    yield index + 1 - size, pending
                    pending = []
            index += 1
        if index >= end:
            break
    if pending:
        yield index - len(pending), pending


def _merge_if_last(output: Path, world: int, identity: dict) -> bool:
    with exclusive(output.with_name(output.name + ".lock")):
        final = progress_path(output)
        if (_read_progress(final) or {}).get("done"):
            return True
        shards = [shard_path(output, rank, world) for rank in range(world)]
        records = [_read_progress(progress_path(s)) or {} for s in shards]
        if not all(record.get("done") for record in records):
            return False  # another process finishes later and merges
        for shard, record in zip(shards, records):  # shards started apart (a job array) saw the same files
            _check_identity(shard, record, identity)
        with atomic_write(output) as merged:
            for shard in shards:
                with open(shard, "rb") as handle:
                    while block := handle.read(1 << 24):
                        merged.write(block)
        _write_progress(final, {"identity": identity | {"world": world}, "done": True})
        for shard in shards:
            _remove(shard, progress_path(shard))
        return True


def _read_progress(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path}: not a progress record (damaged?); pass overwrite=true to start again") from None


def _write_progress(path: Path, state: dict) -> None:
    with atomic_write(path) as handle:
        handle.write(json.dumps(state, sort_keys=True).encode())


def _check_identity(path: Path, state: dict, expected: dict) -> None:
    recorded = state.get("identity", {})
    for key, value in expected.items():
        if recorded.get(key) != value:
            was, now = recorded.get(key), value
            if isinstance(was, dict) and isinstance(now, dict) and "path" in now and was.get("path") == now["path"]:
                raise RunError(  # a file_version: the same file, changed since
                    f"{path} was started with {key}={now['path']} as it was then ({was.get('bytes')} bytes), and "
                    f"it has changed since ({now.get('bytes')} bytes, modified later): its lines would come from "
                    f"two versions; pass overwrite=true to start again or choose another output"
                )
            started = f"with {key}={was!r}, not {now!r}" if key in recorded else f"without {key}={now!r}"
            raise RunError(f"{path} was started {started}; pass overwrite=true to start again or choose another output")


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
