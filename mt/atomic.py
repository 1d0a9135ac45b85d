"""One way to write a file so that readers see the old or the new content, never half of it.

Used for checkpoints, the tokenizer, the encoded-data cache and evaluation outputs: the bytes go
to a temporary file beside the target (unique per process, since ranks may race), which is
flushed, fsynced and renamed over the target; the directory entry is fsynced too. Exported model
directories are built the same way beside their target (``replacing_directory``), and replace only a
directory that ``refuse_to_replace`` lets go: an empty one or a previous output of the same command.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping
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
    refuse_unwritable_folder(path)


def refuse_unwritable_folder(path: str | Path) -> None:
    """Refuse, before any work, an output whose folder cannot be made or written: the nearest existing folder
    above it is a file, or not writable (the folders below it are made when the output is written)."""
    path = Path(path)
    above = path.parent
    while not above.exists() and not above.is_symlink() and above != above.parent:
        above = above.parent
    if above.is_symlink() and not above.exists():
        raise RunError(f"output {path}: {above} is a symbolic link to nothing ({os.readlink(above)})")
    if not above.is_dir():
        raise RunError(f"output {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise RunError(f"output {path}: {above} is not writable")


def refuse_to_replace(
    directory: str | Path, *, source: str | Path, kind: str, foreign: Callable[[Path], str | None]
) -> None:
    """Refuse, before any work, to replace the existing ``directory`` unless it is empty or a previous output
    of the command: ``foreign(directory)`` says why it is not one (e.g. ``"it holds checkpoints/"``), or None.
    A directory that holds ``source`` (the command's input) at any depth is refused whatever it looks like, and
    so are a symbolic link (replacing it would leave what it points to as it was) and a name that is no name
    (``.``, ``..``)."""
    directory = Path(directory)
    if directory.name in ("", ".", ".."):
        raise RunError(f"output={directory}: expected the name of a directory to write")
    if directory.is_symlink():
        raise RunError(f"output={directory}: a symbolic link; give the directory it points to, or another name")
    if not directory.is_dir():
        return
    if Path(source).resolve().is_relative_to(directory.resolve()):
        raise RunError(f"output={directory}: holds the input {source}; choose another output")
    if not any(directory.iterdir()):
        return
    reason = foreign(directory)
    if reason is not None:
        raise RunError(f"output={directory}: not a previous {kind} ({reason}); choose another output")


def foreign_entries(directory: Path, files: Collection[str], folders: Mapping[str, Collection[str]] = {}) -> list[str]:
    """The entries of ``directory`` that a command's output does not have: any but the regular ``files`` and
    the ``folders`` (each holding only its own files), folders named with a slash (``checkpoints/``)."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.is_symlink() and path.name in files:
            continue
        if path.is_dir() and not path.is_symlink() and path.name in folders:
            found += [f"{path.name}/{name}" for name in foreign_entries(path, folders[path.name])]
            continue
        found.append(f"{path.name}/" if path.is_dir() else path.name)
    return found


@contextmanager
def replacing_directory(path: str | Path) -> Iterator[Path]:
    """A new, empty directory beside ``path`` to build into; it replaces ``path`` (moved aside first and
    removed only once the new one is in place) if the ``with`` block succeeds, and is removed if not. The two
    names beside it are fixed (``.NAME.tmp``, ``.NAME.old``), so what a killed process left there is removed by
    the next one (after a kill between the two renames, ``.NAME.old`` is the previous output, until then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except OSError:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_version(path: str | Path) -> dict | None:
    """A file and its version (resolved path, size, modification time): what a cache or a resumable output is
    keyed by, so that a file rewritten under the same name (a ``best.ckpt`` that training replaces) is another.
    None where there is no such file (loading it then says so)."""
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only if the ``with`` block succeeds. A ``path``
    that is a directory is a ``RunError`` before anything is written."""
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{path}: a directory, expected a file name to write")
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
