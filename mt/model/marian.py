"""Hugging Face Marian (OPUS-MT) models in and out: the one home of their layout.

A ``MarianMTModel`` directory (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``source.spm``,
``target.spm``, ``vocab.json``: the OPUS-MT layout) is read with ``safetensors`` and ``json`` alone, so
``transformers`` stays what the tests check the conversion against, not what performs it.

What differs, and how it is mapped:

- **Special ids.** OPUS-MT has eos 0, unk 1, pad V-1, no BOS, and its decoder starts from pad; ``mt`` fixes
  PAD 0, UNK 1, BOS 2, EOS 3 (``mt.data.tokenizer``). Import reorders the rows of the embeddings and of the
  final logits bias into ``mt``'s order: BOS gets the row of the decoder's start token, the other pieces follow in
  ``vocab.json``'s order, and PAD, which Marian shares with the start token, gets a row of its own: zeros, with a
  logits bias of ``PAD_LOGIT`` so that its probability is exactly 0 in float32 and every other token's
  log-probability (PAD and BOS are never output) is Marian's.
- **Vocabulary.** Two SentencePiece models over one ``vocab.json`` whose order is not SentencePiece's: the
  ``Tokenizer`` keeps the list of pieces (``vocab``) and maps through it, as ``MarianTokenizer`` does.
- **Language codes.** A multilingual OPUS-MT model's sources start with a code such as ``>>fra<<``, a piece of
  ``vocab.json``; ``mt``'s start with a target-language token, ``<2fr>``. Import keeps the codes as pieces, which
  the ``Tokenizer`` takes as the model's language tokens (``tgt_lang=fra``); export writes ``<2fr>`` as
  ``>>fr<<``, so that ``MarianTokenizer`` reads ``">>fr<< text"`` as ``mt`` reads ``tgt_lang=fr``.
- **Model options.** SiLU (Marian's swish), positions in halves, no embedding scale where the config says so, the
  final logits bias (``ModelConfig.activation``, ``positions``, ``scale_embeddings``, ``output_bias``); Marian's
  post-norm is ``pre_norm=False``; separate Q, K, V projections become ``mt``'s fused ones.

Export writes a model with positions interleaved (``mt``'s default) as the same network with its width
permuted (``positions_in_halves``), in ``mt``'s own order (``vocab.json`` with PAD 0, UNK 1, BOS 2, EOS 3 and
the config's ids to match), so nothing is lost and ``MarianMTModel.from_pretrained`` /
``MarianTokenizer.from_pretrained`` load it as it is; Marian is post-norm, so a pre-norm model is refused.
``generation_config.json`` forbids PAD and BOS, as ``mt``'s search does, and carries the checkpoint's search
where ``generate()`` has its counterpart (``search_to_generation``); what it has none for (the ``gnmt`` length
penalty, a maximum length relative to the source, sampling) is logged in one warning. Export replaces an existing
output directory only if it is empty or a previous export (``not_an_export``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mt.atomic import atomic_write, foreign_entries
from mt.config import ModelConfig, SearchConfig, saved_search, to_dict
from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, Tokenizer, language_code
from mt.errors import CheckpointError, listing
from mt.model.checkpoint import WEIGHTS_PREFIX, load_checkpoint
from mt.model.transformer import Transformer

log = logging.getLogger(__name__)

PAD_LOGIT = -1e4  # the imported PAD row's logits bias: exp(-1e4) is 0 in float32, and finite for the loss

ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu"}  # Marian's name -> mt's
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What export writes, and so what a directory that overwrite=true may replace holds (with config.json and weights).
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "special_tokens_map.json",
    "source.spm",
    "target.spm",
    *WEIGHT_FILES,
)
# Marian config fields of other BART-family layouts that mt has no counterpart for, and their Marian value.
UNSUPPORTED = {"normalize_before": False, "add_final_layer_norm": False, "normalize_embedding": False}


def is_marian_directory(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def not_an_export(directory: Path) -> str | None:
    """Why the non-empty ``directory`` is not a previous export (a run directory, a checkpoints folder, ...),
    or None: an export holds ``config.json``, weights and the other ``EXPORT_FILES`` only, no folders."""
    foreign = foreign_entries(directory, EXPORT_FILES)
    if foreign:
        return f"it holds {listing(foreign)}"
    if not (directory / "config.json").is_file() or not any((directory / name).is_file() for name in WEIGHT_FILES):
        return f"it has no config.json and {' or '.join(WEIGHT_FILES)}"
    return None


# -- import ------------------------------------------------------------------------------------


def marian_to_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The ``mt`` checkpoint (a dict for ``torch.save``) of the Hugging Face Marian model in ``directory``.

    Raises ``CheckpointError`` (one line, naming the file and field) for what ``mt`` cannot represent.
    """
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    model_cfg = _model_config(directory / "config.json", config)
    marian_vocab = _marian_vocab(directory, config)
    weights = _read_weights(directory)

    size = len(marian_vocab)
    pad, eos = config.get("pad_token_id", size - 1), config.get("eos_token_id", 0)
    start = config.get("decoder_start_token_id", pad)
    unk = marian_vocab.index("<unk>") if "<unk>" in marian_vocab else None
    for field, value in (("pad_token_id", pad), ("eos_token_id", eos), ("decoder_start_token_id", start)):
        if not isinstance(value, int) or not 0 <= value < size:
            raise CheckpointError(f"{directory}/config.json: {field}={value!r}: expected an id below {size}")
    if unk is None:
        raise CheckpointError(f"{directory}/vocab.json: has no <unk> piece")
    specials = {pad, unk, eos, start}
    rest = [i for i in range(size) if i not in specials]
    taken = [marian_vocab[i] for i in rest if marian_vocab[i] in SPECIAL_PIECES]
    if taken:
        raise CheckpointError(f"{directory}/vocab.json: the ordinary piece {taken[0]!r} is a name mt keeps for its own")
    # Row r of mt comes from Marian's row rows[r]; PAD (row 0) is made afresh below.
    rows = torch.tensor([pad, unk, start, eos, *rest])
    vocab = [*SPECIAL_PIECES, *(marian_vocab[i] for i in rest)]

    tokenizer = Tokenizer(
        (directory / "source.spm").read_bytes(),
        (directory / "target.spm").read_bytes(),
        vocab=vocab,
        origin=str(directory),
    )
    model = Transformer(model_cfg, src_vocab_size=len(vocab), tgt_vocab_size=len(vocab))
    state = _mt_weights(weights, model_cfg, rows, directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if name not in _TIED]:
        raise CheckpointError(f"{directory}: weights do not fit the config ({(unexpected or missing)[0]})")
    languages = (
        _read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").exists() else {}
    )
    generation = (
        _read_json(directory / "generation_config.json") if (directory / "generation_config.json").exists() else {}
    )
    return {
        "state_dict": {WEIGHTS_PREFIX + name: tensor for name, tensor in model.state_dict().items()},
        "hyper_parameters": {
            "model": to_dict(model_cfg),
            "src_vocab_size": len(vocab),
            "tgt_vocab_size": len(vocab),
            "data": None,
            "search": _search_of(generation or config),
        },
        "tokenizer": tokenizer.to_state(),
        "imported_from": {
            "directory": str(directory),
            "source_lang": languages.get("source_lang"),
            "target_lang": languages.get("target_lang"),
        },
        "global_step": 0,
        "epoch": 0,
    }


