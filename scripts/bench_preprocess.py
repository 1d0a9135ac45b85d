"""Benchmark the large-corpus preprocessing path (``mt.data.preprocess``) on a synthetic WMT-sized corpus.

Stages, each timed, with peak resident memory: "peak RSS" is this process's during the stage
(``RUSAGE_SELF``, reset before each stage through ``/proc/self/clear_refs``), "children" the
largest finished child process so far (``RUSAGE_CHILDREN``: the ``datasets.map`` workers, the new
interpreter of stage 7):

1. raw: the training split streamed from the ``.gz`` files into the raw Arrow cache;
2. sample: a reservoir sample of ``--input-sentence-size`` pairs (``sample_sentences``);
3. spm: SentencePiece trained on the sample (``train_tokenizer``, joint vocabulary);
4. encode: ``prepare_split_arrow`` on the training split, cold (encoding, cleaning, ``.npy`` files);
5. cache hit: the same call again (memory-maps the cached arrays);
6. first batch: ``TokenBatchSampler`` over the cached lengths, and the first batch collated;
7. new run: stages 5-6 in a new interpreter, imports included (a later training run).

The targets (on 2 cores): stages 1-4 within 10 minutes, every process within 2 GiB resident, and
stages 5-6, or 7, (the data side of the first training step once the cache exists) within 30 s.

    python scripts/make_synthetic_corpus.py --pairs 4500000 --out /tmp/synth4.5m
    python scripts/bench_preprocess.py --data /tmp/synth4.5m --num-proc 2

If ``--data`` holds no corpus yet, ``--pairs`` synthetic pairs are generated there first (untimed).
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mt.config import DataConfig, from_dict  # noqa: E402
from mt.data.batching import PairDataset, TokenBatchSampler  # noqa: E402
from mt.data.preprocess import cache_folder, prepare_split_arrow, raw_dataset, sample_sentences  # noqa: E402
from mt.data.tokenizer import train_tokenizer  # noqa: E402
from mt.errors import USER_ERRORS  # noqa: E402

GIB = 1 << 30
TARGET_SECONDS = 600.0
TARGET_RSS = 2 * GIB
TARGET_FIRST_BATCH = 30.0

NEW_RUN = """
import sys
sys.path.insert(0, {root!r})
from mt.data.batching import PairDataset, TokenBatchSampler
from mt.data.preprocess import load_cached
corpus = load_cached({folder!r})
sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, {max_tokens}, shuffle=True, seed={seed})
sampler.padding_share()
dataset = PairDataset(corpus)
PairDataset.collate([dataset[i] for i in next(iter(sampler))])
"""


def peak_rss() -> tuple[int, int]:
    """Peak resident bytes of this process (since the last reset) and of the largest finished child."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return own, children


