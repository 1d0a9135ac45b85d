"""One optimizer step of the TranslationModule, for ``tests/system/test_distributed.py``.

``python -m tests.system.ddp_step OUT ddp``: 2 CPU processes (gloo), rank r trains on batch r.
``python -m tests.system.ddp_step OUT single``: 1 process trains on both batches joined into one.
Every rank saves the source sentences of its batch to ``OUT/<mode>.rank<R>.src``.
Rank 0 saves the gradients (after DDP's all-reduce, before clipping and the update) and the
parameters after the step to ``OUT/<mode>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from mt.data.batching import collate
from mt.training.module import TranslationModule

VOCAB = 40


def batches() -> list[tuple[list[list[int]], list[list[int]]]]:
    """Two batches with different sentence counts and lengths, so token-count weighting matters."""
    generator = torch.Generator().manual_seed(7)

    def sentences(count: int, length: int) -> list[list[int]]:
        return [torch.randint(4, VOCAB, (length - i % 3,), generator=generator).tolist() for i in range(count)]

    return [(sentences(3, 5), sentences(3, 4)), (sentences(6, 9), sentences(6, 11))]


class RankBatches(IterableDataset):
    """Yields the batch of this rank (or both batches joined, in a single process)."""

    def __iter__(self):
        parts = batches()
        if torch.distributed.is_initialized():
            parts = [parts[torch.distributed.get_rank()]]
        src = [s for part in parts for s in part[0]]
        tgt = [t for part in parts for t in part[1]]
        yield collate(src, tgt, list(range(len(src))))


class SaveGradients(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.gradients: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Every rank saves the source sentences it trained on: the test checks the ranks' batches differ.
        rows = [[t for t in row if t != 0] for row in batch.src_ids.tolist()]
        torch.save(rows, self.path.with_suffix(f".rank{trainer.global_rank}.src"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradients = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.tokens = float(pl_module.throughput.window_tokens)  # what train/tgt_tokens_per_s will divide

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save({"gradients": self.gradients, "parameters": params, "tokens": self.tokens}, self.path)


def main(out: Path, mode: str) -> None:
    torch.manual_seed(0)
    module = TranslationModule(
        {"d_model": 32, "n_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "d_ff": 64, "dropout": 0.0},
        {"lr": 1e-2, "warmup_steps": 1, "label_smoothing": 0.1},
        {},
        {"decode": "none"},
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2 if mode == "ddp" else 1,
        strategy="ddp" if mode == "ddp" else "auto",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[SaveGradients(out / f"{mode}.pt")],
    )
    trainer.fit(module, train_dataloaders=DataLoader(RankBatches(), batch_size=None))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
