"""Training speed: ``mt`` under Lightning against a plain PyTorch loop and Hugging Face Marian, one process.

The same model shape for all three (``--model``: conf/model/small.yaml by default, d 256, 4 heads, 3+3
layers, FFN 1024; ReLU, joint vocabulary with tied embeddings), the same training pairs (Multi30k, or a
synthetic corpus with ``--synthetic N``), the same precision (fp32 on CPU; bf16 autocast on CUDA) and
optimizer (the module's: fused AdamW with its weight-decay groups, on CPUs as on GPUs), on one device, in rounds
that alternate the three, so that machine noise hits them alike:

- ``mt``: the ``TranslationModule`` under ``lightning.Trainer`` as ``mt.train`` builds it (logging to
  CSV once a round, at its last update, which the clock includes, as ``mt.train`` logs every 50 updates;
  progress bar off), on ``max_tokens`` batches of length-sorted pairs;
- ``torch``: a minimal loop (forward, the module's label-smoothed loss read in chunks, backward, clip, AdamW,
  schedule) over the identical batches: the floor of what torch alone does, so that mt / torch is what
  Lightning and the module's bookkeeping cost;
- ``hf``: ``transformers.MarianMTModel`` built from a config of the same shape (random init, SDPA
  attention), either on batches of a fixed number of sentences in shuffled order, padded, as its users
  batch (``--hf-batches sentences``, the CPU default; the count chosen so that a batch holds about as many
  real target tokens as ``mt``'s), or on ``mt``'s own length-sorted batches (``same``, the CUDA default).

Reported per variant: median ms per step (min-max over rounds), target tokens/s counting every
padded position and counting real tokens only, model FLOPs utilisation on CUDA (real target tokens,
``mt.training.throughput.flops_per_target_token``, against the card's dense bf16 peak), and the peak
memory seen during its steps (on CUDA, allocated, the idle variants moved to the CPU; on a CPU, the process's
resident high-water mark, the idle variants' weights included); then the ratios the targets are stated
in (mt/torch on identical batches, mt/hf in real tokens/s), each taken within a round and reported as the
median (min-max) over rounds: the rounds rotate the order (``round_order``), and a shared machine's
speed drifts between minutes, so a paired ratio is steadier than a ratio of two medians.

    python scripts/bench_train.py --data ../shared/data/multi30k            # MT_DATA_DIR by default
    python scripts/bench_train.py --steps 20 --rounds 3 --max-tokens 4096
    python scripts/bench_train.py --device cuda --model base --synthetic 200000 --max-tokens 12000 --vocab 32000
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

from mt.config import DataConfig, OptimConfig, TokenizerConfig, from_dict  # noqa: E402
from mt.data.batching import Batch, TokenBatchSampler, collate  # noqa: E402
from mt.data.tokenizer import PAD_ID  # noqa: E402
from mt.errors import USER_ERRORS  # noqa: E402
from mt.training.datamodule import TranslationDataModule  # noqa: E402
from mt.training.loss import projected_label_smoothed_nll  # noqa: E402
from mt.training.module import TranslationModule, adamw  # noqa: E402
from mt.training.schedules import WarmupDecay  # noqa: E402
from mt.training.throughput import flops_per_target_token  # noqa: E402

OPTIM = {"lr": 7e-4, "warmup_steps": 400, "label_smoothing": 0.1, "clip_norm": 1.0}
DEVICE = torch.device("cpu")  # set by main: --device
BF16 = False  # set by main: bf16 autocast (and Lightning's bf16-mixed) on CUDA


def model_shape(name: str) -> dict:
    """conf/model/NAME.yaml as a dict (the d_model, heads, layers, FFN and dropout of ``model=NAME``)."""
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model" / f"{name}.yaml")))


def reset_peak_rss() -> None:
    """Start the kernel's high-water mark of this process's resident memory (VmHWM) again from now."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_gib() -> float:
    """The process's resident memory high-water mark since ``reset_peak_rss`` (VmHWM, in GiB)."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


class Meter:
    """Seconds per step and peak memory over the measured steps of one round. On CUDA the clock is read after
    the device finished (a synchronisation at the first and last measured step only), and the peak is of the
    tensors allocated, the idle variants' moved to the CPU (``place``); on a CPU it is the whole process's resident
    high-water mark while the variant runs (the idle variants' weights and optimizer state included)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total
        self.step = 0
        self.start = 0.0
        self.seconds = 0.0
        self.peak_memory = 0.0
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def step_done(self) -> None:
        self.step += 1
        cuda = DEVICE.type == "cuda"
        if self.step == self.warmup:
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()
        elif self.step > self.warmup:
            if cuda and self.step == self.total:
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start
            self.peak_memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_rss_gib()


def batch_tokens(batches: list[Batch]) -> tuple[int, int]:
    """(all target positions, real target tokens) of ``batches``."""
    padded = sum(b.tgt_out.numel() for b in batches)
    real = sum(int((b.tgt_out != PAD_ID).sum()) for b in batches)
    return padded, real


# -- the three variants --------------------------------------------------------------------------


def run_mt(module: TranslationModule, batches: list[Batch], warmup: int, log_dir: str) -> Meter:
    meter = Meter(warmup, len(batches))

    class Timer(L.Callback):
        """Ends the clock once the last update's values are logged: that update is the round's logging one (as
        one in 50 in mt.train), and callbacks' ``on_train_batch_end`` runs before the module reads them and before
        the loggers write them."""

        def on_train_batch_end(self, trainer, *args) -> None:
            if meter.step < len(batches) - 1:
                meter.step_done()

        def on_train_end(self, *args) -> None:
            meter.step_done()

    trainer = L.Trainer(
        accelerator=DEVICE.type,
        devices=1,
        precision="bf16-mixed" if BF16 else "32-true",
        max_steps=len(batches),
        logger=CSVLogger(log_dir, name="bench"),
        log_every_n_steps=len(batches),  # as mt.train logs (every 50): the loops beside it log nothing
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
    """The optimizer and schedule ``TranslationModule.configure_optimizers`` builds for the benchmark's settings
    (``mt.training.module.adamw``, fused on CPUs as on GPUs; the inverse-square-root schedule after a warm-up)."""
    cfg = from_dict(OptimConfig, OPTIM)
    optimizer = adamw(model, cfg, fused=True)
    return optimizer, WarmupDecay(optimizer, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps)


def place(model: torch.nn.Module, optimizer, device: torch.device) -> None:
    """Move a variant's weights and optimizer state to ``device``: the idle ones wait on the CPU, so that a GPU's
    peak memory is the running variant's alone."""
    model.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device)


def autocast():
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=BF16)


