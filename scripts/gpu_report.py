"""Figures for scripts/gpu_check.sh: training speed and model FLOPs utilisation of a run, and decoding
speed (fp32 and bf16 autocast, greedy and beam) of a checkpoint on one device.

    python scripts/gpu_report.py train RUN_DIR [--peak-tflops 989]
    python scripts/gpu_report.py decode CHECKPOINT SOURCE REFERENCE [--sentences 1000] [--beams 1 5]

MFU counts the weight FLOPs of a target token through the whole model, forward and backward (6 per
multiply-add of a weight), with the source as long as the target (``mt.training.throughput``), and divides
the measured rate by the card's dense bf16 peak. Attention scores (about 2% at these lengths) are not counted.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from mt.errors import USER_ERRORS

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, keyed by the words of the name
# torch.cuda.get_device_name gives: "NVIDIA H100 80GB HBM3" is the SXM5 card, the PCIe and NVL cards are slower.
PEAK_BF16_TFLOPS = {
    "H100 80GB HBM3": 989.0,
    "H100 SXM": 989.0,
    "H100 SXM5": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200 NVL": 835.0,
    "H200": 989.0,
    "A100": 312.0,  # SXM4 and PCIe alike
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "L4": 121.0,
}


def card_peak_tflops(name: str) -> float | None:
    """The peak of the most specific key whose words occur, whole and in order, among the name's words (split at
    spaces and hyphens, any case): "L4" is not the L40's, "A10" not the A100's, "H200" not the H200 NVL's."""
    words = re.split(r"[\s-]+", name.upper())
    for key in sorted(PEAK_BF16_TFLOPS, key=lambda key: -len(key.split())):
        wanted = key.upper().split()
        if any(words[i : i + len(wanted)] == wanted for i in range(len(words))):
            return PEAK_BF16_TFLOPS[key]
    return None


def train_report(run_dir: Path, peak_tflops: float | None, devices: int = 1) -> None:
    """``devices``: the GPUs the run trained on (its logged rate is all ranks' tokens: MFU is per card)."""
    from mt.training.plots import read_metric_rows

    if not (run_dir / "csv/metrics.csv").is_file():
        raise SystemExit(f"{run_dir}: no csv/metrics.csv (too few steps for a logged row?)")
    rows = read_metric_rows(run_dir / "csv/metrics.csv", "train/tgt_tokens_per_s")
    rates = [row["train/tgt_tokens_per_s"] for row in rows]
    if not rates:
        raise SystemExit(f"{run_dir}/csv/metrics.csv: no train/tgt_tokens_per_s rows")
    from mt.model.checkpoint import read_checkpoint
    from mt.training.throughput import flops_per_target_token

    ckpt = read_checkpoint(run_dir / "checkpoints/last.ckpt")
    hparams = ckpt["hyper_parameters"]
    flops_per_tgt_token = flops_per_target_token(hparams["model"], hparams["tgt_vocab_size"])
    steady = rates[len(rates) // 5 :] or rates  # the first fifth holds warm-up (allocator, kernels, compile)
    rate = statistics.median(steady)
    tflops = flops_per_tgt_token * rate / 1e12
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops or card_peak_tflops(device)
    cards = f"{devices} x " if devices > 1 else ""
    mfu = (
        f", MFU {tflops / (peak * devices):.1%} of {cards}{peak:.0f} TFLOP/s ({device})"
        if peak
        else f" ({device}: peak unknown)"
    )
    print(
        f"train {run_dir.name}: {ckpt['global_step']} steps, median {rate:,.0f} target tokens/s "
        f"(min {min(steady):,.0f}, max {max(steady):,.0f}), {tflops:.1f} TFLOP/s{mfu}",
        flush=True,
    )


def decode_report(checkpoint: Path, source: Path, reference: Path, sentences: int, beams: list[int]) -> None:
    from mt.config import SearchConfig
    from mt.data.readers import read_lines
    from mt.decode.metrics import scores
    from mt.decode.translator import decode_ids
    from mt.device import best_device
    from mt.model.checkpoint import load_translator

    logging.getLogger("sacrebleu").setLevel(logging.ERROR)  # synthetic references end in a spaced period
    device = best_device()
    model, loaded = load_translator(checkpoint)
    model = model.to(device)
    src_text, ref_text = read_lines(str(source))[:sentences], read_lines(str(reference))[:sentences]
    src = loaded.tokenizer.encode_src(src_text)
    print(f"decode {len(src)} sentences on {device}: sentences/s, output tokens/s, BLEU", flush=True)
    for bf16 in (False, True):
        for beam in beams:
            for source_tokens in (8000, 32000):  # per batch, as in the first H200 run (max_tokens counts x beam)
                search = SearchConfig(beam=beam, max_tokens=source_tokens * beam)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    # warm-up: kernels, allocator
                    decode_ids(model, src[:64], search, device=device, return_scores=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    hyps = decode_ids(model, src, search, device=device, return_scores=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                tokens = sum(len(n[0].tokens) + 1 for n in hyps)
                bleu = scores(loaded.tokenizer.decode_tgt([n[0].tokens for n in hyps]), [ref_text])["bleu"]
                name = "bfloat16" if bf16 else "float32"
                print(
                    f"  {name:8s} beam {beam}  {source_tokens:5d} source tokens a batch: "
                    f"{len(src) / seconds:8.1f} sent/s "
                    f"{tokens / seconds:9.0f} tok/s  BLEU {bleu:.2f}",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("run_dir", type=Path)
    train.add_argument("--peak-tflops", type=float, default=None)
    train.add_argument("--devices", type=int, default=1, help="GPUs the run trained on (DDP): MFU is per card")
    decode = commands.add_parser("decode")
    decode.add_argument("checkpoint", type=Path)
    decode.add_argument("source", type=Path)
    decode.add_argument("reference", type=Path)
    decode.add_argument("--sentences", type=int, default=1000)
    decode.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.devices < 1:
            train.error(f"--devices {args.devices}: expected >= 1")
        if args.peak_tflops is not None and not args.peak_tflops > 0:
            train.error(f"--peak-tflops {args.peak_tflops}: expected a number > 0")
    else:
        if args.sentences < 1:
            decode.error(f"--sentences {args.sentences}: expected >= 1")
        if min(args.beams) < 1:
            decode.error(f"--beams {' '.join(map(str, args.beams))}: expected beam sizes >= 1")
    try:
        if args.command == "train":
            train_report(args.run_dir, args.peak_tflops, args.devices)
        else:
            decode_report(args.checkpoint, args.source, args.reference, args.sentences, args.beams)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