_TIED = ("tgt_embed.tokens.weight", "output.weight")  # the same tensor as src_embed.tokens.weight


def _model_config(path: Path, config: dict) -> ModelConfig:
    def field(name: str, default: Any = None) -> Any:
        return config.get(name, default)

    if field("model_type") != "marian":
        raise CheckpointError(f"{path}: model_type={field('model_type')!r}: expected marian")
    for name, marian_value in UNSUPPORTED.items():
        if field(name, marian_value) != marian_value:
            raise CheckpointError(f"{path}: {name}={field(name)!r}: mt has no counterpart (Marian has {marian_value})")
    for encoder, decoder in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if field(encoder) != field(decoder):
            raise CheckpointError(
                f"{path}: {encoder}={field(encoder)} and {decoder}={field(decoder)}: mt needs them equal"
            )
    if not field("share_encoder_decoder_embeddings", True):
        raise CheckpointError(f"{path}: share_encoder_decoder_embeddings=false: mt needs one vocabulary for both sides")
    if not field("tie_word_embeddings", True):
        raise CheckpointError(f"{path}: tie_word_embeddings=false: mt ties the output layer to the shared embeddings")
    if field("decoder_vocab_size") not in (None, field("vocab_size")):
        raise CheckpointError(
            f"{path}: decoder_vocab_size={field('decoder_vocab_size')} differs from vocab_size={field('vocab_size')}"
        )
    activation = field("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{path}: activation_function={activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    return ModelConfig(
        d_model=field("d_model"),
        n_heads=field("encoder_attention_heads"),
        encoder_layers=field("encoder_layers"),
        decoder_layers=field("decoder_layers"),
        d_ff=field("encoder_ffn_dim"),
        dropout=field("dropout", 0.1),
        attention_dropout=field("attention_dropout", 0.0),
        activation_dropout=field("activation_dropout", 0.0),
        activation=ACTIVATIONS[activation],
        pre_norm=False,
        share_all_embeddings=True,
        share_decoder_input_output=True,
        positions="halves",
        scale_embeddings=bool(field("scale_embedding", False)),
        output_bias=True,
    )