def run_torch(model: torch.nn.Module, optimizer, scheduler, batches: list[Batch], warmup: int) -> Meter:
    meter = Meter(warmup, len(batches))
    model.train()
    for batch in batches:
        batch = batch.to(DEVICE)
        with autocast():  # the module's loss: the output layer read in chunks, no (tokens x vocabulary) tensors
            hidden = model.decoder_states(batch.src_ids, batch.src_pad_mask, batch.tgt_in)
            loss_sum, _ = projected_label_smoothed_nll(
                hidden, model.output.weight, model.output.bias, batch.tgt_out, OPTIM["label_smoothing"]
            )
        loss = loss_sum / batch.num_tgt_tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip_norm"])
        optimizer.step()
        scheduler.step()
        meter.step_done()
    return meter


def hf_model(vocab_size: int, shape: dict):
    from transformers import AutoModelForSeq2SeqLM, MarianConfig

    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=shape["d_model"],
        encoder_layers=shape["encoder_layers"],
        decoder_layers=shape["decoder_layers"],
        encoder_attention_heads=shape["n_heads"],
        decoder_attention_heads=shape["n_heads"],
        encoder_ffn_dim=shape["d_ff"],
        decoder_ffn_dim=shape["d_ff"],
        activation_function="relu",
        dropout=shape["dropout"],
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
    return AutoModelForSeq2SeqLM.from_config(config, attn_implementation="sdpa")


