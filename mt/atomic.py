"""One way to write a file so that readers see the old or the new content, never half of it.

Used for checkpoints, the tokenizer, the encoded-data cache and evaluation outputs: the bytes go
to a temporary file beside the target (unique per process, since ranks may race), which is
flushed, fsynced and renamed over the target; the directory entry is fsynced too.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mt.errors import RunError


def refuse_to_overwrite(path: str | Path, *, overwrite: bool, directory: bool = False) -> None:
    """Refuse, before any work, an output that exists (unless ``overwrite``) or is of the wrong kind: a
    directory where a file is written, or a file where a directory is (``directory=True``)."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind, expected = ("file", "directory") if directory else ("directory", "file")
        raise RunError(f"output {path} is a {kind}; expected a {expected} name")
    if path.exists() and not overwrite:
        raise RunError(f"{path} exists; pass overwrite=true to replace it")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only if the ``with`` block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable; some filesystems cannot fsync a directory
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Block until this process alone holds ``path`` (a lock file): ranks that start together on a
    shared run directory take turns, so one trains the tokenizer or builds a cache and the others
    then load it; the processes of a sharded ``mt.translate`` merge their shards once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
