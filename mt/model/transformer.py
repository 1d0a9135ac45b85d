"""The encoder-decoder Transformer (Vaswani et al. 2017), written out.

The model meets the search at a small contract and knows nothing of beams:

- ``encode(src_ids, src_pad_mask) -> memory``
- ``decode_step(tgt_ids, memory, src_pad_mask, cache, *, normalize=True) -> (log_probs, cache)``
  (``normalize=False``: the logits, for a search that needs no probabilities)

``forward`` is the teacher-forced training path, and the oracle that the cache is tested against.
The decoder's rows may be a multiple of the sources (hypotheses of one source are adjacent rows);
cross-attention keys/values are computed once per source and shared by its rows.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mt.config import ModelConfig
from mt.data.tokenizer import PAD_ID
from mt.model.layers import (
    CrossAttention,
    Embedding,
    FeedForward,
    LayerCache,
    OutputProjection,
    Residual,
    SelfAttention,
    attention_mask,
)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, activation=cfg.activation, dropout=cfg.activation_dropout)
        self.attn_block = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        """x (B, S, D); ``src_mask`` (B, 1, 1, S): ``attention_mask`` of the source padding."""
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention, then cross-attention (decoder queries over encoder keys/values), then FFN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = SelfAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn = CrossAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, activation=cfg.activation, dropout=cfg.activation_dropout)
        self.self_block = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.cross_block = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, cache: LayerCache, src_mask: Tensor) -> Tensor:
        """x (B_rows, T_new, D); ``src_mask`` (B_src, 1, 1, S): ``attention_mask`` of the source padding."""
        x = self.self_block(x, lambda h: self.self_attn(h, causal=True, cache=cache))
        x = self.cross_block(x, lambda h: self.cross_attn(h, cache.cross_k, cache.cross_v, src_mask))
        return self.ffn_block(x, self.ffn)


class DecoderCache:
    """Per-layer key/value cache of incremental decoding.

    Rows are hypotheses; the search reorders them with ``reorder`` (self-attention keys/values
    only: cross-attention keys/values are per source and never copied) and drops finished
    sources with ``select_sources``.
    """

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers
        self._memory_mask: tuple[Tensor, Tensor | None] | None = None

    def memory_mask(self, src_pad_mask: Tensor) -> Tensor | None:
        """``attention_mask(src_pad_mask)``, built again only when the search passes another pad mask
        (at the first step and after sources are dropped), not at every step."""
        if self._memory_mask is None or self._memory_mask[0] is not src_pad_mask:
            self._memory_mask = (src_pad_mask, attention_mask(src_pad_mask))
        return self._memory_mask[1]

    @property
    def length(self) -> int:
        """Target positions already processed."""
        first = self.layers[0].self_k
        return 0 if first is None else first.size(2)

    def reorder(self, row_idx: Tensor) -> None:
        """Keep rows ``row_idx`` (B_rows,) of the self-attention cache; each must stay within its source."""
        for layer in self.layers:
            if layer.self_k is not None:
                layer.self_k = layer.self_k.index_select(0, row_idx)
                layer.self_v = layer.self_v.index_select(0, row_idx)

    def select_sources(self, src_idx: Tensor, row_idx: Tensor) -> None:
        """Keep sources ``src_idx`` and their hypothesis rows ``row_idx``."""
        self.reorder(row_idx)
        for layer in self.layers:
            layer.cross_k = layer.cross_k.index_select(0, src_idx)
            layer.cross_v = layer.cross_v.index_select(0, src_idx)


class Transformer(nn.Module):
    """Encoder-decoder Transformer with pre-norm (default) or post-norm residual blocks.

    Args:
        cfg: layer sizes and dropout.
        src_vocab_size, tgt_vocab_size: vocabulary sizes; equal when ``share_all_embeddings``.
    """

    def __init__(self, cfg: ModelConfig, *, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        if cfg.share_all_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(
                f"share_all_embeddings needs one vocabulary, got sizes {src_vocab_size} and {tgt_vocab_size}"
            )
        self.cfg = cfg
        options = dict(pad_id=PAD_ID, dropout=cfg.dropout, scale=cfg.scale_embeddings, positions=cfg.positions)
        self.src_embed = Embedding(src_vocab_size, cfg.d_model, **options)
        shared_tokens = self.src_embed.tokens if cfg.share_all_embeddings else None
        self.tgt_embed = Embedding(tgt_vocab_size, cfg.d_model, tokens=shared_tokens, **options)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream unnormalised: normalise the stacks' outputs.
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.output = OutputProjection(cfg.d_model, tgt_vocab_size, bias=cfg.output_bias)
        self._init_weights()
        if cfg.share_all_embeddings or cfg.share_decoder_input_output:
            self.output.weight = self.tgt_embed.tokens.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.d_model**-0.5)
                nn.init.zeros_(module.weight[PAD_ID])

    def encode(self, src_ids: Tensor, src_pad_mask: Tensor) -> Tensor:
        """src_ids, src_pad_mask (B, S) -> memory (B, S, D)."""
        x = self.src_embed(src_ids)
        src_mask = attention_mask(src_pad_mask)  # once for all layers
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def new_cache(self, memory: Tensor) -> DecoderCache:
        """An empty cache holding each layer's cross-attention keys/values of ``memory`` (B_src, S, D)."""
        return DecoderCache([LayerCache(*layer.cross_attn.project_memory(memory)) for layer in self.decoder_layers])

    def decode(self, tgt_ids: Tensor, cache: DecoderCache, src_pad_mask: Tensor) -> Tensor:
        """Decoder states of the positions of ``tgt_ids`` (B_rows, T) not yet in ``cache`` -> (B_rows, T_new, D)."""
        offset = cache.length
        x = self.tgt_embed(tgt_ids[:, offset:], offset=offset)
        src_mask = cache.memory_mask(src_pad_mask)  # once for all layers (and all steps)
        for layer, layer_cache in zip(self.decoder_layers, cache.layers):
            x = layer(x, layer_cache, src_mask)
        return self.decoder_norm(x)

    def decode_step(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor,
        cache: DecoderCache | None = None,
        *,
        normalize: bool = True,
    ) -> tuple[Tensor, DecoderCache]:
        """Log-probabilities of the next token after each prefix.

        Args:
            tgt_ids: (B_rows, t) prefixes, starting with BOS; B_rows is a multiple of B_src.
            memory: (B_src, S, D) from ``encode``.
            src_pad_mask: (B_src, S), ``True`` = padding.
            cache: from the previous step, or ``None`` at the first.
            normalize: ``False`` returns the logits, for a search that needs no probabilities.

        Returns:
            log_probs (or logits) (B_rows, V) in float32, and the cache now covering all t positions.
        """
        if cache is None:
            cache = self.new_cache(memory)
        hidden = self.decode(tgt_ids, cache, src_pad_mask)[:, -1]
        logits = self.output(hidden).float()
        return (F.log_softmax(logits, dim=-1) if normalize else logits), cache

    def decoder_states(self, src_ids: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced decoder states before the output layer: src (B, S), tgt_in (B, T) -> (B, T, D)."""
        memory = self.encode(src_ids, src_pad_mask)
        return self.decode(tgt_in, self.new_cache(memory), src_pad_mask)

    def forward(self, src_ids: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits: src (B, S), tgt_in (B, T) -> (B, T, V)."""
        return self.output(self.decoder_states(src_ids, src_pad_mask, tgt_in))
