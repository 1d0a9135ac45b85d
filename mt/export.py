"""``python -m mt.export checkpoint=PATH format=ctranslate2 output=DIR [quantization=int8]``.

Converts a checkpoint into a CTranslate2 Transformer model (``pip install -e '.[export]'``): the
same weights in CTranslate2's spec (fused QKV and cross-attention KV map one to one, sinusoidal
positions are written out as a table), the SentencePiece pieces as vocabularies, and EOS appended
to every source as ``mt`` does. Translate with ``ctranslate2.Translator(DIR).translate_batch`` on
SentencePiece pieces; ``scripts/bench_decode.py`` compares its speed and BLEU with ``mt``'s search. A
multilingual model's sources start with the target language's token, as in ``mt``: ``mt_export.json`` lists them
(``"language_tokens": {"de": "<2de>", ...}``; an imported OPUS-MT model's codes, ``{"deu": ">>deu<<"}``), and
``["<2de>", *pieces]`` translates into German.

Every option of ``ModelConfig`` has a counterpart in the spec (pre- or post-norm, ReLU, GELU or SiLU, tied
or separate embeddings, either layout of the positions, an output bias, any sizes), so nothing is refused; the
one limit is the position table, written for ``MAX_POSITIONS`` positions (longer inputs are an error in
CTranslate2, not in ``mt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mt.atomic import foreign_entries, refuse_to_overwrite, refuse_to_replace, replacing_directory
from mt.cli import entry_point
from mt.compat import ctranslate2_convert
from mt.config import ExportConfig, ModelConfig
from mt.data.tokenizer import Tokenizer
from mt.errors import RunError, listing
from mt.model.checkpoint import load_checkpoint
from mt.model.layers import sinusoidal_positions

MAX_POSITIONS = 1024  # position table written into the model: the longest source or output it handles
# What an export holds, and so what a directory that overwrite=true may replace holds: CTranslate2's model and
# vocabularies (.json in 4.x, .txt before), the tokenizer folder and mt_export.json.
EXPORT_FILES = tuple(
    ["model.bin", "config.json", "mt_export.json"]
    + [f"{side}_vocabulary.{ext}" for side in ("shared", "source", "target") for ext in ("json", "txt")]
)
EXPORT_FOLDERS = {"tokenizer": ("spm.model", "spm.src.model", "spm.tgt.model", "vocab.json")}


def not_an_export(directory: Path) -> str | None:
    """Why the non-empty ``directory`` is not a previous export (a run directory, a checkpoints folder, ...),
    or None: an export holds ``model.bin``, ``mt_export.json`` and the other ``EXPORT_FILES`` only."""
    foreign = foreign_entries(directory, EXPORT_FILES, EXPORT_FOLDERS)
    if foreign:
        return f"it holds {listing(foreign)}"
    if not (directory / "model.bin").is_file() or not (directory / "mt_export.json").is_file():
        return "it has no model.bin and mt_export.json"
    return None


def build_spec(model_cfg: ModelConfig, state: dict[str, torch.Tensor], tokenizer: Tokenizer):
    """A ``ctranslate2.specs.TransformerSpec`` holding the weights of ``state``."""
    from ctranslate2.specs import common_spec, transformer_spec

    activation = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "silu": common_spec.Activation.SWISH,
    }[model_cfg.activation]
    spec = transformer_spec.TransformerSpec.from_config(
        (model_cfg.encoder_layers, model_cfg.decoder_layers),
        model_cfg.n_heads,
        pre_norm=model_cfg.pre_norm,
        activation=activation,
    )
    spec.config.add_source_eos = True  # mt's encoder reads "sentence </s>"
    spec.config.decoder_start_token = "<s>"
    spec.config.layer_norm_epsilon = 1e-5  # torch.nn.LayerNorm's default

    def weight(name: str):
        return state[name].float().numpy()

    def linear(target, name: str, bias: bool = True) -> None:
        target.weight = weight(f"{name}.weight")
        if bias:
            target.bias = weight(f"{name}.bias")

    def norm(target, name: str) -> None:
        target.gamma = weight(f"{name}.weight")
        target.beta = weight(f"{name}.bias")

    positions = sinusoidal_positions(MAX_POSITIONS, model_cfg.d_model, layout=model_cfg.positions).numpy()
    for side, embed in ((spec.encoder, "src_embed"), (spec.decoder, "tgt_embed")):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = weight(f"{embed}.tokens.weight")
        side.scale_embeddings = model_cfg.scale_embeddings
        side.position_encodings.encodings = positions
    if model_cfg.pre_norm:
        norm(spec.encoder.layer_norm, "encoder_norm")
        norm(spec.decoder.layer_norm, "decoder_norm")
    for i, layer in enumerate(spec.encoder.layer):
        scope = f"encoder_layers.{i}"
        linear(layer.self_attention.linear[0], f"{scope}.self_attn.qkv")
        linear(layer.self_attention.linear[1], f"{scope}.self_attn.out")
        norm(layer.self_attention.layer_norm, f"{scope}.attn_block.norm")
        linear(layer.ffn.linear_0, f"{scope}.ffn.up")
        linear(layer.ffn.linear_1, f"{scope}.ffn.down")
        norm(layer.ffn.layer_norm, f"{scope}.ffn_block.norm")
    for i, layer in enumerate(spec.decoder.layer):
        scope = f"decoder_layers.{i}"
        linear(layer.self_attention.linear[0], f"{scope}.self_attn.qkv")
        linear(layer.self_attention.linear[1], f"{scope}.self_attn.out")
        norm(layer.self_attention.layer_norm, f"{scope}.self_block.norm")
        linear(layer.attention.linear[0], f"{scope}.cross_attn.q")
        linear(layer.attention.linear[1], f"{scope}.cross_attn.kv")
        linear(layer.attention.linear[2], f"{scope}.cross_attn.out")
        norm(layer.attention.layer_norm, f"{scope}.cross_block.norm")
        linear(layer.ffn.linear_0, f"{scope}.ffn.up")
        linear(layer.ffn.linear_1, f"{scope}.ffn.down")
        norm(layer.ffn.layer_norm, f"{scope}.ffn_block.norm")
    spec.decoder.projection.weight = weight("output.weight")
    has_bias = "output.bias" in state
    spec.decoder.projection.bias = (
        weight("output.bias") if has_bias else torch.zeros(len(state["output.weight"])).numpy()
    )

    spec.register_source_vocabulary(tokenizer.src_pieces())
    spec.register_target_vocabulary(tokenizer.tgt_pieces())
    return spec


def export_ctranslate2(checkpoint: str | Path, output: str | Path, *, quantization: str | None = None) -> Path:
    """Write the CTranslate2 model of ``checkpoint`` into the directory ``output``; return it. An existing
    ``output`` is replaced only if it is empty or an earlier export, and does not hold ``checkpoint``."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunError(f"output={output}: a file; expected a directory name for the CTranslate2 model")
    refuse_to_replace(output, source=checkpoint, kind="CTranslate2 export", foreign=not_an_export)

    loaded = load_checkpoint(checkpoint)
    spec = build_spec(loaded.model_config, loaded.model.state_dict(), loaded.tokenizer)
    with replacing_directory(output) as tmp:
        ctranslate2_convert(spec, str(tmp), quantization=quantization)
        loaded.tokenizer.save(tmp / "tokenizer")  # the SentencePiece model(s) that make the pieces
        pieces = loaded.tokenizer.src_pieces()
        metadata = {
            "checkpoint": str(checkpoint),
            "quantization": quantization,
            # a multilingual model's target-language tokens: put the one asked for before each source's pieces
            "language_tokens": {lang: pieces[i] for lang, i in sorted(loaded.tokenizer.language_tokens().items())},
        }
        (tmp / "mt_export.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    return output


@entry_point("export", ExportConfig)
def main(config: ExportConfig) -> None:
    output = Path(config.output)
    refuse_to_overwrite(output, overwrite=config.overwrite, directory=True)
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise RunError("format=ctranslate2 needs the ctranslate2 package: pip install -e '.[export]'") from None
    export_ctranslate2(config.checkpoint, output, quantization=config.quantization)
    print(json.dumps({"output": str(output), "format": config.format, "quantization": config.quantization}))


if __name__ == "__main__":
    main()