def _marian_vocab(directory: Path, config: dict) -> list[str]:
    """``vocab.json``'s pieces by Marian id."""
    path = directory / "vocab.json"
    mapping = _read_json(path)
    size = config.get("vocab_size")
    ids = sorted(mapping.values()) if all(isinstance(i, int) for i in mapping.values()) else None
    if ids != list(range(len(mapping))) or len(mapping) != size:
        raise CheckpointError(f"{path}: expected ids 0..{size - 1} (vocab_size in config.json), each once")
    pieces = [""] * len(mapping)
    for piece, i in mapping.items():
        pieces[i] = piece
    return pieces


def _read_weights(directory: Path) -> dict[str, Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # safetensors and torch raise many kinds for damaged files
            raise CheckpointError(f"{path}: cannot be read ({type(error).__name__}: {str(error)[:200]})") from None
    raise CheckpointError(f"{directory}: holds no {' or '.join(WEIGHT_FILES)}")


def _mt_weights(weights: dict[str, Tensor], cfg: ModelConfig, rows: Tensor, directory: Path) -> dict[str, Tensor]:
    """``Transformer`` names and tensors from Marian's (rows: mt's embedding rows as Marian ids)."""

    def get(name: str) -> Tensor:
        if name not in weights:
            raise CheckpointError(f"{directory}: the weights lack {name}")
        return weights[name].float()

    def linear(into: str, *names: str) -> dict[str, Tensor]:
        return {
            f"{into}.weight": torch.cat([get(f"{n}.weight") for n in names]),
            f"{into}.bias": torch.cat([get(f"{n}.bias") for n in names]),
        }

    def norm(into: str, name: str) -> dict[str, Tensor]:
        return {f"{into}.weight": get(f"{name}.weight"), f"{into}.bias": get(f"{name}.bias")}

    shared = next(
        (weights[n] for n in ("model.shared.weight", "model.encoder.embed_tokens.weight") if n in weights), None
    )
    if shared is None:
        raise CheckpointError(f"{directory}: the weights lack model.shared.weight")
    embedding = shared.float()[rows]
    embedding[PAD_ID] = 0.0
    bias = weights.get("final_logits_bias", torch.zeros(1, len(shared))).float().reshape(-1)[rows]
    bias[PAD_ID] = PAD_LOGIT
    state = {"src_embed.tokens.weight": embedding, "output.bias": bias}
    for i in range(cfg.encoder_layers):
        hf, mt = f"model.encoder.layers.{i}", f"encoder_layers.{i}"
        attn = f"{hf}.self_attn"
        state |= linear(f"{mt}.self_attn.qkv", f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj")
        state |= linear(f"{mt}.self_attn.out", f"{attn}.out_proj")
        state |= norm(f"{mt}.attn_block.norm", f"{hf}.self_attn_layer_norm")
        state |= linear(f"{mt}.ffn.up", f"{hf}.fc1") | linear(f"{mt}.ffn.down", f"{hf}.fc2")
        state |= norm(f"{mt}.ffn_block.norm", f"{hf}.final_layer_norm")
    for i in range(cfg.decoder_layers):
        hf, mt = f"model.decoder.layers.{i}", f"decoder_layers.{i}"
        attn, cross = f"{hf}.self_attn", f"{hf}.encoder_attn"
        state |= linear(f"{mt}.self_attn.qkv", f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj")
        state |= linear(f"{mt}.self_attn.out", f"{attn}.out_proj")
        state |= norm(f"{mt}.self_block.norm", f"{hf}.self_attn_layer_norm")
        state |= linear(f"{mt}.cross_attn.q", f"{cross}.q_proj") | linear(
            f"{mt}.cross_attn.kv", f"{cross}.k_proj", f"{cross}.v_proj"
        )
        state |= linear(f"{mt}.cross_attn.out", f"{cross}.out_proj")
        state |= norm(f"{mt}.cross_block.norm", f"{hf}.encoder_attn_layer_norm")
        state |= linear(f"{mt}.ffn.up", f"{hf}.fc1") | linear(f"{mt}.ffn.down", f"{hf}.fc2")
        state |= norm(f"{mt}.ffn_block.norm", f"{hf}.final_layer_norm")
    return state


def _search_of(generation: dict) -> dict:
    """``mt``'s search settings from Hugging Face generation settings: its length penalty divides by the
    number of generated tokens (EOS included) to the power alpha, ``mt``'s ``average``."""
    return {
        "beam": int(generation.get("num_beams") or 1),
        "length_penalty": float(generation.get("length_penalty", 1.0)),
        "length_penalty_type": "average",
    }


# -- export ------------------------------------------------------------------------------------


def checkpoint_to_marian(checkpoint: str | Path, directory: str | Path) -> None:
    """Write the ``mt`` checkpoint as a Hugging Face Marian directory (which must not exist yet or be empty)."""
    from safetensors.torch import save

    loaded = load_checkpoint(checkpoint)
    cfg, tokenizer = loaded.model_config, loaded.tokenizer
    _check_exportable(Path(checkpoint), cfg, tokenizer)
    state = loaded.model.state_dict()
    if cfg.positions == "interleaved":
        state = positions_in_halves(state, cfg.d_model)
    vocab = marian_pieces(tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    weights = {
        "model.shared.weight": state["src_embed.tokens.weight"],
        "final_logits_bias": (state["output.bias"] if cfg.output_bias else torch.zeros(len(vocab)))[None],
    }

    def linear(into: str, name: str, parts: int = 1) -> None:
        for suffix in ("weight", "bias"):
            for target, tensor in zip(into.split("|"), state[f"{name}.{suffix}"].chunk(parts)):
                weights[f"{target}.{suffix}"] = tensor

    def norm(into: str, name: str) -> None:
        weights[f"{into}.weight"], weights[f"{into}.bias"] = state[f"{name}.weight"], state[f"{name}.bias"]

    for i in range(cfg.encoder_layers):
        hf, mt = f"model.encoder.layers.{i}", f"encoder_layers.{i}"
        linear(f"{hf}.self_attn.q_proj|{hf}.self_attn.k_proj|{hf}.self_attn.v_proj", f"{mt}.self_attn.qkv", 3)
        linear(f"{hf}.self_attn.out_proj", f"{mt}.self_attn.out")
        norm(f"{hf}.self_attn_layer_norm", f"{mt}.attn_block.norm")
        linear(f"{hf}.fc1", f"{mt}.ffn.up")
        linear(f"{hf}.fc2", f"{mt}.ffn.down")
        norm(f"{hf}.final_layer_norm", f"{mt}.ffn_block.norm")
    for i in range(cfg.decoder_layers):
        hf, mt = f"model.decoder.layers.{i}", f"decoder_layers.{i}"
        linear(f"{hf}.self_attn.q_proj|{hf}.self_attn.k_proj|{hf}.self_attn.v_proj", f"{mt}.self_attn.qkv", 3)
        linear(f"{hf}.self_attn.out_proj", f"{mt}.self_attn.out")
        norm(f"{hf}.self_attn_layer_norm", f"{mt}.self_block.norm")
        linear(f"{hf}.encoder_attn.q_proj", f"{mt}.cross_attn.q")
        linear(f"{hf}.encoder_attn.k_proj|{hf}.encoder_attn.v_proj", f"{mt}.cross_attn.kv", 2)
        linear(f"{hf}.encoder_attn.out_proj", f"{mt}.cross_attn.out")
        norm(f"{hf}.encoder_attn_layer_norm", f"{mt}.cross_block.norm")
        linear(f"{hf}.fc1", f"{mt}.ffn.up")
        linear(f"{hf}.fc2", f"{mt}.ffn.down")
        norm(f"{hf}.final_layer_norm", f"{mt}.ffn_block.norm")
    # Through mt's writer, as the other files: safetensors' own save_file makes the file readable by its owner only.
    with atomic_write(directory / "model.safetensors") as handle:
        handle.write(save({name: tensor.contiguous() for name, tensor in weights.items()}))

    activation = {"silu": "swish"}.get(cfg.activation, cfg.activation)
    config = {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": len(vocab),
        "decoder_vocab_size": len(vocab),
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.n_heads,
        "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": activation,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "scale_embedding": cfg.scale_embeddings,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "forced_eos_token_id": EOS_ID,
        "decoder_start_token_id": BOS_ID,
        "is_encoder_decoder": True,
        "dtype": "float32",
    }
    settings, dropped = search_to_generation(saved_search(loaded.search, {}))
    if dropped:
        log.warning("checkpoint %s: generation_config.json cannot hold its search's %s", checkpoint, "; ".join(dropped))
    generation = {
        "decoder_start_token_id": BOS_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "forced_eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "bad_words_ids": [[PAD_ID], [BOS_ID]],  # mt's search never outputs them
        "early_stopping": True,  # as mt's beam search: a source is done with num_beams finished hypotheses
        **settings,
    }
    imported = _read_imported(Path(checkpoint))
    tokenizer_config = {
        "source_lang": imported.get("source_lang") or (loaded.data or {}).get("src_lang"),
        "target_lang": imported.get("target_lang") or (loaded.data or {}).get("tgt_lang"),
        "unk_token": "<unk>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "model_max_length": 512,
        "separate_vocabs": False,
        "tokenizer_class": "MarianTokenizer",
    }
    files = {
        "config.json": config,
        "generation_config.json": generation,
        "tokenizer_config.json": tokenizer_config,
        "vocab.json": {piece: i for i, piece in enumerate(vocab)},
        "special_tokens_map.json": {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>"},
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / "source.spm").write_bytes(tokenizer.src_model)
    (directory / "target.spm").write_bytes(tokenizer.tgt_model)


def search_to_generation(search: SearchConfig) -> tuple[dict[str, Any], list[str]]:
    """``generate()``'s settings for ``mt``'s ``search``, and what of it they cannot say (each with what
    ``generate()`` does instead).

    ``generate()``'s beam score is the log-probability over (generated tokens, EOS included) ** length_penalty:
    ``mt``'s ``average``, and ``none`` with 0. Its ``max_length`` counts the decoder's start token, so
    ``max_len + 1`` allows ``mt``'s ``max_len`` output tokens (EOS included), and ``min_new_tokens`` forbids EOS
    at the same steps as ``min_len``.
    """
    alpha = float(search.length_penalty)
    no_penalty = search.length_penalty_type == "none" or alpha == 0
    settings: dict[str, Any] = {"num_beams": search.beam, "length_penalty": 0.0 if no_penalty else alpha}
    dropped = []
    if search.length_penalty_type == "gnmt" and not no_penalty:
        dropped.append(
            f"length_penalty_type=gnmt (score / ((5 + length) / 6) ** {alpha:g}): generate() divides by "
            f"length ** {alpha:g} instead (length_penalty_type=average)"
        )
    ceiling = min(search.max_len_b, search.max_len) if search.max_len_a == 0 else search.max_len
    settings["max_length"] = ceiling + 1
    if search.max_len_a > 0 and search.max_len_b < search.max_len:
        dropped.append(
            f"max_len_a={search.max_len_a:g}, max_len_b={search.max_len_b} (at most {search.max_len_a:g} x source "
            f"tokens + {search.max_len_b} output tokens): generate() stops at {ceiling} tokens only"
        )
    if search.min_len > 0:
        settings["min_new_tokens"] = search.min_len
    if search.sampling:
        dropped.append(f"sampling=true: generate() searches with num_beams={search.beam} instead")
    return settings, dropped


# Linear layers that read the residual stream (their input columns are its dimensions) and that write it.
_READS_RESIDUAL = ("qkv", "q", "kv", "up")
_WRITES_RESIDUAL = ("out", "down")


def positions_in_halves(state: dict[str, Tensor], d_model: int) -> dict[str, Tensor]:
    """The weights of the same network with its positions laid out in halves instead of interleaved.

    The interleaved table is the halves table with its columns permuted (sin of frequency i at 2i, cos at
    2i+1), so permuting the model width the same way everywhere (embedding columns, LayerNorm parameters, the
    input columns of layers that read the residual stream, the output rows of those that write it) gives a
    network computing exactly the same function with Marian's layout; attention heads are untouched.
    """
    order = torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])
    permuted = {}
    for name, tensor in state.items():
        parts = name.split(".")
        layer, kind = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", parts[-1])
        if name.endswith("tokens.weight") or name == "output.weight":
            tensor = tensor[:, order]
        elif layer == "norm" or layer.endswith("_norm"):
            tensor = tensor[order]
        elif layer in _READS_RESIDUAL and kind == "weight":
            tensor = tensor[:, order]
        elif layer in _WRITES_RESIDUAL:
            tensor = tensor[order]
        permuted[name] = tensor
    return permuted


def _check_exportable(path: Path, cfg: ModelConfig, tokenizer: Tokenizer) -> None:
    """Refuse, in one line naming the field, what a Marian model cannot hold."""
    if cfg.pre_norm:
        raise CheckpointError(f"checkpoint {path}: model.pre_norm=true: Marian models are post-norm")
    if not cfg.share_all_embeddings:
        raise CheckpointError(
            f"checkpoint {path}: model.share_all_embeddings=false: Marian models share one embedding for both sides"
        )
    if tokenizer.src_pieces() != tokenizer.tgt_pieces():
        raise CheckpointError(f"checkpoint {path}: the two sides' vocabularies differ: Marian needs one vocab.json")
    pieces = marian_pieces(tokenizer)
    if tuple(pieces[:4]) != SPECIAL_PIECES:
        raise CheckpointError(f"checkpoint {path}: its vocabulary does not start {list(SPECIAL_PIECES)}")
    twice = next((piece for piece, count in Counter(pieces).items() if count > 1), None)
    if twice is not None:
        raise CheckpointError(f"checkpoint {path}: the piece {twice!r} would be in vocab.json twice")


def marian_pieces(tokenizer: Tokenizer) -> list[str]:
    """The pieces of ``vocab.json`` by id: the tokenizer's, with a multilingual model's target-language tokens
    (``<2de>``) written as OPUS-MT's codes (``>>de<<``), which ``MarianTokenizer`` reads at the start of a
    source (``">>de<< A dog."``) and import turns back into language tokens."""
    pieces = tokenizer.tgt_pieces()
    for lang, i in tokenizer.language_tokens().items():
        pieces[i] = language_code(lang)
    return pieces


def _read_imported(path: Path) -> dict:
    from mt.model.checkpoint import read_checkpoint

    return read_checkpoint(path).get("imported_from") or {}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not JSON ({error})") from None
