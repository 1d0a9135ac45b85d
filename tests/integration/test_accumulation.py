"""Gradient accumulation: an update over k batches is the update of one batch holding all their pairs, each
target token weighed alike (the mean over the window's tokens), whatever each batch's token count."""

from __future__ import annotations

import pytest
import torch

from mt.training.datamodule import TranslationDataModule
from mt.training.module import TranslationModule
from tests.conftest import tiny_train_config
from tests.helpers import plain_trainer

MODEL = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0}


class Recording(TranslationModule):
    """Keeps the batches it trains on and the gradients the optimizer is about to apply."""

    def training_step(self, batch, batch_idx):
        self.seen.append(batch)
        return super().training_step(batch, batch_idx)

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.applied = {name: p.grad.clone() for name, p in self.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("clip_norm", [0.0, 0.5])
def test_an_accumulated_update_is_the_update_of_one_batch_of_all_its_tokens(toy_corpus_dir, tmp_path, clip_norm):
    config = tiny_train_config(toy_corpus_dir)
    datamodule = TranslationDataModule(config.data, config.tokenizer, run_dir=tmp_path / "run", seed=1)
    tokenizer = datamodule.prepare_tokenizer()
    vocab = {"src_vocab_size": tokenizer.src_vocab_size, "tgt_vocab_size": tokenizer.tgt_vocab_size}
    optim = {"lr": 1e-2, "warmup_steps": 5, "clip_norm": clip_norm}
    torch.manual_seed(0)
    module = Recording(MODEL, optim, {}, {"decode": "none"}, **vocab)
    module.seen, module.tokenizer = [], tokenizer
    reference = TranslationModule(MODEL, optim, {}, {"decode": "none"}, **vocab)
    reference.load_state_dict(module.state_dict())
    plain_trainer(max_steps=1, accumulate_grad_batches=3).fit(module, datamodule=datamodule)
    tokens = [int(batch.num_tgt_tokens) for batch in module.seen]
    assert len(tokens) == 3 and len(set(tokens)) > 1  # batches of other sizes, so that their weights matter
    # The reference: the mean loss over every target token of the window, as one batch would give it.
    total = sum(reference._loss(batch)[0] for batch in module.seen) / sum(tokens)
    total.backward()
    expected = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    if clip_norm:
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected.values()]))
        assert norm > clip_norm  # clipped, so the check below covers the scale of the clipping too
        expected = {name: g * (clip_norm / (norm + 1e-6)) for name, g in expected.items()}
    assert expected.keys() == module.applied.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(module.applied[name], grad, rtol=1e-4, atol=1e-6, msg=name)
