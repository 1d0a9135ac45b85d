"""Memory and time of the loss at the vocabulary: the textbook loss over materialised logits against ``mt``'s
chunked one (``mt/training/loss.py``), alone and inside a whole training step.

Each measurement runs in a fresh subprocess, so peaks do not hide each other: the peak resident memory
(``ru_maxrss``) above what the process held once its inputs were made, and the median time of ``--repeats``
forward+backward passes.

- ``loss``: the loss alone, from decoder states (tokens x 512) and a (32k x 512) output layer, to the gradients
  of both (``--tokens 4096,32000``, ``--vocab 32000``): logits to the loss's gradient, as issue 18 asks.
- ``step``: a whole ``model=base`` training step (forward, loss, backward, AdamW) on a batch of that many target
  tokens (sentences of 32 subwords, source and target), with either loss.

Both build whole sentences of 32 tokens, so a size is rounded down to a multiple of 32 (at least 32), and the
table shows the tokens measured. Its ratio columns are chunked / textbook.

    python scripts/bench_loss.py                       # both kinds, the default sizes
    python scripts/bench_loss.py --kind loss --tokens 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SENTENCE = 32  # tokens a sentence, source and target: a batch is whole sentences


def measured_tokens(tokens: int) -> int:
    """The tokens a batch of whole sentences holds for a requested size: rounded down, at least one sentence."""
    return max(1, tokens // SENTENCE) * SENTENCE


def sizes(text: str) -> list[int]:
    """``--tokens``: comma-separated counts, each >= 1."""
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 4096,32000") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected counts >= 1")
    return values


def run_child(command: list[str], what: str) -> dict:
    """The measurement a child process prints as its last line on stdout. Its stderr is ours, so that its error
    reaches the user; a failed child stops the script, naming ``what`` it measured."""
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {what} failed (exit status {result.returncode}); its error is above")
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(kind: str, loss_name: str, tokens: int, vocab: int, repeats: int) -> dict:
    import torch.nn.functional as F

    from mt.config import ModelConfig
    from mt.model.transformer import Transformer
    from mt.training.loss import label_smoothed_nll, projected_label_smoothed_nll

    torch.manual_seed(0)
    length = SENTENCE
    rows = measured_tokens(tokens) // length
    target = torch.randint(4, vocab, (rows, length))

    def loss_of(hidden, weight, bias):
        if loss_name == "textbook":
            return label_smoothed_nll(F.linear(hidden, weight, bias), target, 0.1)[0]
        return projected_label_smoothed_nll(hidden, weight, bias, target, 0.1)[0]

    if kind == "loss":
        hidden = torch.randn(rows, length, 512, requires_grad=True)
        weight = (0.02 * torch.randn(vocab, 512)).requires_grad_()

        def run() -> None:
            loss = loss_of(hidden, weight, None)
            loss.backward()
            hidden.grad = weight.grad = None
    else:
        cfg = ModelConfig(d_model=512, n_heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048, dropout=0.1)
        model = Transformer(cfg, src_vocab_size=vocab, tgt_vocab_size=vocab)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        src = torch.randint(4, vocab, (rows, length))
        tgt_in = torch.randint(4, vocab, (rows, length))
        pad_mask = src == 0

        def run() -> None:
            hidden = model.decoder_states(src, pad_mask, tgt_in)
            loss_of(hidden, model.output.weight, model.output.bias).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    baseline = rss_peak_gib()  # before the first step: the step's peak (AdamW's new state too, alike for both)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "peak_gib": rss_peak_gib() - baseline,
        "seconds": statistics.median(times),
        "min": min(times),
        "max": max(times),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["loss", "step", "both"], default="both")
    parser.add_argument(
        "--tokens", type=sizes, default=None, help="comma-separated target tokens (loss: 4096,32000; step: 4096,12000)"
    )
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "LOSS", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected >= 1")
    if args.vocab < 5:
        parser.error(f"--vocab {args.vocab}: expected >= 5 (ids 0-3 are special tokens)")
    if args.child:
        kind, loss_name, tokens = args.child
        print(json.dumps(measure(kind, loss_name, int(tokens), args.vocab, args.repeats)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, vocabulary {args.vocab}, fp32 on CPU")
    print(
        "| measured | target tokens | textbook peak GiB | chunked peak GiB | ratio | textbook s | chunked s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    kinds = ["loss", "step"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        for tokens in map(measured_tokens, args.tokens or ([4096, 32000] if kind == "loss" else [4096, 12000])):
            found = {}
            for loss_name in ("textbook", "chunked"):
                command = [sys.executable, __file__, "--child", kind, loss_name, str(tokens)]
                command += ["--vocab", str(args.vocab), "--repeats", str(args.repeats)]
                found[loss_name] = run_child(command, f"the {loss_name} {kind} measurement at {tokens} tokens")
            a, b = found["textbook"], found["chunked"]
            what = "loss alone (states to gradients)" if kind == "loss" else "model=base step"
            print(
                f"| {what} | {tokens:,} | {a['peak_gib']:.2f} | {b['peak_gib']:.2f} | "
                f"{b['peak_gib'] / max(a['peak_gib'], 1e-9):.2f} | "
                f"{a['seconds']:.2f} ({a['min']:.2f}-{a['max']:.2f}) | "
                f"{b['seconds']:.2f} ({b['min']:.2f}-{b['max']:.2f}) | {b['seconds'] / a['seconds']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
