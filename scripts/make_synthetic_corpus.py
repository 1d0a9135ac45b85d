"""Write a synthetic parallel corpus of WMT-like size and shape, for preprocessing benchmarks.

Sentences are made-up German-like (source) and English-like (target) words drawn from a Zipfian
vocabulary of some tens of thousands of words; lengths follow a log-normal law (mean about 25
words, a long tail past 100), the target length tracks the source length, and a few pairs are
empty or badly misaligned in length so that cleaning has work to do. Text is built with numpy
(no Python loop over words or sentences) and written with gzip level 1.

    python scripts/make_synthetic_corpus.py --pairs 4500000 --out /tmp/synth4.5m

writes ``train.de.gz``/``train.en.gz`` and small ``valid`` and ``test`` splits.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

CHUNK = 50_000  # sentences generated at once
VALID_TEST_PAIRS = 3_000

# Syllables of the two made-up languages (UTF-8 words; umlauts give multi-byte characters).
DE_ONSETS = "b d f g h k l m n p r s t w z sch st ch pf kr tr br gr fl spr".split()
DE_NUCLEI = "a e i o u ei au ie ä ö ü eu".split()
DE_CODAS = ["", "", "n", "r", "s", "t", "ch", "ng", "st", "ß", "lt", "nd", "rk"]
EN_ONSETS = "b c d f g h j k l m n p r s t v w y th sh ch st tr br cl pl".split()
EN_NUCLEI = "a e i o u ea ee oo ai ou ow".split()
EN_CODAS = ["", "", "n", "r", "s", "t", "ck", "ng", "st", "ll", "nd", "rk", "ght"]
PUNCTUATION = [",", ",", ",", "(", ")", ":", '"', "-"]


def make_vocabulary(
    rng: np.random.Generator, size: int, onsets: list[str], nuclei: list[str], codas: list[str]
) -> list[str]:
    """``size`` distinct made-up words (shorter ones first, so frequent words are short), with punctuation."""
    words: list[str] = list(PUNCTUATION)
    seen = set(words)
    while len(words) < size:
        syllables = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.4, 0.25, 0.1]))
        word = "".join(
            onsets[rng.integers(len(onsets))] + nuclei[rng.integers(len(nuclei))] + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    punctuation, rest = words[: len(PUNCTUATION)], words[len(PUNCTUATION) :]
    rest.sort(key=len)  # stable: random order within a length
    # Punctuation among the most frequent tokens, as in real text.
    return rest[:2] + punctuation + rest[2:]


class Language:
    """A vocabulary as flat UTF-8 bytes (each word followed by a space) and a Zipfian sampler."""

    def __init__(self, words: list[str], exponent: float) -> None:
        encoded = [w.encode("utf-8") + b" " for w in words] + [b".\n", b"\n"]
        self.end_of_sentence, self.end_of_empty = len(words), len(words) + 1
        self.lengths = np.array([len(w) for w in encoded], dtype=np.int64)
        self.starts = np.zeros(len(encoded), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        self.bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        weights = 1.0 / np.arange(1, len(words) + 1) ** exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(count), side="right").astype(np.int64)

    def render(self, rng: np.random.Generator, sentence_lengths: np.ndarray) -> bytes:
        """Sentences of the given word counts: capitalised, space-separated, ending with " .\\n"."""
        nonempty = sentence_lengths > 0
        ends = np.cumsum(sentence_lengths)
        terminators = np.where(nonempty, self.end_of_sentence, self.end_of_empty)
        # Word ids with a terminator after each sentence (np.insert keeps the order of equal positions).
        ids = np.insert(self.sample(rng, int(ends[-1])), ends, terminators)
        # Gather the chosen entries' bytes into one buffer (a vectorised ragged gather).
        lengths = self.lengths[ids]
        out_ends = np.cumsum(lengths)
        out_starts = out_ends - lengths
        source = np.arange(int(out_ends[-1]), dtype=np.int64) + np.repeat(self.starts[ids] - out_starts, lengths)
        text = self.bytes[source]
        # Capitalise each sentence's first letter (ASCII initials only).
        first = out_starts[(ends - sentence_lengths + np.arange(len(sentence_lengths)))[nonempty]]
        lower = (text[first] >= ord("a")) & (text[first] <= ord("z"))
        text[first[lower]] -= 32
        return text.tobytes()


def sentence_lengths(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and target word counts: log-normal (mean ~25, long tail), target ~ source, some outliers."""
    src = np.clip(np.rint(rng.lognormal(np.log(21.0), 0.58, count)), 1, 400).astype(np.int64)
    ratio = rng.lognormal(np.log(1.05), 0.12, count)
    tgt = np.clip(np.rint(src * ratio), 1, 400).astype(np.int64)
    noise = rng.random(count)
    tgt[noise < 0.003] = rng.integers(1, 150, int((noise < 0.003).sum()))  # misaligned lengths
    src[(noise >= 0.003) & (noise < 0.004)] = 0  # empty source lines
    tgt[(noise >= 0.004) & (noise < 0.005)] = 0  # empty target lines
    return src, tgt


def write_split(
    directory: Path, stem: str, pairs: int, de: Language, en: Language, rng: np.random.Generator, *, progress: bool
) -> None:
    with (
        gzip.open(directory / f"{stem}.de.gz", "wb", compresslevel=1) as src_file,
        gzip.open(directory / f"{stem}.en.gz", "wb", compresslevel=1) as tgt_file,
        tqdm(total=pairs, desc=stem, unit="pair", unit_scale=True, disable=not progress) as bar,
    ):
        for start in range(0, pairs, CHUNK):
            count = min(CHUNK, pairs - start)
            src_lengths, tgt_lengths = sentence_lengths(rng, count)
            src_file.write(de.render(rng, src_lengths))
            tgt_file.write(en.render(rng, tgt_lengths))
            bar.update(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4_500_000, help="training pairs (default: 4.5M, WMT14 en-de)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--valid-pairs", type=int, default=VALID_TEST_PAIRS, help="pairs in valid and in test")
    parser.add_argument("--de-vocab", type=int, default=40_000, help="distinct source words")
    parser.add_argument("--en-vocab", type=int, default=30_000, help="distinct target words")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    de = Language(make_vocabulary(rng, args.de_vocab, DE_ONSETS, DE_NUCLEI, DE_CODAS), exponent=1.05)
    en = Language(make_vocabulary(rng, args.en_vocab, EN_ONSETS, EN_NUCLEI, EN_CODAS), exponent=1.05)
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, pairs in (("train", args.pairs), ("valid", args.valid_pairs), ("test", args.valid_pairs)):
        write_split(args.out, stem, pairs, de, en, rng, progress=not args.quiet and stem == "train")
    print(f"wrote {args.pairs:,} training pairs to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
