"""The Transformer against its own teacher-forced forward: cache, padding, masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from mt.data.tokenizer import BOS_ID
from mt.model.layers import attend, attention_mask, causal_mask
from tests.conftest import random_attention_inputs, random_batch, random_model


def hand_sinusoid_row(pos: int, d_model: int) -> torch.Tensor:
    """Row ``pos`` of the paper's interleaved table, written out with ``math``: column 2i holds
    sin(pos / 10000^(2i/D)), column 2i+1 cos of the same angle."""
    row = []
    for i in range(d_model // 2):
        angle = pos / 10000.0 ** (2 * i / d_model)
        row += [math.sin(angle), math.cos(angle)]
    return torch.tensor(row, dtype=torch.float32)


def teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_in):
    return torch.log_softmax(model(src_ids, src_pad_mask, tgt_in).float(), dim=-1)


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("lengths", [[5], [3, 7, 1], [6, 6]])
def test_cached_decoding_equals_full_decoding_at_every_step(pre_norm, lengths):
    model = random_model(1, pre_norm=pre_norm, layers=3)
    src_ids, src_pad_mask = random_batch(2, lengths)
    torch.manual_seed(3)
    tgt_in = torch.cat([torch.full((len(lengths), 1), BOS_ID), torch.randint(4, 40, (len(lengths), 8))], dim=1)
    full = teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_in)
    memory = model.encode(src_ids, src_pad_mask)
    cache = None
    for t in range(1, tgt_in.size(1) + 1):
        step_log_probs, cache = model.decode_step(tgt_in[:, :t], memory, src_pad_mask, cache)
        assert cache.length == t
        assert_close(step_log_probs, full[:, t - 1], rtol=1e-5, atol=1e-5)


def test_decode_step_without_cache_equals_cached():
    model = random_model(4)
    src_ids, src_pad_mask = random_batch(5, [4, 9])
    tgt = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 8, 9, 10]])
    memory = model.encode(src_ids, src_pad_mask)
    uncached, _ = model.decode_step(tgt, memory, src_pad_mask, None)
    cache = None
    for t in range(1, 5):
        cached, cache = model.decode_step(tgt[:, :t], memory, src_pad_mask, cache)
    assert_close(uncached, cached, rtol=1e-5, atol=1e-5)


def test_rows_grouped_per_source_equal_expanded_memory():
    """G hypothesis rows per source share its cross-attention keys/values without copies."""
    model = random_model(6)
    src_ids, src_pad_mask = random_batch(7, [3, 8])
    group = 3
    torch.manual_seed(8)
    tgt = torch.cat([torch.full((2 * group, 1), BOS_ID), torch.randint(4, 40, (2 * group, 5))], dim=1)
    memory = model.encode(src_ids, src_pad_mask)
    grouped, _ = model.decode_step(tgt, memory, src_pad_mask, None)
    expanded, _ = model.decode_step(
        tgt, memory.repeat_interleave(group, 0), src_pad_mask.repeat_interleave(group, 0), None
    )
    assert_close(grouped, expanded, rtol=1e-5, atol=1e-5)


def test_padded_batch_equals_sentences_one_by_one():
    model = random_model(9)
    lengths = [2, 9, 5]
    src_ids, src_pad_mask = random_batch(10, lengths)
    tgt_in = torch.tensor([[BOS_ID, 4, 5, 6]] * 3)
    batched = teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_in)
    for row, length in enumerate(lengths):
        alone = src_ids[row : row + 1, : length + 1]
        single = teacher_forced_log_probs(model, alone, alone == 0, tgt_in[row : row + 1])
        assert_close(batched[row : row + 1], single, rtol=1e-5, atol=1e-5)


def test_source_padding_content_changes_nothing():
    model = random_model(11)
    src_ids, src_pad_mask = random_batch(12, [2, 6])
    tgt_in = torch.tensor([[BOS_ID, 4, 5], [BOS_ID, 6, 7]])
    before = teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_in)
    scribbled = src_ids.masked_fill(src_pad_mask, 17)  # garbage under the pad mask
    after = teacher_forced_log_probs(model, scribbled, src_pad_mask, tgt_in)
    assert_close(before, after)


def test_future_target_tokens_do_not_change_earlier_positions():
    model = random_model(13)
    src_ids, src_pad_mask = random_batch(14, [5])
    tgt_a = torch.tensor([[BOS_ID, 4, 5, 6, 7]])
    tgt_b = torch.tensor([[BOS_ID, 4, 5, 30, 31]])
    out_a = teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_a)
    out_b = teacher_forced_log_probs(model, src_ids, src_pad_mask, tgt_b)
    assert_close(out_a[:, :3], out_b[:, :3])
    assert not torch.allclose(out_a[:, 3:], out_b[:, 3:])


def test_embeddings_are_tied_and_positions_grow_for_long_inputs():
    model = random_model(15)
    assert model.output.weight is model.tgt_embed.tokens.weight is model.src_embed.tokens.weight
    src_ids, src_pad_mask = random_batch(16, [400])  # longer than the precomputed position table
    memory = model.encode(src_ids, src_pad_mask)
    assert memory.shape == (1, 401, 32) and torch.isfinite(memory).all()
    table = model.src_embed.positions
    assert table.shape[0] >= 401 and table.shape[1] == 32  # grew past 256 to cover all 401 positions
    for pos in (0, 1, 255, 256, 300, 400):  # rows of the original table and rows added when it grew
        assert_close(table[pos], hand_sinusoid_row(pos, 32), atol=1e-6, rtol=0)


@pytest.mark.parametrize("query_len,key_len,causal", [(5, 5, True), (1, 7, True), (3, 7, True), (4, 6, False)])
def test_cpu_attention_equals_torch_sdpa_in_outputs_and_gradients(query_len, key_len, causal):
    q, k, v, key_pad_mask = random_attention_inputs(query_len, key_len)  # with a row of nothing but padding
    mask = attention_mask(key_pad_mask)
    ours = attend(q, k, v, mask, causal=causal)
    reference_mask = mask & causal_mask(query_len, key_len, q.device) if causal else mask
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=reference_mask)
    assert_close(ours, reference)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
    for mine, theirs in zip(ours_grads, reference_grads):
        assert_close(mine, theirs)


def test_output_projection_packed_for_cpu_inference_equals_linear_and_follows_weight_updates():
    """Without gradients on CPU the vocabulary projection runs through oneDNN with a packed weight: the same
    logits as F.linear, for 2-D and 3-D inputs, and repacked after the weight changes (training between
    validations)."""
    from mt.model import layers
    from mt.model.layers import OutputProjection

    if not layers._ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN packed linear")
    torch.manual_seed(0)
    layer = OutputProjection(32, 300, bias=False)
    x = torch.randn(5, 7, 32)
    with torch.no_grad():
        for inputs in (x, x[:, -1]):
            assert_close(layer(inputs), F.linear(inputs, layer.weight), rtol=1e-5, atol=1e-5)
        packed = layer._packed[1]  # the oneDNN path ran and kept its packed weight
        layer.weight.mul_(2.0)  # an optimiser step, in place
        assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
        assert layer._packed[1] is not packed  # repacked
    with torch.inference_mode():
        assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    loss = layer(x).square().sum()  # with gradients: F.linear, and the weight gets its gradient
    loss.backward()
    assert layer.weight.grad is not None


def test_output_projection_decodes_with_the_weight_a_fused_adamw_step_left():
    """torch's fused AdamW on CPU updates the weight in place without bumping its version counter: the packed
    weight must still follow it from one validation (eval mode) to the next, as the training between them
    (train mode) does. Before the fix the second validation decoded with the first one's weight."""
    from mt.model import layers
    from mt.model.layers import OutputProjection

    if not layers._ONEDNN_LINEAR:
        pytest.skip("this torch build has no oneDNN packed linear")
    torch.manual_seed(0)
    layer = OutputProjection(32, 300, bias=False)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(5, 32)
    layer.eval()
    with torch.no_grad():
        layer(x)  # the first validation packs the weight
    layer.train()
    layer(x).square().sum().backward()
    before = layer.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(layer.weight, before)
    layer.eval()
    with torch.no_grad():
        assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