def run_hf(model, optimizer, scheduler, batches: list[dict], warmup: int) -> Meter:
    meter = Meter(warmup, len(batches))
    model.train()
    for batch in batches:
        batch = {k: v.to(DEVICE, non_blocking=True) for k, v in batch.items()}
        with autocast():
            loss = model(**batch).loss  # mean cross-entropy over the label tokens (-100 = ignored)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["clip_norm"])
        optimizer.step()
        scheduler.step()
        meter.step_done()
    return meter


def round_order(r: int) -> tuple[str, ...]:
    """The order of the variants in round ``r``: rotated, so that each runs first once every three rounds. The
    first to run a round's batches pays for shapes none has met (the CPU's kernels are prepared per shape);
    alternating mt first and last left the plain loop always second, never paying."""
    names = ("mt", "torch", "hf")
    return names[r % 3 :] + names[: r % 3]


# -- data ------------------------------------------------------------------------------------------


def load_pairs(data_dir: Path, work_dir: Path, vocab_size: int, cache_dir: Path | None = None):
    """The training split of ``data_dir`` (Multi30k's files, or make_synthetic_corpus.py's, whose validation split
    is ``valid``: read as ``data=local`` reads them) encoded with a joint SentencePiece vocabulary, trained once
    into work_dir, or taken from ``cache_dir`` where an ``mt.train`` run of the same data and settings left it
    (``data.cache_dir``)."""
    synthetic = any(data_dir.glob("valid.*"))
    splits = {"valid": "valid"} if synthetic else {"valid": "val"}
    name = "local" if synthetic else "multi30k"
    fields = {"name": name, "path": str(data_dir), "splits": splits, "src_lang": "de", "tgt_lang": "en"}
    data = from_dict(DataConfig, {**fields, "cache_dir": str(cache_dir) if cache_dir else None})
    tokenizer_cfg = from_dict(TokenizerConfig, {"vocab_size": vocab_size})
    datamodule = TranslationDataModule(data, tokenizer_cfg, run_dir=work_dir, seed=1)
    datamodule.setup("fit")
    return datamodule.train_corpus, datamodule.tokenizer


def mt_batches(corpus, max_tokens: int, count: int, seed: int) -> list[Batch]:
    """``count`` token batches of length-sorted pairs, over as many epochs as a small corpus needs."""
    sampler = TokenBatchSampler(corpus.src_lengths, corpus.tgt_lengths, max_tokens, shuffle=True, seed=seed)
    chosen: list[np.ndarray] = []
    epoch = 0
    while len(chosen) < count:
        sampler.set_epoch(epoch)
        chosen += sampler.all_batches()[: count - len(chosen)]
        epoch += 1
    return [collate([corpus.src(i) for i in b], [corpus.tgt(i) for i in b], b.tolist()) for b in chosen]


