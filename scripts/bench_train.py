"""Training speed: ``mt`` under Lightning against a plain PyTorch loop and Hugging Face Marian, one process.

The same model shape for all three (d 256, 4 heads, 3+3 layers, FFN 1024, ReLU, joint vocabulary
with tied embeddings, dropout 0.1), the same Multi30k training pairs, fp32 on CPU, in rounds that
alternate the three, so that machine noise hits them alike:

- ``mt``: the ``TranslationModule`` under ``lightning.Trainer`` as ``mt.train`` builds it (logging
  every step to CSV, progress bar off), on ``max_tokens`` batches of length-sorted pairs;
- ``torch``: a minimal loop (forward, the same label-smoothed loss, backward, clip, AdamW, schedule)
  over the identical batches: the floor of what torch alone does;
- ``hf``: ``transformers.MarianMTModel`` built from a config of the same shape (random init), on
  batches of a fixed number of sentences in shuffled order, padded, as its users batch (the count
  chosen so that a batch holds about as many real target tokens as ``mt``'s).

Reported per variant: median ms per step (min-max over rounds), target tokens/s counting every
padded position and counting real tokens only, and the peak resident memory seen during its steps;
then the ratios the targets are stated in (mt/torch on identical batches, mt/hf in real tokens/s),
each taken within a round and reported as the median (min-max) over rounds: the rounds alternate
the order (mt first, then last), and this shared machine's speed drifts between minutes, so a
paired ratio is steadier than a ratio of two medians.

    python scripts/bench_train.py --data ../shared/data/multi30k            # MT_DATA_DIR by default
    python scripts/bench_train.py --steps 20 --rounds 3 --max-tokens 4096
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from mt.config import DataConfig, TokenizerConfig, from_dict  # noqa: E402
from mt.data.batching import Batch, TokenBatchSampler, collate  # noqa: E402
from mt.data.tokenizer import PAD_ID  # noqa: E402
from mt.training.datamodule import TranslationDataModule  # noqa: E402
from mt.training.loss import label_smoothed_nll  # noqa: E402
from mt.training.module import TranslationModule  # noqa: E402
from mt.training.schedules import WarmupDecay  # noqa: E402

MODEL = {"d_model": 256, "n_heads": 4, "encoder_layers": 3, "decoder_layers": 3, "d_ff": 1024, "dropout": 0.1}
OPTIM = {"lr": 7e-4, "warmup_steps": 400, "label_smoothing": 0.1, "clip_norm": 1.0}


def current_rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class Meter:
    """Seconds per step and peak RSS over the measured steps of one round."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.step = 0
        self.start = 0.0
        self.seconds = 0.0
        self.peak_rss = 0.0

    def step_done(self) -> None:
        self.step += 1
        if self.step == self.warmup:
            self.start = time.perf_counter()
        elif self.step > self.warmup:
            self.seconds = time.perf_counter() - self.start
            self.peak_rss = max(self.peak_rss, current_rss_gib())


def batch_tokens(batches: list[Batch]) -> tuple[int, int]:
    """(all target positions, real target tokens) of ``batches``."""
    padded = sum(b.tgt_out.numel() for b in batches)
    real = sum(int((b.tgt_out != PAD_ID).sum()) for b in batches)
    return padded, real


# -- the three variants --------------------------------------------------------------------------


def run_mt(module: TranslationModule, batches: list[Batch], warmup: int, log_dir: str) -> Meter:
    meter = Meter(warmup)

    class Timer(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            meter.step_done()

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(batches),
        logger=CSVLogger(log_dir, name="bench"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=None,  # the module clips (mt.train leaves Lightning's clipping off, except under fp16)
        use_distributed_sampler=False,
        callbacks=[Timer()],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=None))
    return meter


