"""Transformer building blocks: attention with a key/value cache, feed-forward, embeddings, masks.

Shapes: B batch rows, S source length, T target length, D model width, H heads, Dh = D / H.
Masks passed between modules mean ``True`` = padding; ``attention_mask`` converts them to the
convention of ``F.scaled_dot_product_attention`` (``True`` = may attend) in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.compat import onednn_linear, onednn_linear_available, onednn_pack_linear_weight, tensor_version


def attention_mask(key_pad_mask: Tensor | None) -> Tensor | None:
    """(B, S) pad mask (``True`` = padding) -> (B, 1, 1, S) SDPA mask (``True`` = attend).

    A row that is all padding may attend everywhere: its output is never used, and a softmax over
    nothing but masked scores is ``-inf - -inf = NaN`` in some kernels and precisions.
    """
    if key_pad_mask is None:
        return None
    all_padding = key_pad_mask.all(dim=-1, keepdim=True)
    return ~(key_pad_mask & ~all_padding)[:, None, None, :]


def causal_mask(query_len: int, key_len: int, device: torch.device) -> Tensor:
    """(T_q, T_k) SDPA mask for queries at the last ``query_len`` of ``key_len`` positions."""
    offset = key_len - query_len
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool = False, dropout: float = 0.0
) -> Tensor:
    """Scaled dot-product attention of q (B, H, T_q, Dh) over k, v (B, H, T_k, Dh) -> (B, H, T_q, Dh).

    ``mask`` broadcasts to (B, H, T_q, T_k), ``True`` = may attend; ``causal`` lets the queries, the
    last T_q of T_k positions, see only positions up to their own. Off CPU this is
    ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels). On CPU the scores are
    formed explicitly: for translation's tens of tokens, torch 2.13's CPU flash kernel is 1.2-2.5x
    slower than a batched matmul, softmax and matmul (forward and backward, decoding and training).
    """
    query_len, key_len = q.size(2), k.size(2)
    if q.device.type != "cpu":
        if causal and query_len == key_len and mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        if causal and query_len > 1:
            causal_part = causal_mask(query_len, key_len, q.device)
            mask = causal_part if mask is None else mask & causal_part
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    if causal and query_len > 1:
        causal_part = causal_mask(query_len, key_len, q.device)
        mask = causal_part if mask is None else mask & causal_part
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.where(mask, -torch.inf)  # one operator; masked_fill_ would need ~mask first
    weights = scores.softmax(dim=-1)
    if dropout:
        weights = F.dropout(weights, dropout)
    if weights.dtype != v.dtype:  # autocast: softmax in float32, values in bf16
        weights = weights.to(v.dtype)
    return weights @ v


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, D) -> (B, H, T, Dh)."""
    batch, length, width = x.shape
    return x.view(batch, length, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, Dh) -> (B, T, D)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


@dataclass
class LayerCache:
    """One decoder layer's cache: self-attention keys/values so far, cross-attention keys/values.

    ``self_k``/``self_v``: (B_rows, H, T_past, Dh), one row per hypothesis. ``cross_k``/``cross_v``:
    (B_src, H, S, Dh), one row per *source*, computed once and shared by that source's rows.
    """

    cross_k: Tensor
    cross_v: Tensor
    self_k: Tensor | None = None
    self_v: Tensor | None = None


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and an optional incremental cache."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, causal: bool = False, cache: LayerCache | None = None
    ) -> Tensor:
        """x: (B, T, D) -> (B, T, D). ``mask``: keys that may be attended, from ``attention_mask``.
        With ``cache``, x holds only the new positions."""
        batch, length, width = x.shape
        # (B, T, 3D) -> three (B, H, T, Dh) views: one view and one permute, not a split and three of each.
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, width // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            if cache.self_k is not None:
                k = torch.cat([cache.self_k, k], dim=2)
                v = torch.cat([cache.self_v, v], dim=2)
            cache.self_k, cache.self_v = k, v
        dropout = self.dropout if self.training else 0.0
        context = attend(q, k, v, mask, causal=causal, dropout=dropout)
        return self.out(merge_heads(context))


