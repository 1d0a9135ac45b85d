"""Checkpoint files as models: the one home of ``torch.load`` for ``.ckpt`` files.

A checkpoint written by training holds the network's weights (``state_dict``, names prefixed
``model.``), the configs it was built and trained with (``hyper_parameters``), the tokenizer's
SentencePiece models, and training state (optimizer, loops, random states). Decoding, evaluation,
export, averaging and the resume checks read it here, without Lightning or mt's training code:
``load_checkpoint`` builds the ``Transformer`` and ``Tokenizer`` straight from the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mt.config import ModelConfig, from_dict
from mt.data.tokenizer import Tokenizer
from mt.errors import CheckpointError, ConfigError, RunError, TokenizerError, listing
from mt.model.transformer import Transformer

WEIGHTS_PREFIX = "model."  # the network's parameter names inside the training module's state_dict


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw contents of a checkpoint file (tensors memory-mapped, on the CPU).

    Loads with ``weights_only=True``: checkpoints hold plain types, tensors and bytes only, so nothing
    in them can run code, and no class of Lightning's or mt's must be importable to read them.
    Raises ``CheckpointError`` (one line, naming the file) for a missing, truncated or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(
            p.relative_to(path).as_posix() for p in (*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt"))
        )
        hint = f"the checkpoints in it: {listing(inside, most=4)}" if inside else "it holds no .ckpt file"
        raise CheckpointError(f"checkpoint {path}: a directory, not a checkpoint file ({hint})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as error:  # torch raises many kinds for truncated or foreign files
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]  # torch appends advice
        raise CheckpointError(
            f"checkpoint {path}: cannot be loaded, truncated or not a checkpoint ({type(error).__name__}: {first})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded, holds no state_dict (not an mt checkpoint?)")
    return checkpoint


@dataclass
class Checkpoint:
    """A trained model as decoding needs it; ``data`` is the data config (a plain dict) it was trained on and
    ``search`` the search config it was trained and tuned with (plain dicts; None in files that lack them)."""

    model: Transformer | None  # None where only the tokenizer and configs were read (load_checkpoint(weights=False))
    tokenizer: Tokenizer
    model_config: ModelConfig
    data: dict | None = None
    search: dict | None = None

    path: str = "checkpoint"
    imported_target: str | None = None  # an imported Hugging Face model's target language (its tokenizer_config)

    @property
    def target_languages(self) -> list[str]:
        """The languages the model was trained to translate into: the targets of its data's corpora."""
        data = self.data or {}
        targets = {entry.get("tgt_lang") or data.get("tgt_lang") for entry in data.get("corpora") or []}
        return sorted(t for t in (targets or {data.get("tgt_lang")}) if t)

    @property
    def tgt_lang(self) -> str | None:
        """The one language the model translates into (None for a model of several, or without a data config)."""
        languages = self.target_languages
        return languages[0] if len(languages) == 1 else None

    def target_language(self, tgt_lang: str | None) -> str | None:
        """The language ``tgt_lang=`` asks for, or the one the model translates into (an imported model's: the
        ``target_lang`` of its ``tokenizer_config.json``, e.g. ``zh`` for opus-mt-en-zh): for BLEU's tokenizer."""
        if tgt_lang is not None:
            return tgt_lang
        return self.tgt_lang or (self.imported_target if self.data is None else None)

    def source_prefix(self, tgt_lang: str | None) -> list[int]:
        """The ids to put before each source so that the model translates into ``tgt_lang``:

        - a model trained with target-language tokens (``data.lang_tokens``): the token of ``tgt_lang``, or of
          the one target language it was trained on when ``tgt_lang`` is None;
        - an imported multilingual OPUS-MT model (no data config): its code ``>>xx<<`` for ``tgt_lang=xx``;
          without ``tgt_lang`` nothing, since its sources may start with the code themselves (``>>fr<< ...``, as
          ``MarianTokenizer`` reads them);
        - any other model (one fine-tuned from an imported one without ``data.lang_tokens`` included): nothing.

        Raises:
            ConfigError: a language the model was not trained to translate into, or none given to a model of
                several.
        """
        imported = self.data is None and self.tokenizer.vocab is not None
        trained_with_tokens = bool((self.data or {}).get("lang_tokens"))
        languages = self.tokenizer.language_tokens() if imported or trained_with_tokens else {}
        if not languages:
            known = self.target_languages
            if tgt_lang is not None and known and tgt_lang not in known:
                raise ConfigError(f"tgt_lang={tgt_lang}: {self.path} translates into {', '.join(known)} only")
            return []
        if tgt_lang is None:
            if imported:
                return []
            trained = [lang for lang in self.target_languages if lang in languages]
            if len(trained) != 1 and len(languages) != 1:
                raise ConfigError(f"{self.path} translates into {listing(languages)}: say which with tgt_lang=")
            tgt_lang = trained[0] if len(trained) == 1 else next(iter(languages))
        if tgt_lang not in languages:
            if imported:
                raise ConfigError(
                    f"tgt_lang={tgt_lang}: {self.path} has the language codes {listing(languages)} only "
                    f"(>>{tgt_lang}<< is not in its vocab.json); BLEU's tokenizer is metrics.bleu_tokenize="
                )
            raise ConfigError(
                f"tgt_lang={tgt_lang}: {self.path} was trained to translate into {listing(languages)} only"
            )
        return [languages[tgt_lang]]


