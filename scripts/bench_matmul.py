"""Matrix products at the small model's shapes, fp32 against bf16: does this CPU multiply bf16 natively?

The products a training step of ``model=small`` (d 256, FFN 1024) on 1,024-token batches makes: the
attention projections (tokens x 256 x 256), the feed-forward layers (tokens x 256 x 1024 and back) and the
output layer over a 4k vocabulary. Each is timed in rounds that alternate the two dtypes; reported are GFLOP/s
(median, min-max over rounds) and the bf16/fp32 ratio per round. On a CPU with AVX-512 BF16 or AMX the ratio
is ~2-3; on AVX2 bf16 is emulated and the ratio falls below 1 (``trainer.precision=auto`` follows the same
flags: mt.device.resolve_precision).

    python scripts/bench_matmul.py
    python scripts/bench_matmul.py --tokens 4096 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mt.device import native_bf16_flags  # noqa: E402


def gflops(a: torch.Tensor, b: torch.Tensor, calls: int) -> float:
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(calls):
        a @ b
    seconds = (time.perf_counter() - start) / calls
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e9


def cell(values: list[float], digits: int) -> str:
    """Median (min-max)."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="rows: the tokens of a batch")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--calls", type=int, default=30, help="products timed per shape, dtype and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for flag in ("tokens", "d_model", "d_ff", "vocab", "calls", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    torch.manual_seed(0)
    m, d, f, v = args.tokens, args.d_model, args.d_ff, args.vocab
    shapes = {"attention projection": (m, d, d), "FFN in": (m, d, f), "FFN out": (m, f, d), "output layer": (m, d, v)}
    flags = native_bf16_flags()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16 flags: {', '.join(flags) or 'none'}; "
        f"{args.rounds} rounds x {args.calls} products\n"
    )
    print(f"{'product':<22}{'M x K x N':>20}{'fp32 GFLOP/s':>22}{'bf16 GFLOP/s':>22}{'bf16 / fp32':>24}")
    for name, (rows, inner, cols) in shapes.items():
        a, b = torch.randn(rows, inner), torch.randn(inner, cols)
        pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
        rates: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
        for r in range(args.rounds):
            order = list(pairs) if r % 2 == 0 else list(reversed(pairs))
            for dtype in order:
                rates[dtype].append(gflops(*pairs[dtype], args.calls))
        ratios = [b16 / f32 for f32, b16 in zip(rates[torch.float32], rates[torch.bfloat16])]
        print(
            f"{name:<22}{f'{rows} x {inner} x {cols}':>20}{cell(rates[torch.float32], 0):>22}"
            f"{cell(rates[torch.bfloat16], 0):>22}{cell(ratios, 2):>24}"
        )


if __name__ == "__main__":
    main()
