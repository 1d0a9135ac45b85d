"""Loss, schedule and metrics against their references."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mt.data.batching import collate
from mt.data.tokenizer import PAD_ID
from mt.training.module import TranslationModule, label_smoothed_nll


def test_label_smoothing_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = PAD_ID
    loss, nll = label_smoothed_nll(logits, target, 0.0)
    expected = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=PAD_ID, reduction="sum")
    assert_close(loss, expected)
    assert_close(nll, expected)


def test_label_smoothing_equals_torch_label_smoothing():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 9)
    target = torch.randint(1, 9, (2, 4))
    target[1, 2:] = PAD_ID
    loss, _ = label_smoothed_nll(logits, target, 0.1)
    expected = F.cross_entropy(
        logits.view(-1, 9), target.view(-1), ignore_index=PAD_ID, label_smoothing=0.1, reduction="sum"
    )
    assert_close(loss, expected)


def tiny_module() -> TranslationModule:
    torch.manual_seed(0)
    model = {"d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "d_ff": 64, "dropout": 0.0}
    return TranslationModule(model, {}, {}, {}, src_vocab_size=30, tgt_vocab_size=30).eval()


def test_loss_unchanged_by_extra_padding():
    module = tiny_module()
    src, tgt = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]]
    batch = collate(src, tgt, [0, 1])
    # The same pairs beside a much longer one: more padding, the same per-pair loss.
    padded = collate(src + [[4] * 20], tgt + [[4] * 25], [0, 1, 2])
    with torch.no_grad():
        loss, nll, tokens = module._loss(batch)
        logits = module.model(padded.src_ids, padded.src_pad_mask, padded.tgt_in)[:2]
        padded_loss, padded_nll = label_smoothed_nll(logits, padded.tgt_out[:2], module.optim_cfg.label_smoothing)
    assert tokens == 8
    assert_close(loss, padded_loss, rtol=1e-5, atol=1e-5)
    assert_close(nll, padded_nll, rtol=1e-5, atol=1e-5)