def hf_batches(corpus, sentences: int, count: int, seed: int) -> list[dict]:
    """Batches of ``sentences`` pairs in a shuffled order, as Hugging Face's users batch (a new order each epoch)."""
    rng = np.random.default_rng(seed)
    epochs = -(-count * sentences // len(corpus))
    order = np.concatenate([rng.permutation(len(corpus)) for _ in range(epochs)])
    batches = []
    for k in range(count):
        ids = order[k * sentences : (k + 1) * sentences].tolist()
        batches.append(collate([corpus.src(i) for i in ids], [corpus.tgt(i) for i in ids], ids))
    return [hf_inputs(b) for b in batches]


def hf_inputs(batch: Batch) -> dict:
    """A ``Batch`` as MarianMTModel's keyword arguments (labels -100 at padding), with its targets kept aside."""
    labels = batch.tgt_out.masked_fill(batch.tgt_out == PAD_ID, -100)
    return {
        "input_ids": batch.src_ids,
        "attention_mask": (~batch.src_pad_mask).long(),
        "decoder_input_ids": batch.tgt_in,
        "decoder_attention_mask": (batch.tgt_in != PAD_ID).long(),
        "labels": labels,
        "_tgt_out": batch.tgt_out,
    }


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MT_DATA_DIR"), help="Multi30k (or a synthetic corpus)")
    parser.add_argument("--synthetic", type=int, default=0, help="train on N synthetic pairs instead (no --data)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="small", help="conf/model/NAME.yaml")
    parser.add_argument("--precision", choices=["32", "bf16"], default=None, help="default: bf16 on CUDA, 32 on CPU")
    parser.add_argument("--hf-batches", choices=["sentences", "same"], default=None, help="default: same on CUDA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (MFU)")
    parser.add_argument("--steps", type=int, default=30, help="measured steps per variant per round")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps at the start of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="data.cache_dir of mt.train runs to reuse")
    args = parser.parse_args()
    for flag in ("steps", "warmup", "rounds", "max_tokens", "vocab"):  # warm-up: the clock starts at its last step
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected 1 or more")
    if not (ROOT / "conf/model" / f"{args.model}.yaml").is_file():
        known = sorted(p.stem for p in (ROOT / "conf/model").glob("*.yaml"))
        parser.error(f"--model {args.model}: no conf/model/{args.model}.yaml (one of {', '.join(known)})")
    try:
        benchmark(args)
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def benchmark(args: argparse.Namespace) -> None:
    global DEVICE, BF16
    if not args.data and not args.synthetic:
        sys.exit("error: pass --data DIR, set MT_DATA_DIR (the Multi30k files) or pass --synthetic N")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device")
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        from mt.device import prepare_cuda

        prepare_cuda(tf32=True)  # as mt.train: no cuDNN attention (a plan per new shape), TF32 for fp32 products
    BF16 = (args.precision or ("bf16" if args.device == "cuda" else "32")) == "bf16"
    same_batches = (args.hf_batches or ("same" if args.device == "cuda" else "sentences")) == "same"
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(1, verbose=False)

    work = Path(tempfile.mkdtemp(prefix="mt-bench-train-"))
    data_dir = work / "synthetic" if args.synthetic else Path(args.data)
    if args.synthetic:
        import subprocess

        maker = ROOT / "scripts/make_synthetic_corpus.py"
        command = [sys.executable, str(maker), "--pairs", str(args.synthetic), "--out", str(data_dir), "--quiet"]
        subprocess.run(command, check=True)
    corpus, tokenizer = load_pairs(data_dir, work, args.vocab, args.cache_dir)
    per_round = args.warmup + args.steps
    ours = mt_batches(corpus, args.max_tokens, per_round * args.rounds, seed=1)
    real_per_batch = batch_tokens(ours)[1] / len(ours)
    if same_batches:
        sentences = 0
        theirs = [hf_inputs(b) for b in ours]
    else:
        mean_tgt = float(np.mean(corpus.tgt_lengths)) + 1
        sentences = max(1, round(real_per_batch / mean_tgt))  # a fixed sentence count, the same real tokens
        theirs = hf_batches(corpus, sentences, per_round * args.rounds, seed=1)
    if DEVICE.type == "cuda":  # every variant copies its batches from page-locked memory, as mt's loader gives them
        ours = [b.pin_memory() for b in ours]
        theirs = [{k: v.pin_memory() for k, v in b.items()} for b in theirs]

    shape = model_shape(args.model)

    def new_module() -> TranslationModule:  # the same initial weights for mt and the plain loop
        torch.manual_seed(0)
        vocab = {"src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}
        return TranslationModule(shape, OPTIM, {}, {"decode": "none"}, **vocab)

    module = new_module()
    plain = new_module().model.to(DEVICE)
    plain_opt, plain_sched = adamw_with_schedule(plain)
    torch.manual_seed(0)
    hf = hf_model(tokenizer.tgt_vocab_size, shape).to(DEVICE)
    hf_opt, hf_sched = adamw_with_schedule(hf)
    params = {
        "mt": sum(p.numel() for p in module.parameters()),
        "hf": sum(p.numel() for p in hf.parameters() if p.requires_grad),
    }
    flops = flops_per_target_token(shape, tokenizer.tgt_vocab_size)
    peak = None
    if DEVICE.type == "cuda":
        from gpu_report import card_peak_tflops

        peak = args.peak_tflops or card_peak_tflops(torch.cuda.get_device_name(0))

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
        hf_inputs_round = [{k: v for k, v in b.items() if k != "_tgt_out"} for b in theirs_round]
        for name in round_order(r):
            if DEVICE.type == "cuda":  # (Lightning moves mt's module and optimizer to the CPU after each fit)
                place(plain, plain_opt, DEVICE if name == "torch" else torch.device("cpu"))
                place(hf, hf_opt, DEVICE if name == "hf" else torch.device("cpu"))
            if name == "mt":
                meter = run_mt(module, ours_round, args.warmup, str(work / "logs"))
                tokens = measured_ours
            elif name == "torch":
                meter = run_torch(plain, plain_opt, plain_sched, ours_round, args.warmup)
                tokens = measured_ours
            else:
                meter = run_hf(hf, hf_opt, hf_sched, hf_inputs_round, args.warmup)
                tokens = measured_hf
            results[name].append(
                (
                    1000 * meter.seconds / args.steps,
                    tokens[0] / meter.seconds,
                    tokens[1] / meter.seconds,
                    meter.peak_memory,
                )
            )
            print(f"round {r + 1} {name:5s} {results[name][-1][0]:7.1f} ms/step", file=sys.stderr, flush=True)

    device = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    hf_batching = "mt's batches" if same_batches else f"{sentences} sentences, shuffled"
    print(
        f"\n{data_dir} train, model={args.model}, "
        f"{'bf16 autocast' if BF16 else 'fp32'}, {args.rounds} rounds x {args.steps} steps (+{args.warmup} warm-up), "
        f"torch {torch.__version__}, {device}; mt/torch batches: max_tokens={args.max_tokens} "
        f"({real_per_batch:.0f} real target tokens each); hf batches: {hf_batching}; parameters: "
        f"mt {params['mt'] / 1e6:.2f}M, hf {params['hf'] / 1e6:.2f}M\n"
    )
    memory = "peak alloc" if DEVICE.type == "cuda" else "proc. peak"  # (see Meter)
    mfu_header = f" {'MFU':>6s}" if peak else ""
    print(f"{'variant':8s} {'ms/step':>18s} {'all tgt tok/s':>15s} {'real tgt tok/s':>15s} {memory:>10s}{mfu_header}")
    for name, rows in results.items():
        ms = [row[0] for row in rows]
        median = [statistics.median(row[i] for row in rows) for i in range(3)]
        mfu = f" {flops * median[2] / (peak * 1e12):6.1%}" if peak else ""
        print(
            f"{name:8s} {median[0]:8.1f} ({min(ms):.0f}-{max(ms):.0f}) {median[1]:15,.0f} "
            f"{median[2]:15,.0f} {max(row[3] for row in rows):8.2f} G{mfu}"
        )
    if peak:
        print(f"(MFU: {flops / 1e6:.1f} MFLOP a real target token, {peak:.0f} TFLOP/s dense bf16 peak)")
    print("\nratios per round (real target tokens/s, ours / theirs), median (min-max):")
    targets = (1.0, 1.5) if DEVICE.type == "cuda" else (0.97, 1.3)
    for (peer, label), target in zip((("torch", "identical batches"), ("hf", "real target tokens")), targets):
        ratios = [ours[2] / theirs[2] for ours, theirs in zip(results["mt"], results[peer])]
        print(
            f"mt / {peer:5s} ({label}): {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}; rounds {', '.join(f'{x:.2f}' for x in ratios)})  "
            f"(target >= {target})"
        )


if __name__ == "__main__":
    main()