class CrossAttention(nn.Module):
    """Decoder queries over encoder keys/values.

    The keys/values are projected once per source (``project_memory``). The query rows may be a
    multiple G of the sources (e.g. several hypotheses per source): rows ``s*G .. s*G+G-1`` attend
    over source ``s``, with no copy of its keys/values.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B_src, S, D) -> keys, values (B_src, H, S, Dh)."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        # Contiguous once per source, so no decoding step copies them again to multiply.
        return split_heads(k, self.n_heads).contiguous(), split_heads(v, self.n_heads).contiguous()

    def forward(self, x: Tensor, k: Tensor, v: Tensor, memory_mask: Tensor) -> Tensor:
        """x (B_src*G, T, D), k/v (B_src, H, S, Dh), memory_mask (B_src, 1, 1, S) from ``attention_mask``
        -> (B_src*G, T, D)."""
        rows, length, width = x.shape
        sources = k.size(0)
        # Fold the G rows of each source into its query axis: (B_src, G*T, D).
        q = split_heads(self.q(x).reshape(sources, (rows // sources) * length, width), self.n_heads)
        dropout = self.dropout if self.training else 0.0
        context = attend(q, k, v, memory_mask, dropout=dropout)
        return self.out(merge_heads(context).reshape(rows, length, width))


class Dropout(nn.Dropout):
    """``nn.Dropout`` that hands its input back outside training without dispatching a no-op
    ``aten::dropout`` (a 3-layer decoding step made 13 of them)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=True, inplace=self.inplace) if self.training else x


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> activation -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.activation(self.up(x))))


class Residual(nn.Module):
    """``x + dropout(f(norm(x)))`` (pre-norm) or ``norm(x + dropout(f(x)))`` (post-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def sinusoidal_positions(
    length: int, d_model: int, *, offset: int = 0, layout: str = "interleaved", device: torch.device | None = None
) -> Tensor:
    """(length, D) sinusoidal encodings of positions ``offset .. offset+length-1`` (Vaswani et al.).

    Column pair i holds sin and cos of ``position / 10000^(2i/D)``: interleaved (sin at 2i, cos at 2i+1, the
    paper's layout) or in ``halves`` (sines in the first D/2 columns, cosines in the rest: Marian's). The angles
    are formed in float64, as Marian and Hugging Face do, then stored in float32.
    """
    position = torch.arange(offset, offset + length, dtype=torch.float64, device=device)[:, None]
    frequency = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / d_model)
    )
    sines, cosines = torch.sin(position * frequency), torch.cos(position * frequency[: d_model // 2])
    if layout == "halves":
        return torch.cat([sines, cosines], dim=1).float()
    table = torch.zeros(length, d_model, dtype=torch.float64, device=device)
    table[:, 0::2] = sines
    table[:, 1::2] = cosines
    return table.float()


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(D) (unless ``scale`` is off), plus sinusoidal positions, then dropout."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        *,
        pad_id: int,
        dropout: float = 0.0,
        tokens: nn.Embedding | None = None,
        scale: bool = True,
        positions: str = "interleaved",
    ) -> None:
        super().__init__()
        self.tokens = tokens if tokens is not None else nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.scale = math.sqrt(d_model) if scale else 1.0
        self.dropout = Dropout(dropout)
        self.d_model = d_model
        self.layout = positions
        self.register_buffer("positions", sinusoidal_positions(256, d_model, layout=positions), persistent=False)

    def forward(self, ids: Tensor, *, offset: int = 0) -> Tensor:
        """ids (B, T) at positions ``offset..`` -> (B, T, D)."""
        end = offset + ids.size(1)
        if end > self.positions.size(0):  # grow the table for unusually long inputs
            self.positions = sinusoidal_positions(
                max(end, 2 * self.positions.size(0)), self.d_model, layout=self.layout, device=ids.device
            ).to(self.positions.dtype)
        return self.dropout(self.tokens(ids) * self.scale + self.positions[offset:end])


class OutputProjection(nn.Linear):
    """The vocabulary projection, an ``nn.Linear`` whose CPU inference runs through oneDNN.

    At decoding it is the largest matrix product of a step, (rows, D) x (D, V), with few rows and a
    wide V: there MKL's sgemm behind ``F.linear`` reaches 49 GFLOP/s on 2 Zen 3 cores (64 x 256 x 8000)
    and oneDNN with the weight packed once reaches 110. So without gradients on CPU in fp32, the weight
    is packed (again at each change of train/eval mode, and whenever its version changes) and multiplied by
    oneDNN; training, autocast and other devices keep ``F.linear``. Parameters and checkpoints are those of
    ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._packed: tuple[tuple, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if _ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32:
            if not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"):
                return onednn_linear(x, self._packed_weight(), self.bias)
        return F.linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> OutputProjection:
        # Forget the packed weight at every change of mode (before each validation, after it): an optimizer may
        # have changed the weight without the version counter of the key below seeing it (torch's fused AdamW on
        # CPU updates in place without bumping it), and decoding would multiply by the weight of an earlier step.
        self._packed = None
        return super().train(mode)

    def _packed_weight(self) -> Tensor:
        weight = self.weight
        key = (weight.data_ptr(), tensor_version(weight), weight.shape)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, onednn_pack_linear_weight(weight, 64))
        return self._packed[1]


_ONEDNN_LINEAR = onednn_linear_available()
