"""Which training data a run read: each corpus's files by name, size and content digest (``train_files``), so
that a resume, or a run directory's tokenizer, can tell the same data moved elsewhere from data changed in place,
and say where two records differ (``files_difference``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mt.config import DataConfig
from mt.data.corpus import dataset_split_files
from mt.data.mixture import corpora
from mt.data.readers import local_split


def train_files(data: DataConfig) -> list:
    """Each corpus's training data as its files' names, sizes and content digests (a hub dataset: its name and
    config): what a moved copy of the data shares with the original, and a changed file does not, even of the same
    size (shuffled lines)."""
    found = []
    for corpus in corpora(data):
        cfg = corpus.data
        if cfg.path:
            split = local_split(cfg, "train")
            paths = [Path(p) for p in (split.src_path, split.tgt_path) if p]
            found.append([[p.name, p.stat().st_size, _digest(p)] for p in paths])
        elif cfg.hub_name and Path(cfg.hub_name).expanduser().is_dir():  # a dataset saved on disk: its files
            folder = Path(cfg.hub_name).expanduser()
            files = dataset_split_files(cfg, "train")
            found.append([[str(p.relative_to(folder)), p.stat().st_size, _digest(p)] for p in files])
        else:
            found.append([cfg.hub_name, cfg.hub_config])
    return found


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
