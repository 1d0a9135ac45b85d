"""Which training data a run read: each corpus's files by name, size and content digest (``train_files``), so
that a resume, or a run directory's tokenizer, can tell the same data moved elsewhere from data changed in place,
and say where two records differ (``files_difference``).

Hashing reads every byte (about 1 s a GB), so a digest is kept in a memo (``digests.json`` in the run's data cache)
under what the file system says of the file: inode, size, modification and change time. Rewriting a file changes
its change time, which the usual tools cannot set back (``cp -p`` and ``rsync -t`` restore the modification time
only; file systems without a change time of their own, such as vfat or some FUSE mounts, are the exception), so a
memo entry is reused only for the same bytes; a file changed less than ``SETTLE_NS`` before it was hashed (by this
host's clock; a file server's may differ) is not memoised, since a coarse file-system clock could give a rewrite in
the same tick the same times. The first start hashes as before; the ranks of later starts, and requeued jobs, read
the memo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from mt.atomic import atomic_write, exclusive
from mt.config import DataConfig
from mt.data.corpus import dataset_split_files
from mt.data.mixture import corpora
from mt.data.readers import local_split
from mt.errors import RunError

log = logging.getLogger(__name__)

SETTLE_NS = 2_000_000_000  # a file changed this recently is hashed again next time (FAT's clock ticks in 2 s)


def train_files(data: DataConfig, memo: Path | None = None) -> list:
    """Each corpus's training data as its files' names, sizes and content digests (a hub dataset: its name and
    config): what a moved copy of the data shares with the original, and a changed file does not, even of the same
    size (shuffled lines). ``memo``: a directory whose ``digests.json`` keeps the digests of unchanged files (read
    if it can be, written if it can be: a read-only or another user's cache only costs the hashing)."""
    if memo is None:
        return _train_files(data, _digest)
    known = DigestMemo(memo / "digests.json")
    found = _train_files(data, known.digest)
    known.save()
    return found


def _train_files(data: DataConfig, digest) -> list:
    found = []
    for corpus in corpora(data):
        cfg = corpus.data
        if cfg.path:
            split = local_split(cfg, "train")
            paths = [Path(p) for p in (split.src_path, split.tgt_path) if p]
            found.append([[p.name, p.stat().st_size, digest(p)] for p in paths])
        elif cfg.hub_name and Path(cfg.hub_name).expanduser().is_dir():  # a dataset saved on disk: its files
            folder = Path(cfg.hub_name).expanduser()
            files = dataset_split_files(cfg, "train")
            found.append([[str(p.relative_to(folder)), p.stat().st_size, digest(p)] for p in files])
        else:
            found.append([cfg.hub_name, cfg.hub_config])
    return found


class DigestMemo:
    """Digests by resolved path, each kept with the file's ``_identity`` when it was hashed (see the module's
    docstring). Files are hashed outside any lock (ranks that start together hash at once, as without a memo); the
    new entries are merged into the memo under a lock, and entries of files gone are dropped. An entry of another
    shape is ignored, and a memo that cannot be read or written is only a memo missed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started_ns = time.time_ns()
        self.entries = _read_entries(path)
        self.found: dict[str, list | None] = {}  # hashed here: the entry to keep, or None (not settled: drop it)

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        identity = _identity(path)
        entry = self.entries.get(key)
        if entry is not None and entry[0] == identity:
            return entry[1]
        value = _digest(path)
        settled = _identity(path) == identity and max(identity[2:]) < self.started_ns - SETTLE_NS
        self.found[key] = [identity, value] if settled else None
        return value

    def save(self) -> None:
        if not any(entry is not None or key in self.entries for key, entry in self.found.items()):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(self.path.with_name(".digests.lock")):  # jobs sharing a data.cache_dir: merged
                entries = _read_entries(self.path)
                for key, entry in self.found.items():
                    if entry is None:
                        entries.pop(key, None)
                    else:
                        entries[key] = entry
                entries = {key: entry for key, entry in entries.items() if os.path.exists(key)}
                with atomic_write(self.path) as handle:
                    handle.write(json.dumps(entries, sort_keys=True).encode())
        except (OSError, RunError) as error:
            log.info("digests of the training files not memoised in %s: %s", self.path, error)


def _read_entries(path: Path) -> dict[str, list]:
    """The memo's entries of the right shape (``[[inode, size, mtime_ns, ctime_ns], hex digest]``)."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}

    def valid(entry) -> bool:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            return False
        identity, value = entry
        numbers = len(identity) == 4 and all(isinstance(x, int) and not isinstance(x, bool) for x in identity)
        return numbers and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) is not None

    return {key: entry for key, entry in entries.items() if valid(entry)}


def _identity(path: Path) -> list[int]:
    """What the file system says of a file's version: inode, size, modification and change time (ns). Not the
    device, whose number differs between the nodes that mount one network file system."""
    stat = os.stat(path)
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _digest(path: Path) -> str:
    """BLAKE2b of the file's bytes (about 1 s a GB)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def same_files(recorded: list, found: list) -> bool:
    """Whether two ``train_files`` records name the same data, on the fields both hold (records from before the
    digests have names and sizes only)."""
    if len(recorded) != len(found):
        return False
    for saved, here in zip(recorded, found):
        saved_files, here_files = bool(saved) and isinstance(saved[0], list), bool(here) and isinstance(here[0], list)
        if saved_files != here_files and not saved_files and isinstance(saved[0], str) and Path(saved[0]).is_dir():
            continue  # a dataset folder recorded by its name alone (earlier checkpoints): the data fields compare it
        if not (saved_files and here_files):
            if saved != here:  # a hub dataset, or files on one side only
                return False
            continue
        if len(saved) != len(here) or any(a[: len(b)] != b[: len(a)] for a, b in zip(saved, here)):
            return False
    return True


def files_difference(recorded: list, found: list) -> str:
    """Where two ``train_files`` records that are not ``same_files`` first differ, for a message: one file, or
    the names missing and new (a few; a dataset folder may hold thousands of shards), not the whole records."""
    if len(recorded) != len(found):
        return f"{len(found)} corpora here but {len(recorded)} recorded"
    for i, (saved, here) in enumerate(zip(recorded, found)):
        if same_files([saved], [here]):
            continue
        where = f"corpus {i}" if len(found) > 1 else "the training data"
        if not (saved and isinstance(saved[0], list) and here and isinstance(here[0], list)):
            return f"{where}: {here} here but {saved} recorded"  # a hub dataset: its name and config
        saved_by_name, here_by_name = {f[0]: f for f in saved}, {f[0]: f for f in here}
        missing = [name for name in saved_by_name if name not in here_by_name]
        new = [name for name in here_by_name if name not in saved_by_name]
        if missing or new:
            parts = [f"{label} {_some(names)}" for label, names in (("missing", missing), ("new", new)) if names]
            return f"{where}: {len(here)} files here but {len(saved)} recorded ({'; '.join(parts)})"
        for name, was in saved_by_name.items():
            now = here_by_name[name]
            if was[: len(now)] != now[: len(was)]:
                return f"{where}: {name} is {_file_state(now)} here but was {_file_state(was)}"
        return f"{where}: its files are in another order ({_some(list(here_by_name))})"
    return "the same files"


def _some(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _file_state(entry: list) -> str:
    """A ``train_files`` entry (name, size and, from newer checkpoints, digest) in words."""
    return f"{entry[1]} bytes" + (f", digest {entry[2][:12]}" if len(entry) > 2 else "")