def load_checkpoint(path: str | Path, *, weights: bool = True) -> Checkpoint:
    """The model (in eval mode, on the CPU) and tokenizer stored in ``path``; ``weights=False``: the tokenizer
    and configs alone, ``model`` None (for the checks to make before decoding, without building the model).

    Raises ``CheckpointError`` (one line, naming the file) for a missing, truncated or foreign file,
    weights that do not fit the stored hyperparameters, and a tokenizer whose vocabulary does not fit
    the model's embeddings.
    """
    path = Path(path)
    stored = read_checkpoint(path)
    hyper = stored.get("hyper_parameters") or {}
    if "tokenizer" not in stored:
        raise CheckpointError(f"checkpoint {path}: holds no tokenizer")
    try:
        tokenizer = Tokenizer.from_state(stored["tokenizer"], origin=str(path))
        model_config = from_dict(ModelConfig, hyper.get("model", {}))
        if not weights:
            return Checkpoint(
                None, tokenizer, model_config, hyper.get("data"), hyper.get("search"), str(path), _imported(stored)
            )
        model = Transformer(
            model_config, src_vocab_size=hyper["src_vocab_size"], tgt_vocab_size=hyper["tgt_vocab_size"]
        )
    except TokenizerError as error:
        raise CheckpointError(f"checkpoint {path}: its tokenizer cannot be used ({str(error)[:200]})") from None
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: its model hyperparameters are not usable ({error})") from None
    weights = {
        name[len(WEIGHTS_PREFIX) :]: tensor
        for name, tensor in stored["state_dict"].items()
        if name.startswith(WEIGHTS_PREFIX)
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(_weights_mismatch(path, error)) from None
    _check_vocabularies(path, model, tokenizer)
    return Checkpoint(
        model=model.eval(),
        tokenizer=tokenizer,
        model_config=model_config,
        data=hyper.get("data"),
        search=hyper.get("search"),
        path=str(path),
        imported_target=_imported(stored),
    )


def _imported(stored: dict) -> str | None:
    """The target language an imported model's checkpoint records (``mt.convert``), if any."""
    imported = stored.get("imported_from")
    target = imported.get("target_lang") if isinstance(imported, dict) else None
    return target if isinstance(target, str) and target else None


def checkpoint_configs(path: str | Path) -> Checkpoint:
    """``path``'s tokenizer and configs without its weights (``model`` None): what decoding it will be asked."""
    return load_checkpoint(path, weights=False)


def load_translator(checkpoint: str | Path, ensemble: Sequence[str | Path] = ()) -> tuple[nn.Module, Checkpoint]:
    """The model that decodes ``checkpoint`` (an ``Ensemble`` with the ``ensemble`` checkpoints, if
    any, which must share its tokenizer), and the loaded ``checkpoint`` (tokenizer, data config)."""
    from mt.model.ensemble import Ensemble

    loaded = load_checkpoint(checkpoint)
    if not ensemble:
        return loaded.model, loaded
    members = [loaded.model]
    for path in ensemble:
        other = load_checkpoint(path)
        if other.tokenizer.to_state() != loaded.tokenizer.to_state():
            raise CheckpointError(
                f"checkpoint {path}: its tokenizer differs from that of {checkpoint}; an ensemble needs one vocabulary"
            )
        members.append(other.model)
    return Ensemble(members).eval(), loaded


def _weights_mismatch(path: Path, error: RuntimeError) -> str:
    """One line saying which stored weight does not fit the model its hyperparameters describe."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
    shapes = re.match(
        r"size mismatch for (\S+): copying a param with shape torch.Size\((\[.*?\])\) from checkpoint, "
        r"the shape in current model is torch.Size\((\[.*?\])\)",
        detail,
    )
    if shapes:
        name, stored, expected = shapes.groups()
        detail = f"{name} has shape {stored}, its hyperparameters give {expected}"
    return (
        f"checkpoint {path}: its weights do not fit its model hyperparameters (a different model size?): {detail[:200]}"
    )


def _check_vocabularies(path: Path, model: Transformer, tokenizer: Tokenizer) -> None:
    """The stored tokenizer must produce exactly the ids the stored embeddings have rows for."""
    sides = (
        ("source", tokenizer.src_vocab_size, "source embedding", model.src_embed.tokens.num_embeddings),
        ("target", tokenizer.tgt_vocab_size, "output layer", model.output.out_features),
    )
    for side, tokenizer_size, layer, model_size in sides:
        if tokenizer_size != model_size:
            raise CheckpointError(
                f"checkpoint {path}: its tokenizer has a {side} vocabulary of {tokenizer_size} pieces but the "
                f"model's {layer} has {model_size} rows (tokenizer and weights from different runs?)"
            )


# -- averaging ---------------------------------------------------------------------------------

KEPT_KEYS = ("state_dict", "hyper_parameters", "tokenizer", "epoch", "global_step", "pytorch-lightning_version")


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The step checkpoints (``step{N}.ckpt``) of ``run_dir``, by step (past 10^7 steps too)."""
    found = [path for path in Path(run_dir, "checkpoints").glob("step*.ckpt") if path.stem[4:].isdigit()]
    return sorted(found, key=lambda path: int(path.stem[4:]))


def newest_checkpoints(run_dir: str | Path, count: int, option: str = "last") -> list[Path]:
    """The ``count`` step checkpoints of ``run_dir`` with the highest steps, oldest first (``option``: the
    setting that asked for ``count``, for the message)."""
    if not Path(run_dir).is_dir():
        raise RunError(f"run={run_dir}: no such directory")
    found = step_checkpoints(run_dir)
    if len(found) < count:
        raise RunError(
            f"{run_dir}/checkpoints holds {len(found)} step*.ckpt files, fewer than {option}={count} "
            f"(train with trainer.keep_checkpoints=N to keep them)"
        )
    return found[-count:]


# The model options that decide its parameters' names and shapes (or their meaning); dropout may change.
ARCHITECTURE = (
    "positions",
    "scale_embeddings",
    "output_bias",
    "d_model",
    "n_heads",
    "encoder_layers",
    "decoder_layers",
    "d_ff",
    "activation",
    "pre_norm",
    "share_all_embeddings",
    "share_decoder_input_output",
)


def refuse_to_replace_checkpoint(output: Path, *, mark: str, command: str) -> None:
    """Refuse an existing ``output`` (``overwrite=true`` given) that is not a checkpoint an earlier ``command``
    wrote (one holding ``mark``): a training run's checkpoint would lose what resumes it, or what averages and
    reports read as its steps."""
    if not output.exists():
        return
    if output.is_dir():
        raise RunError(f"output={output}: a directory; expected a checkpoint file name")
    try:
        ours = mark in read_checkpoint(output)
    except CheckpointError:
        raise RunError(f"output={output}: not a checkpoint; choose another output") from None
    if not ours:
        raise RunError(
            f"output={output}: a checkpoint that no earlier {command} wrote (a training run's?); choose another output"
        )


def architecture(checkpoint: dict) -> dict:
    """The ``ARCHITECTURE`` options of a checkpoint's model (not the dropouts, which a resume may change within
    one run); an option the checkpoint does not record (written before it existed) is its default."""
    model = from_dict(ModelConfig, checkpoint.get("hyper_parameters", {}).get("model") or {})
    return {name: getattr(model, name) for name in ARCHITECTURE}