def adamw_with_schedule(model: torch.nn.Module):
    """The optimizer and schedule the TranslationModule configures (AdamW, inverse-sqrt warmup)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=OPTIM["lr"], betas=(0.9, 0.98), eps=1e-9)
    return optimizer, WarmupDecay(optimizer, schedule="inverse_sqrt", warmup_steps=OPTIM["warmup_steps"])


def run_torch(model: torch.nn.Module, optimizer, scheduler, batches: list[Batch], warmup: int) -> Meter:
    meter = Meter(warmup)
    model.train()
    for batch in batches:
        logits = model(batch.src_ids, batch.src_pad_mask, batch.tgt_in)
        loss_sum, _ = label_smoothed_nll(logits, batch.tgt_out, OPTIM["label_smoothing"])
        loss = loss_sum / batch.num_tgt_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip_norm"])
        optimizer.step()
        scheduler.step()
        meter.step_done()
    return meter


def hf_model(vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=MODEL["d_model"],
        encoder_layers=MODEL["encoder_layers"],
        decoder_layers=MODEL["decoder_layers"],
        encoder_attention_heads=MODEL["n_heads"],
        decoder_attention_heads=MODEL["n_heads"],
        encoder_ffn_dim=MODEL["d_ff"],
        decoder_ffn_dim=MODEL["d_ff"],
        activation_function="relu",
        dropout=MODEL["dropout"],
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        eos_token_id=3,
        decoder_start_token_id=2,
    )
    return MarianMTModel(config)


def run_hf(model, optimizer, scheduler, batches: list[dict], warmup: int) -> Meter:
    meter = Meter(warmup)
    model.train()
    for batch in batches:
        loss = model(**batch).loss  # mean cross-entropy over the label tokens (-100 = ignored)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip_norm"])
        optimizer.step()
        scheduler.step()
        meter.step_done()
    return meter


# -- data ------------------------------------------------------------------------------------------


def load_pairs(data_dir: Path, work_dir: Path, vocab_size: int):
    """The Multi30k training split encoded with a joint SentencePiece vocabulary (trained once into work_dir)."""
    data = from_dict(DataConfig, {"name": "multi30k", "path": str(data_dir), "splits": {"valid": "val"}})
    tokenizer_cfg = from_dict(TokenizerConfig, {"vocab_size": vocab_size})
    datamodule = TranslationDataModule(data, tokenizer_cfg, run_dir=work_dir, seed=1)
    datamodule.setup("fit")
    return datamodule.train_corpus, datamodule.tokenizer


def mt_batches(corpus, max_tokens: int, count: int, seed: int) -> list[Batch]:
    sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, max_tokens, shuffle=True, seed=seed)
    chosen = sampler.all_batches()[:count]
    return [collate([corpus.src(i) for i in b], [corpus.tgt(i) for i in b], b.tolist()) for b in chosen]


def hf_batches(corpus, sentences: int, count: int, seed: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(corpus))
    out = []
    for k in range(count):
        ids = order[k * sentences : (k + 1) * sentences].tolist()
        batch = collate([corpus.src(i) for i in ids], [corpus.tgt(i) for i in ids], ids)
        labels = batch.tgt_out.masked_fill(batch.tgt_out == PAD_ID, -100)
        out.append(
            {
                "input_ids": batch.src_ids,
                "attention_mask": (~batch.src_pad_mask).long(),
                "decoder_input_ids": batch.tgt_in,
                "decoder_attention_mask": (batch.tgt_in != PAD_ID).long(),
                "labels": labels,
                "_tgt_out": batch.tgt_out,
            }
        )
    return out


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MT_DATA_DIR"), help="Multi30k directory")
    parser.add_argument("--steps", type=int, default=30, help="measured steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps at the start of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not args.data:
        sys.exit("error: pass --data DIR or set MT_DATA_DIR (the Multi30k files)")
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(1, verbose=False)

    work = Path(tempfile.mkdtemp(prefix="mt-bench-train-"))
    corpus, tokenizer = load_pairs(Path(args.data), work, args.vocab)
    per_round = args.warmup + args.steps
    ours = mt_batches(corpus, args.max_tokens, per_round * args.rounds, seed=1)
    real_per_batch = batch_tokens(ours)[1] / len(ours)
    mean_tgt = float(np.mean(corpus.tgt_lengths)) + 1
    sentences = max(1, round(real_per_batch / mean_tgt))  # HF batches of a fixed sentence count, same real tokens
    theirs = hf_batches(corpus, sentences, per_round * args.rounds, seed=1)

    def new_module() -> TranslationModule:  # the same initial weights for mt and the plain loop
        torch.manual_seed(0)
        vocab = {"src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}
        return TranslationModule(MODEL, OPTIM, {}, {"decode": "none"}, **vocab)

    module = new_module()
    plain = new_module().model
    plain_opt, plain_sched = adamw_with_schedule(plain)
    torch.manual_seed(0)
    hf = hf_model(tokenizer.tgt_vocab_size)
    hf_opt, hf_sched = adamw_with_schedule(hf)
    params = {
        "mt": sum(p.numel() for p in module.parameters()),
        "hf": sum(p.numel() for p in hf.parameters() if p.requires_grad),
    }

    results: dict[str, list[tuple[float, float, float, float]]] = {"mt": [], "torch": [], "hf": []}
    for r in range(args.rounds):
        ours_round = ours[r * per_round : (r + 1) * per_round]
        theirs_round = theirs[r * per_round : (r + 1) * per_round]
        measured_ours = batch_tokens(ours_round[args.warmup :])
        hf_measured = theirs_round[args.warmup :]
        measured_hf = (
            sum(b["_tgt_out"].numel() for b in hf_measured),
            sum(int((b["_tgt_out"] != PAD_ID).sum()) for b in hf_measured),
        )
        hf_inputs = [{k: v for k, v in b.items() if k != "_tgt_out"} for b in theirs_round]
        for name in ("mt", "torch", "hf") if r % 2 == 0 else ("hf", "torch", "mt"):
            if name == "mt":
                meter = run_mt(module, ours_round, args.warmup, str(work / "logs"))
                tokens = measured_ours
            elif name == "torch":
                meter = run_torch(plain, plain_opt, plain_sched, ours_round, args.warmup)
                tokens = measured_ours
            else:
                meter = run_hf(hf, hf_opt, hf_sched, hf_inputs, args.warmup)
                tokens = measured_hf
            results[name].append(
                (
                    1000 * meter.seconds / args.steps,
                    tokens[0] / meter.seconds,
                    tokens[1] / meter.seconds,
                    meter.peak_rss,
                )
            )
            print(f"round {r + 1} {name:5s} {results[name][-1][0]:7.1f} ms/step", file=sys.stderr, flush=True)

    print(
        f"\nMulti30k train, {args.rounds} rounds x {args.steps} steps (+{args.warmup} warm-up), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; mt/torch batches: max_tokens={args.max_tokens} "
        f"({real_per_batch:.0f} real target tokens each); hf batches: {sentences} sentences; parameters: "
        f"mt {params['mt'] / 1e6:.2f}M, hf {params['hf'] / 1e6:.2f}M\n"
    )
    print(f"{'variant':8s} {'ms/step':>18s} {'all tgt tok/s':>15s} {'real tgt tok/s':>15s} {'peak RSS':>9s}")
    for name, rows in results.items():
        ms = [row[0] for row in rows]
        median = [statistics.median(row[i] for row in rows) for i in range(3)]
        print(
            f"{name:8s} {median[0]:8.1f} ({min(ms):.0f}-{max(ms):.0f}) {median[1]:15,.0f} "
            f"{median[2]:15,.0f} {max(row[3] for row in rows):7.2f} G"
        )
    print("\nratios per round (real target tokens/s, ours / theirs), median (min-max):")
    for peer, label, target in (("torch", "identical batches", 0.97), ("hf", "real target tokens", 1.3)):
        ratios = [ours[2] / theirs[2] for ours, theirs in zip(results["mt"], results[peer])]
        print(
            f"mt / {peer:5s} ({label}): {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}; rounds {', '.join(f'{x:.2f}' for x in ratios)})  "
            f"(target >= {target})"
        )


if __name__ == "__main__":
    main()
