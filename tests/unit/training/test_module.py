"""TranslationModule's loss of a batch: the same pairs padded further (beside a much longer pair) give the same
loss and NLL. The loss itself is held against its references in test_loss.py, the schedules in
test_schedules.py and the metrics in tests/unit/decode/test_metrics.py."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from mt.data.batching import collate
from mt.training.loss import label_smoothed_nll
from mt.training.module import TranslationModule


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
