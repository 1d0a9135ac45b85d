"""Several corpora in one run: which they are, how many pairs each epoch draws from each, and which.

``data.corpora`` lists corpora that differ from ``data`` in a few fields (files or hub dataset, languages),
each with an optional sampling weight and tag; ``corpora(cfg)`` resolves them into one ``Corpus`` each, with
a complete single-corpus ``DataConfig`` that the readers, the cache and the test splits use unchanged.

An epoch draws ``draw_counts(...)[i]`` pairs from corpus ``i``: ``round(p_i * N)`` with ``N`` the pairs of all
corpora and ``p_i`` from the weights, or ``n_i ** (1/T)`` normalised (temperature sampling, Arivazhagan et al.
2019), or ``n_i / N`` (the default: every pair once an epoch). Which pairs: each corpus is read as an endless
stream of seeded permutations of its pairs, and epoch ``e`` takes the stream's items ``[e*m, (e+1)*m)``
(``epoch_draw``), so a corpus drawn below its size shows every pair before it repeats one, an upsampled one
repeats each pair as evenly as it can, and the draw depends on ``(seed, corpus, epoch)`` alone.

Tags (``<BT>``) and target-language tokens (``<2de>``) are SentencePiece control symbols: one id each, never
matched in text (a source that contains "<BT>" is text) and never decoded into it; they start the source.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt.config import CorpusConfig, DataConfig, SplitNames
from mt.data.readers import is_folder_name
from mt.data.tokenizer import language_token
from mt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """One corpus of the run, resolved.

    Attributes:
        name: unique among the run's corpora; names the cache, the logs and the validation scores.
        data: the complete config of this corpus alone (``corpora`` empty).
        weight: its sampling weight, if weights are given.
        tag: the token before each of its training sources, if any.
        valid: whether it is validated (its direction's validation set).
        field: where it is configured, for messages: ``data`` or ``data.corpora[i]``.
    """

    name: str
    data: DataConfig
    weight: float | None = None
    tag: str | None = None
    valid: bool = True
    field: str = "data"

    @property
    def direction(self) -> str:
        return f"{self.data.src_lang}-{self.data.tgt_lang}"


# The random streams of a mixture's epochs, apart by a constant each: numpy pads short seed lists with zeros, so
# [seed, corpus, cycle] and [seed, epoch] would otherwise overlap.
STREAM_DRAW, STREAM_TIES, STREAM_ORDER = 1, 2, 3


def corpora(cfg: DataConfig) -> list[Corpus]:
    """The run's corpora: ``cfg.corpora`` resolved against ``cfg``, or ``cfg`` itself when it lists none.

    Raises:
        ConfigError: two corpora of one name, two validated corpora of one direction, no validated corpus,
            or several target languages without ``data.lang_tokens``.
    """
    alone = dataclasses.replace(cfg, corpora=[], temperature=None, lang_tokens=False)
    if cfg.temperature is not None and len(cfg.corpora) < 2:
        _note_once(
            f"data.temperature={cfg.temperature} has no effect with one corpus: each epoch draws its every pair once "
            f"(temperature shares out the draws of several data.corpora)"
        )
    if len(cfg.corpora) == 1 and cfg.corpora[0].weight is not None:
        _note_once(
            f"data.corpora[0].weight={cfg.corpora[0].weight} has no effect with one corpus: each epoch draws its "
            f"every pair once (weights share out the draws of several data.corpora)"
        )
    if not cfg.corpora:
        return [Corpus(cfg.name, alone)]
    directions = Counter(_direction(cfg, entry) for entry in cfg.corpora if not entry.name)  # unnamed ones
    resolved: list[Corpus] = []
    seen: Counter = Counter()
    for i, entry in enumerate(cfg.corpora):
        data = _corpus_data(alone, entry, i)
        direction = f"{data.src_lang}-{data.tgt_lang}"
        if not entry.name:
            seen[direction] += 1
        name = entry.name or (direction if directions[direction] == 1 else f"{direction}.{seen[direction]}")
        resolved.append(
            Corpus(
                name,
                dataclasses.replace(data, name=f"{cfg.name}.{name}"),
                entry.weight,
                entry.tag,
                entry.valid,
                field=f"data.corpora[{i}]",
            )
        )
    names = Counter(c.name for c in resolved)
    if twice := sorted(n for n, k in names.items() if k > 1):
        holders = [
            f"data.corpora[{i}]" + ("" if entry.name else " (unnamed: its direction)")
            for i, (entry, corpus) in enumerate(zip(cfg.corpora, resolved))
            if corpus.name == twice[0]
        ]
        raise ConfigError(
            f"data.corpora: the name {twice[0]!r} names {' and '.join(holders)}; give each corpus a name of its own"
        )
    per_direction = Counter(c.direction for c in resolved if c.valid)
    if twice := sorted(d for d, k in per_direction.items() if k > 1):
        raise ConfigError(
            f"data.corpora: {per_direction[twice[0]]} corpora validate direction {twice[0]}: "
            f"set valid: false on all but one"
        )
    if not per_direction:
        raise ConfigError("data.corpora: every corpus has valid: false; validate at least one")
    targets = sorted({c.data.tgt_lang for c in resolved})
    if len(targets) > 1 and not cfg.lang_tokens:
        raise ConfigError(
            f"data.corpora translate into {', '.join(targets)}: set data.lang_tokens=true, so that each source "
            f"says which language to translate it into"
        )
    return resolved


def check_folders(corpus: Corpus, hint: str = "") -> None:
    """Refuse a corpus whose folder is not there (its ``path``, or a dataset folder given as ``hub_name``), naming
    the key that sets it (``data.path``, ``data.corpora[1].hub_name``): before its files are looked for. ``hint``:
    what to do instead, where the config is a checkpoint's record rather than the command line's."""
    data = corpus.data
    hint = f" ({hint})" if hint else ""
    if data.path and not Path(data.path).expanduser().is_dir():
        raise DataError(f"{corpus.field}.path={data.path}: no such directory{hint}")
    folder = None if data.path or not data.hub_name or not is_folder_name(data.hub_name) else Path(data.hub_name)
    if folder is not None and not folder.expanduser().is_dir():
        raise DataError(
            f"{corpus.field}.hub_name={data.hub_name}: no such folder (a dataset saved on disk was expected there)"
            + hint
        )


_noted: set[str] = set()


def _note_once(message: str) -> None:
    """Log ``message`` once per process: ``corpora`` is resolved several times in one run."""
    if message not in _noted:
        _noted.add(message)
        log.warning(message)


def _direction(cfg: DataConfig, entry: CorpusConfig) -> str:
    return f"{entry.src_lang or cfg.src_lang}-{entry.tgt_lang or cfg.tgt_lang}"


def _corpus_data(base: DataConfig, entry: CorpusConfig, index: int) -> DataConfig:
    changes: dict = {}
    for name in ("format", "hub_config", "src_lang", "tgt_lang"):
        if getattr(entry, name) is not None:
            changes[name] = getattr(entry, name)
    if entry.splits is not None:
        changes["splits"] = SplitNames(**dataclasses.asdict(entry.splits))  # its unset names filled by DataConfig
    if entry.path is not None or entry.hub_name is not None:  # another source: the base's is not inherited
        changes["path"] = entry.path
        changes["hub_name"] = entry.hub_name
        if entry.hub_config is None:
            changes["hub_config"] = None
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as error:
        raise ConfigError(f"data.corpora[{index}]: {error}") from None


def symbols(cfg: DataConfig) -> list[str]:
    """The control symbols the run's tokenizer needs: the target-language tokens (``data.lang_tokens``) and the
    corpora's tags, in a fixed order."""
    found = corpora(cfg)
    tokens = [language_token(lang) for lang in sorted({c.data.tgt_lang for c in found})] if cfg.lang_tokens else []
    return tokens + sorted({c.tag for c in found if c.tag})


def source_prefix(cfg: DataConfig, corpus: Corpus, split: str) -> list[str]:
    """The symbols before each source of ``corpus`` in ``split``: its target-language token (all splits), then
    its tag (the training split only: a model is validated and tested on untagged text)."""
    prefix = [language_token(corpus.data.tgt_lang)] if cfg.lang_tokens else []
    if corpus.tag and split == "train":
        prefix.append(corpus.tag)
    return prefix


# ---------------------------------------------------------------------------------------------
# Sampling


def draw_counts(sizes: list[int], *, weights: list[float] | None = None, temperature: float | None = None) -> list[int]:
    """Pairs each epoch draws from each corpus: ``round(p_i * sum(sizes))`` (largest remainders, so they add up
    to the total), at least one from each.

    ``p_i``: ``weights`` normalised; else ``n_i ** (1/temperature)`` normalised; else ``n_i / N``. Where that
    arithmetic overflows (a small temperature, huge weights) the shares are computed in log space instead, so any
    finite temperature > 0 works: as it tends to 0 the largest corpus (or the largest, equally) takes all the
    draws, and every other corpus its one; as it grows the shares tend to uniform. Where it does not overflow it
    is the arithmetic of earlier versions, so their epochs' draws, and resumes across versions, stay the same.

    Raises:
        ValueError: a corpus without pairs, or a weight or temperature that is not a finite number > 0.
    """
    sizes_array = np.asarray(sizes, dtype=np.float64)
    if (sizes_array <= 0).any():
        raise ValueError(f"corpus sizes {sizes}: expected every corpus to hold pairs")
    if weights is not None:
        shares = np.asarray(weights, dtype=np.float64)
        if not (np.isfinite(shares).all() and (shares > 0).all()):
            raise ValueError(f"corpus weights {weights}: expected finite numbers > 0")
        with np.errstate(over="ignore"):
            if not np.isfinite(shares.sum()):  # huge weights: their sum overflows
                shares = shares / shares.max()
    elif temperature is not None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature {temperature}: expected a finite number > 0")
        # n_i^(1/T) / max_j n_j^(1/T) = exp((log n_i - max_j log n_j) / T): the exponent is <= 0, so nothing
        # overflows; a tiny T sends it to -inf (a share of 0) for every corpus but the largest, never to NaN.
        with np.errstate(over="ignore"):
            shares = sizes_array ** (1.0 / temperature)
            if not np.isfinite(shares.sum()):
                logs = np.log(sizes_array)  # a subnormal T: -inf, as meant
                shares = np.exp((logs - logs.max()) / temperature)
    else:
        shares = sizes_array
    total = int(sizes_array.sum())
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    leftover = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return np.maximum(counts, 1).tolist()


def epoch_draw(size: int, count: int, *, seed: int, corpus: int, epoch: int) -> np.ndarray:
    """The ``count`` pairs (indices into the corpus) epoch ``epoch`` draws from a corpus of ``size`` pairs:
    items ``[epoch*count, (epoch+1)*count)`` of the stream of permutations seeded ``(seed, STREAM_DRAW, corpus,
    cycle)``."""
    start = epoch * count
    positions = np.arange(start, start + count, dtype=np.int64)
    cycles = positions // size
    out = np.empty(count, dtype=np.int64)
    for cycle in range(int(cycles[0]), int(cycles[-1]) + 1) if count else ():
        mask = cycles == cycle
        permutation = np.random.default_rng([seed, STREAM_DRAW, corpus, cycle]).permutation(size)
        out[mask] = permutation[positions[mask] - cycle * size]
    return out


def validated(cfg: DataConfig) -> list[Corpus]:
    """The corpora that are validated: one per direction, whose valid and test splits score that direction."""
    return [corpus for corpus in corpora(cfg) if corpus.valid]


def direction_corpus(cfg: DataConfig, *, src_lang: str | None = None, tgt_lang: str | None = None) -> Corpus:
    """The validated corpus of the direction ``src_lang``-``tgt_lang`` (either may be left out where only one
    direction fits): whose valid and test splits score that direction.

    Raises:
        ConfigError: no direction of the data fits, or several do.
    """
    scored = validated(cfg)
    fitting = [
        c
        for c in scored
        if (src_lang is None or c.data.src_lang == src_lang) and (tgt_lang is None or c.data.tgt_lang == tgt_lang)
    ]
    if len(fitting) == 1:
        return fitting[0]
    asked = " ".join(f"{k}={v}" for k, v in (("src_lang", src_lang), ("tgt_lang", tgt_lang)) if v) or "no direction"
    found = ", ".join(c.direction for c in scored)
    if not fitting:
        raise ConfigError(f"{asked}: the data {cfg.name!r} has the directions {found}")
    raise ConfigError(f"{asked}: the data {cfg.name!r} has the directions {found}; choose one with src_lang= tgt_lang=")
