"""Which training data a run read: each corpus's files by name, size and content digest (``train_files``), so
that a resume, or a run directory's tokenizer, can tell the same data moved elsewhere from data changed in place,
and say where two records differ (``files_difference``).

Hashing reads every byte (about 1 s a GB), so a digest is kept in a memo (``digests.json`` in the run's data cache)
under what the file system says of the file: device, inode, size, modification and change time. Rewriting a file
changes its change time, which no tool can set back (``cp -p`` and ``rsync -t`` restore the modification time
only), so a memo entry is reused only for the very same bytes; a file changed less than ``SETTLE_NS`` before it was
hashed is not memoised, since a coarse file-system clock could give a rewrite in the same tick the same times. The
ranks of a job take turns on the memo: the first hashes, the others, and every later start, read its digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from mt.atomic import atomic_write, exclusive
from mt.config import DataConfig
from mt.data.corpus import dataset_split_files
from mt.data.mixture import corpora
from mt.data.readers import local_split

SETTLE_NS = 2_000_000_000  # a file changed this recently is hashed again next time (FAT's clock ticks in 2 s)


def train_files(data: DataConfig, memo: Path | None = None) -> list:
    """Each corpus's training data as its files' names, sizes and content digests (a hub dataset: its name and
    config): what a moved copy of the data shares with the original, and a changed file does not, even of the same
    size (shuffled lines). ``memo``: a directory whose ``digests.json`` keeps the digests of unchanged files."""
    if memo is None:
        return _train_files(data, _digest)
    memo.mkdir(parents=True, exist_ok=True)
    with exclusive(memo / ".digests.lock"):  # ranks started together: one hashes, the others read the memo
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
    docstring); an unreadable or foreign memo is started afresh, never trusted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started_ns = time.time_ns()
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(entries, dict):
            self.entries = {key: value for key, value in entries.items() if isinstance(value, list) and len(value) == 2}

    def digest(self, path: Path) -> str:
        key = str(path.resolve())
        identity = _identity(path)
        entry = self.entries.get(key)
        if entry is not None and entry[0] == identity:
            return entry[1]
        value = _digest(path)
        if _identity(path) == identity and max(identity[3:]) < self.started_ns - SETTLE_NS:  # settled, unchanged
            self.entries[key] = [identity, value]
            self.changed = True
        elif key in self.entries:
            del self.entries[key]
            self.changed = True
        return value

    def save(self) -> None:
        if self.changed:
            with atomic_write(self.path) as handle:
                handle.write(json.dumps(self.entries, sort_keys=True).encode())


def _identity(path: Path) -> list[int]:
    """What the file system says of a file's version: device, inode, size, modification and change time (ns)."""
    stat = os.stat(path)
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


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