def reset_peak_rss() -> None:
    """Start a new peak for this process (Linux: ``/proc/self/clear_refs`` 5); no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def gib(size: int) -> str:
    return f"{size / GIB:.2f}"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int | None, int, int]] = []

    def stage(self, name: str, pairs: int | None, run, *args, **kwargs):
        reset_peak_rss()
        start = time.perf_counter()
        result = run(*args, **kwargs)
        seconds = time.perf_counter() - start
        own, children = peak_rss()
        self.rows.append((name, seconds, pairs, own, children))
        print(f"[{name}] {seconds:.1f} s", flush=True)
        return result

    def seconds(self, *names: str) -> float:
        return sum(row[1] for row in self.rows if row[0] in names)

    def peak(self) -> int:
        return max(max(row[3], row[4]) for row in self.rows)

    def print(self) -> None:
        header = f"{'stage':<14} {'seconds':>9} {'pairs/s':>11} {'peak RSS GiB':>13} {'children GiB':>13}"
        print(header)
        print("-" * len(header))
        for name, seconds, pairs, own, children in self.rows:
            rate = f"{pairs / seconds:,.0f}" if pairs and seconds > 0 else "-"
            print(f"{name:<14} {seconds:>9.1f} {rate:>11} {gib(own):>13} {gib(children):>13}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="corpus directory (train/valid/test .de.gz/.en.gz)")
    parser.add_argument("--pairs", type=int, default=4_500_000, help="pairs to generate if --data holds no corpus")
    parser.add_argument("--num-proc", type=int, default=2, help="datasets.map processes")
    parser.add_argument("--vocab", type=int, default=32_000, help="SentencePiece vocabulary (joint)")
    parser.add_argument(
        "--input-sentence-size",
        type=int,
        default=200_000,
        help="pairs sampled for SentencePiece training (default 200k: 1M pairs need about 4.5 GiB and 6 minutes)",
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (first-batch stage)")
    parser.add_argument("--cache", type=Path, help="cache directory (default: a temporary one, removed after)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for flag in ("pairs", "num_proc", "vocab", "input_sentence_size", "max_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.cache and args.cache.exists() and (not args.cache.is_dir() or any(args.cache.iterdir())):
        parser.error(f"--cache {args.cache} is not an empty directory: the first encoding must be cold")
    try:
        return bench(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "train.de.gz").is_file():
        generator = Path(__file__).with_name("make_synthetic_corpus.py")
        subprocess.run(
            [sys.executable, str(generator), "--pairs", str(args.pairs), "--out", str(args.data)], check=True
        )
    cache = args.cache or Path(tempfile.mkdtemp(prefix="mt-bench-"))
    cfg = from_dict(DataConfig, {"name": "synthetic", "path": str(args.data), "max_tokens": args.max_tokens})
    table = Table()
    try:
        raw = table.stage("raw", None, raw_dataset, cfg, "train", cache_dir=cache)
        pairs = len(raw)
        table.rows[-1] = (table.rows[-1][0], table.rows[-1][1], pairs, *table.rows[-1][3:])
        del raw
        sample_size = args.input_sentence_size
        src, tgt = table.stage("sample", pairs, sample_sentences, cfg, "train", sample_size, args.seed, cache_dir=cache)
        tokenizer = table.stage(
            "spm", len(src), train_tokenizer, src, tgt, vocab_size=args.vocab, input_sentence_size=sample_size
        )
        del src, tgt
        prepare = partial(prepare_split_arrow, cfg, "train", tokenizer, cache_dir=cache, num_proc=args.num_proc)
        table.stage("encode", pairs, prepare)
        corpus = table.stage("cache hit", pairs, prepare)

        def first_batch():
            sampler = TokenBatchSampler(
                corpus.src_lengths, corpus.tgt_lengths, args.max_tokens, shuffle=True, seed=args.seed
            )
            sampler.padding_share()  # the datamodule logs it when it builds the training loader
            dataset = PairDataset(corpus)
            return PairDataset.collate([dataset[i] for i in next(iter(sampler))])

        batch = table.stage("first batch", len(corpus), first_batch)
        # A later run: a new interpreter (imports included) memory-maps the cache and collates a batch.
        folder = cache_folder(cfg, "train", tokenizer, cache)
        code = NEW_RUN.format(root=str(ROOT), folder=str(folder), max_tokens=args.max_tokens, seed=args.seed)
        table.stage("new run", len(corpus), subprocess.run, [sys.executable, "-c", code], check=True)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)

    print()
    print(
        f"corpus: {pairs:,} pairs, {len(corpus):,} after cleaning, {int(corpus.src_offsets[-1]):,} + "
        f"{int(corpus.tgt_offsets[-1]):,} tokens ({corpus.src_tokens.dtype}); vocabulary {tokenizer.src_vocab_size}; "
        f"SentencePiece sample {args.input_sentence_size:,} pairs; num_proc {args.num_proc}; "
        f"first batch {tuple(batch.src_ids.shape)} / {tuple(batch.tgt_in.shape)}"
    )
    table.print()
    total = table.seconds("raw", "sample", "spm", "encode")
    first = max(table.seconds("cache hit", "first batch"), table.seconds("new run"))
    peak = table.peak()
    checks = [
        (
            f"preprocessing (raw + sample + spm + encode) {total:.0f} s <= {TARGET_SECONDS:.0f} s",
            total <= TARGET_SECONDS,
        ),
        (f"peak RSS {gib(peak)} GiB <= {gib(TARGET_RSS)} GiB (any process)", peak <= TARGET_RSS),
        (
            f"first batch after the cache exists {first:.1f} s <= {TARGET_FIRST_BATCH:.0f} s",
            first <= TARGET_FIRST_BATCH,
        ),
    ]
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
