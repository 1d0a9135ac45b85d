"""Typed configuration: the schema every Hydra YAML file is checked against.

Hydra composes YAML into these dataclasses (structured configs), so an unknown or misspelt key, or
a value of the wrong type, is an error at the entry point. ``__post_init__`` checks the values that
types cannot (``d_model`` divisible by heads, a positive beam). Below the entry points only these
plain objects travel, never a ``DictConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from mt.errors import ConfigError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_threads(threads: int | None) -> None:
    _require(threads is None or threads >= 1, f"threads={threads}: expected >= 1, or null for torch's default")


# Decoding's precisions: 32, full fp32 weights and arithmetic; bf16, the same weights under bf16 autocast (matrix
# products in bfloat16, softmax and log-probabilities in float32), for GPUs of bf16 tensor cores.
DECODE_PRECISIONS = ("32", "bf16")


def _require_decode_precision(precision: str) -> None:
    _require(precision in DECODE_PRECISIONS, f"precision={precision!r}: expected one of {', '.join(DECODE_PRECISIONS)}")


@dataclass
class SplitNames:
    """Names of the three splits in the corpus source (file stems or hub split names)."""

    train: str = "train"
    valid: str = "valid"
    test: str = "test"


@dataclass
class CorpusSplits:
    """A corpus entry's split names: each one unset is ``data.splits``' (filled in by ``DataConfig``)."""

    train: str | None = None
    valid: str | None = None
    test: str | None = None


@dataclass
class CorpusConfig:
    """One corpus of a mixture (``data.corpora``): the fields it changes of ``data``'s (unset: ``data``'s own),
    its share of each epoch and its tag.

    Setting ``path`` or ``hub_name`` replaces both of ``data``'s (a corpus is local files or a hub dataset).
    """

    name: str | None = None  # default: "{src_lang}-{tgt_lang}", or "{...}.{n}" where directions repeat
    path: str | None = None
    format: str | None = None
    splits: CorpusSplits | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    # Relative share of the pairs an epoch draws (all corpora or none; none: each in proportion to its size,
    # unless data.temperature is set).
    weight: float | None = None
    # A token put before each training source of this corpus, e.g. <BT> for back-translated data
    # (Caswell et al. 2019); a SentencePiece symbol of its own, never split.
    tag: str | None = None
    # Validate on its valid split (one corpus per direction; synthetic corpora usually have none).
    valid: bool = True


@dataclass
class DataConfig:
    """Where a parallel corpus comes from, how it is cleaned and batched.

    A corpus comes from local files when ``path`` is set (``{split}.{lang}[.gz]`` text pairs, or one
    ``{split}.tsv`` / ``{split}.jsonl`` per split), else from the Hugging Face hub ``hub_name``.
    ``corpora`` mixes several (``mt/data/mixture.py``): each entry changes some of these fields.
    """

    name: str = MISSING
    src_lang: str = "de"
    tgt_lang: str = "en"
    # Local files.
    path: str | None = None
    format: str = "text"  # text | tsv | jsonl
    splits: SplitNames = field(default_factory=SplitNames)
    # Hugging Face hub (used when path is null).
    hub_name: str | None = None
    hub_config: str | None = None
    hub_splits: SplitNames = field(default_factory=lambda: SplitNames(train="train", valid="validation", test="test"))
    # Cleaning of the training split, in subword tokens (EOS excluded).
    min_len: int = 1
    max_len: int = 128
    max_len_ratio: float = 3.0
    # Batching.
    max_tokens: int = 4096
    num_workers: int = 0
    # Pad every batch's source and target lengths up to a multiple of this (8 or 16: whole tensor-core tiles, few
    # distinct shapes); max_tokens counts the padded positions. 1: no extra padding.
    pad_to_multiple: int = 1
    # Encoded-corpus cache (Arrow + memory-mapped arrays), keyed by data and tokenizer; default:
    # <run dir>/data. Point runs at one folder to share it (data/wmt14_de_en.yaml does).
    cache_dir: str | None = None
    preprocess_workers: int = 1  # processes encoding the corpus (datasets.map num_proc)
    # Several corpora in one run; empty: the one corpus above. An epoch draws round(p_i * N) pairs from corpus i
    # (N: the pairs of all corpora), p_i from the weights, else n_i^(1/temperature) normalised, else n_i / N.
    corpora: list[CorpusConfig] = field(default_factory=list)
    temperature: float | None = None
    # Start every source with the target language's token <2xx> (Johnson et al. 2017): one model, many
    # directions; translate and evaluate then take tgt_lang=.
    lang_tokens: bool = False

    def __post_init__(self) -> None:
        _require(self.format in ("text", "tsv", "jsonl"), f"data.format={self.format!r}: expected text, tsv or jsonl")
        _require(self.src_lang != self.tgt_lang, f"data.src_lang and data.tgt_lang are both {self.src_lang!r}")
        _require(
            1 <= self.min_len <= self.max_len,
            f"data.min_len={self.min_len} / max_len={self.max_len}: expected 1 <= min_len <= max_len",
        )
        _require(self.max_len_ratio >= 1.0, f"data.max_len_ratio={self.max_len_ratio}: expected >= 1")
        # A batch must hold at least one sentence of the longest allowed length (+ BOS/EOS, + the source's
        # language token and tag).
        prefix = int(self.lang_tokens) + int(any(c.tag for c in self.corpora))
        extra = f" + {prefix} for the language token and tag" if prefix else ""
        _require(self.pad_to_multiple >= 1, f"data.pad_to_multiple={self.pad_to_multiple}: expected >= 1")
        longest = -(-(self.max_len + 2 + prefix) // self.pad_to_multiple) * self.pad_to_multiple
        padded = f", padded to a multiple of {self.pad_to_multiple}" if self.pad_to_multiple > 1 else ""
        _require(
            self.max_tokens >= longest,
            f"data.max_tokens={self.max_tokens} is below the longest allowed sentence "
            f"(data.max_len={self.max_len} + 2{extra}{padded}): no batch could hold it",
        )
        _require(
            self.temperature is None or 0 < self.temperature < float("inf"),  # NaN fails both
            f"data.temperature={self.temperature}: expected a finite number > 0 (1: in proportion to size; "
            f"large: uniform; small: mostly the largest corpus)",
        )
        weights = [c.weight for c in self.corpora]
        if self.corpora:
            _require(
                all(w is None for w in weights) or all(w is not None for w in weights),
                f"data.corpora weights {weights}: give a weight to every corpus or to none",
            )
            _require(
                self.temperature is None or weights[0] is None,
                "data.temperature and data.corpora weights both set: give one",
            )
        # SentencePiece's built-in pieces (mt.data.tokenizer.SPECIAL_PIECES; this module imports no layer of mt): a
        # tag of one of these names would be that id (padding: masked out; BOS, EOS; unknown), not a tag of its own.
        special = ("<pad>", "<unk>", "<s>", "</s>")
        # A split name an entry leaves out is data's, not SplitNames' default (new objects: the caller's stay as given).
        self.corpora = [
            dataclasses.replace(
                c,
                splits=CorpusSplits(
                    **{k: getattr(self.splits, k) if v is None else v for k, v in dataclasses.asdict(c.splits).items()}
                ),
            )
            if c.splits is not None and None in dataclasses.asdict(c.splits).values()
            else c
            for c in self.corpora
        ]
        for i, corpus in enumerate(self.corpora):
            _require(
                corpus.name is None or (corpus.name and all(ch.isalnum() or ch in "-_." for ch in corpus.name)),
                f"data.corpora[{i}].name={corpus.name!r}: expected letters, digits, '-', '_' or '.' (it names files)",
            )
            _require(
                corpus.weight is None or 0 < corpus.weight < float("inf"),
                f"data.corpora[{i}].weight={corpus.weight}: expected a finite number > 0",
            )
            _require(
                corpus.format is None or corpus.format in ("text", "tsv", "jsonl"),
                f"data.corpora[{i}].format={corpus.format!r}: expected text, tsv or jsonl",
            )
            tag = corpus.tag
            _require(
                tag is None or (len(tag) > 2 and tag[0] == "<" and tag[-1] == ">" and " " not in tag),
                f"data.corpora[{i}].tag={tag!r}: expected a token such as <BT> (in angle brackets, no spaces)",
            )
            _require(
                tag is None or not tag.startswith("<2"),
                f"data.corpora[{i}].tag={tag!r}: <2...> tokens are the target-language tokens (data.lang_tokens)",
            )
            _require(
                tag not in special,
                f"data.corpora[{i}].tag={tag!r}: {', '.join(special)} are SentencePiece's padding, unknown, BOS and "
                f"EOS tokens; choose another, such as <BT>",
            )


@dataclass
class TokenizerConfig:
    """SentencePiece: trained on the training split on first use, then stored with the run."""

    model_type: str = "unigram"  # unigram | bpe
    vocab_size: int = 8000
    joint: bool = True  # one vocabulary for source and target
    character_coverage: float = 1.0
    # Pairs sampled for training SentencePiece: 200k pairs keep a 32k vocabulary under ~1 GiB of memory.
    input_sentence_size: int = 200_000

    def __post_init__(self) -> None:
        _require(
            self.model_type in ("unigram", "bpe"), f"tokenizer.model_type={self.model_type!r}: expected unigram or bpe"
        )
        _require(self.vocab_size >= 16, f"tokenizer.vocab_size={self.vocab_size}: expected >= 16")
        _require(  # SentencePiece's own range (trainer_interface.cc)
            0.98 <= self.character_coverage <= 1.0,
            f"tokenizer.character_coverage={self.character_coverage}: expected 0.98 <= character_coverage <= 1 "
            f"(SentencePiece's range; 0.9995 for languages of many characters)",
        )
        _require(
            self.input_sentence_size >= 1,
            f"tokenizer.input_sentence_size={self.input_sentence_size}: expected >= 1 (pairs sampled to train it)",
        )


@dataclass
class ModelConfig:
    """Transformer sizes (Vaswani et al. 2017); see conf/model/*.yaml."""

    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation: str = "relu"  # relu | gelu | silu (swish, as OPUS-MT's Marian models)
    pre_norm: bool = True
    share_all_embeddings: bool = True  # source, target and output; needs a joint vocabulary
    share_decoder_input_output: bool = True
    # Sinusoidal positions: sine and cosine interleaved (the Transformer paper's layout) or in halves, all
    # sines then all cosines (Marian's: what imported Hugging Face Marian models need).
    positions: str = "interleaved"  # interleaved | halves
    scale_embeddings: bool = True  # token embeddings times sqrt(d_model) before the positions are added
    output_bias: bool = False  # a bias on the vocabulary projection (Marian's final logits bias)

    def __post_init__(self) -> None:
        _require(self.d_model > 0 and self.n_heads > 0, "model.d_model and model.n_heads must be positive")
        _require(
            self.d_model % self.n_heads == 0,
            f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}",
        )
        _require(
            self.encoder_layers >= 1 and self.decoder_layers >= 1,
            "model.encoder_layers and decoder_layers must be >= 1",
        )
        _require(
            self.activation in ("relu", "gelu", "silu"),
            f"model.activation={self.activation!r}: expected relu, gelu or silu",
        )
        _require(
            self.positions in ("interleaved", "halves"),
            f"model.positions={self.positions!r}: expected interleaved or halves",
        )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"model.{name}={value}: expected 0 <= value < 1")


@dataclass
class OptimConfig:
    """AdamW with a warm-up and a decay (``mt/training/schedules.py``), label smoothing, gradient clipping, and
    an optional exponential moving average of the weights."""

    lr: float = 1e-3  # the peak learning rate, reached at the end of the warm-up
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    warmup_steps: int = 4000
    schedule: str = "inverse_sqrt"  # inverse_sqrt | linear | cosine | constant
    lr_floor: float = 0.0  # the decay never goes below this learning rate
    # What linear and cosine decays spend to reach the floor: steps (trainer.max_steps) or time (trainer.max_time,
    # counted in training seconds across resumes, so a time-limited run ends at its floor).
    decay_budget: str = "steps"
    # Exponential moving average of the weights, used for validation, best.ckpt and everything decoded from a
    # checkpoint (0: off; e.g. 0.999). Its first updates average faster: decay min(ema_decay, (1+n)/(10+n)).
    ema_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 disables clipping
    # A step whose loss is NaN/inf is skipped (no update); this many in a row stop the run.
    max_consecutive_nonfinite: int = 10

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"optim.lr={self.lr}: expected > 0")
        _require(self.warmup_steps >= 1, f"optim.warmup_steps={self.warmup_steps}: expected >= 1")
        _require(
            0.0 <= self.label_smoothing < 1.0, f"optim.label_smoothing={self.label_smoothing}: expected 0 <= value < 1"
        )
        _require(
            self.max_consecutive_nonfinite >= 1,
            f"optim.max_consecutive_nonfinite={self.max_consecutive_nonfinite}: expected >= 1",
        )
        _require(
            len(self.betas) == 2 and all(0.0 <= beta < 1.0 for beta in self.betas),
            f"optim.betas={list(self.betas)}: expected two values in [0, 1)",
        )
        _require(self.eps > 0, f"optim.eps={self.eps}: expected > 0")
        _require(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay}: expected >= 0")
        _require(self.clip_norm >= 0, f"optim.clip_norm={self.clip_norm}: expected >= 0 (0 disables clipping)")
        _require(
            self.schedule in ("inverse_sqrt", "linear", "cosine", "constant"),
            f"optim.schedule={self.schedule!r}: expected inverse_sqrt, linear, cosine or constant",
        )
        _require(0.0 <= self.lr_floor <= self.lr, f"optim.lr_floor={self.lr_floor}: expected 0 <= lr_floor <= optim.lr")
        _require(
            self.decay_budget in ("steps", "time"), f"optim.decay_budget={self.decay_budget!r}: expected steps or time"
        )
        _require(0.0 <= self.ema_decay < 1.0, f"optim.ema_decay={self.ema_decay}: expected 0 <= value < 1 (0: off)")


@dataclass
class SearchConfig:
    """Decoding: beam size, length penalty, maximum output length ``a * |src| + b``."""

    beam: int = 5
    length_penalty: float = 1.0  # alpha
    length_penalty_type: str = "gnmt"  # gnmt: ((5+len)/6)^alpha | average: len^alpha | none
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_len: int = 512  # a ceiling on output tokens (EOS included), whatever the source's length
    # Sources longer than this many subwords are cut (with a warning): one very long line would otherwise
    # hold its batch for minutes (attention grows with the square of the length).
    max_src_len: int = 1024
    min_len: int = 0  # no EOS before this many tokens (unless the maximum length is reached)
    nbest: int = 1
    max_tokens: int = 8000  # padded source tokens x rows_per_source of the decoding batches in flight
    # CPU: batches decoded at once, each on one thread (0: as many as torch's threads, e.g. `threads=`;
    # 1: one batch at a time on all threads). GPUs and sampling decode one batch at a time.
    parallel_batches: int = 0

    # Sampling instead of search: draw each token from the filtered, temperature-scaled distribution.
    sampling: bool = False
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    @property
    def rows_per_source(self) -> int:
        """Decoder rows a source takes: its ``beam`` hypotheses, or one when sampling."""
        return 1 if self.sampling else self.beam

    def __post_init__(self) -> None:
        _require(self.beam >= 1, f"beam={self.beam}: expected >= 1")
        _require(1 <= self.nbest <= self.beam, f"nbest={self.nbest}: expected 1 <= nbest <= beam={self.beam}")
        _require(
            self.length_penalty_type in ("gnmt", "average", "none"),
            f"length_penalty_type={self.length_penalty_type!r}: expected gnmt, average or none",
        )
        _require(
            math.isfinite(self.length_penalty), f"search.length_penalty={self.length_penalty}: expected a finite number"
        )
        _require(
            0 <= self.max_len_a < float("inf"),  # NaN fails both
            f"search.max_len_a={self.max_len_a}: expected a finite number >= 0 (search.max_len caps every output)",
        )
        _require(self.max_len_b >= 1, f"search.max_len_b={self.max_len_b}: expected >= 1")
        _require(self.max_tokens >= 1, f"search.max_tokens={self.max_tokens}: expected >= 1")
        _require(self.max_len >= 1, f"search.max_len={self.max_len}: expected >= 1")
        _require(self.max_src_len >= 1, f"search.max_src_len={self.max_src_len}: expected >= 1")
        _require(self.parallel_batches >= 0, f"search.parallel_batches={self.parallel_batches}: expected >= 0")
        _require(self.min_len >= 0, f"min_len={self.min_len}: expected >= 0")
        _require(self.top_k >= 0, f"top_k={self.top_k}: expected >= 0")
        _require(0.0 < self.top_p <= 1.0, f"top_p={self.top_p}: expected 0 < top_p <= 1")
        _require(
            1e-6 <= self.temperature < float("inf"),
            f"temperature={self.temperature}: expected a finite number >= 1e-6 (the sharpest: top_k=1, greedy)",
        )
        _require(0 <= self.seed < 2**32, f"search.seed={self.seed}: expected 0 <= seed < 2**32")
        _require(
            not (self.sampling and self.nbest > 1),
            f"nbest={self.nbest} with sampling=true: sampling draws one translation a sentence (expected nbest=1)",
        )


@dataclass
class MetricsConfig:
    """How translations are scored (sacreBLEU): in validation, after training, by evaluate and report."""

    # sacreBLEU's BLEU tokenizer; null: sacreBLEU's choice for the target language (zh for Chinese, ja-mecab for
    # Japanese, ko-mecab for Korean, 13a for the rest). Recorded in the BLEU signature.
    bleu_tokenize: str | None = None


@dataclass
class LoggerConfig:
    """Experiment loggers, all Lightning's own. The CSV log (``csv/``) is always written: the learning curve,
    resuming and ``mt.report`` read it."""

    tensorboard: bool = True  # tb/
    mlflow: bool = False
    wandb: bool = False
    experiment: str = "mt"  # the MLflow experiment and the W&B project
    mlflow_tracking_uri: str | None = None  # null: sqlite:///RUN_DIR/mlflow.db
    wandb_mode: str = "offline"  # offline | online

    def __post_init__(self) -> None:
        _require(
            self.wandb_mode in ("offline", "online"),
            f"logger.wandb_mode={self.wandb_mode!r}: expected offline or online",
        )


SELECTION_METRICS = {"bleu": ("val/bleu", "max"), "chrf": ("val/chrf", "max"), "loss": ("val/loss", "min")}


@dataclass
class ValidationConfig:
    """What validation does besides the loss: decode the validation set and score it."""

    decode: str = "greedy"  # greedy | beam | none
    beam: int = 4
    max_sentences: int | None = None  # decode only the first N validation sentences
    # What chooses best.ckpt, stops early, and what a Hydra sweep optimises: bleu | chrf | loss;
    # null: bleu when validation decodes, else loss.
    metric: str | None = None

    @property
    def selection(self) -> tuple[str, str]:
        """The logged name of the selection metric and its direction (max or min)."""
        return SELECTION_METRICS[self.metric or ("loss" if self.decode == "none" else "bleu")]

    def __post_init__(self) -> None:
        _require(
            self.decode in ("greedy", "beam", "none"),
            f"validation.decode={self.decode!r}: expected greedy, beam or none",
        )
        _require(
            self.metric is None or self.metric in SELECTION_METRICS,
            f"validation.metric={self.metric!r}: expected one of {', '.join(SELECTION_METRICS)} or null",
        )
        _require(
            not (self.metric in ("bleu", "chrf") and self.decode == "none"),
            f"validation.metric={self.metric} needs validation.decode=greedy or beam (decode=none scores no text)",
        )
        _require(self.beam >= 1, f"validation.beam={self.beam}: expected >= 1")
        _require(
            self.max_sentences is None or self.max_sentences >= 1,
            f"validation.max_sentences={self.max_sentences}: expected >= 1 or null",
        )


# Lightning's names of the precisions mt is tested in, and auto: bf16-mixed where the hardware multiplies bf16
# natively, else 32-true (mt.device.resolve_precision).
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "auto")


@dataclass
class TrainerConfig:
    """Options passed to ``lightning.Trainer`` plus checkpointing and early stopping."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = -1
    max_epochs: int | None = None
    max_time: str | None = None  # DD:HH:MM:SS
    val_check_interval: Any | None = None  # steps (int) or fraction of an epoch (float)
    check_val_every_n_epoch: int | None = 1
    limit_val_batches: Any | None = None
    log_every_n_steps: int = 50
    accumulate_grad_batches: int = 1  # effective batch: data.max_tokens x devices x num_nodes x this
    num_sanity_val_steps: int = 0
    fast_dev_run: bool = False
    checkpoint_every_n_steps: int | None = None  # also refresh last.ckpt every N steps (for resuming)
    keep_checkpoints: int = 0  # also keep the last N validation checkpoints as step*.ckpt (for mt.average)
    early_stopping_patience: int | None = None  # validations without a better BLEU
    enable_progress_bar: bool = True
    deterministic: bool = False
    # Distributed runs: a collective that waits longer than this (a dead or stuck rank) fails the run.
    collective_timeout_s: int = 1800
    # On SIGUSR1/SIGUSR2 (SLURM's warning before a time limit) save last.ckpt and requeue the job;
    # on SIGTERM save and exit. false leaves the signals to their defaults.
    handle_signals: bool = True
    # GPU speed-ups. tf32: fp32 matmuls on TF32 tensor cores (Ampere and later; no effect elsewhere).
    # compile: train through torch.compile of each encoder/decoder layer (one graph per layer kind,
    # shapes dynamic; weights and checkpoints unchanged; "inductor" needs a C++/Triton toolchain).
    tf32: bool = True
    compile: bool = False
    compile_backend: str = "inductor"
    # profile_steps=N: record training steps profile_after+1 .. profile_after+N of rank 0 with torch.profiler into
    # <run dir>/profile/ (trace.json.gz and summary.txt: device busy share, top kernels, syncs, data wait).
    profile_steps: int = 0
    profile_after: int = 20

    def __post_init__(self) -> None:
        _require(
            self.max_steps == -1 or self.max_steps >= 1,
            f"trainer.max_steps={self.max_steps}: expected >= 1, or -1 for no limit",
        )
        _require(
            self.max_epochs in (None, -1) or self.max_epochs >= 1,
            f"trainer.max_epochs={self.max_epochs}: expected >= 1, or -1 / null for no limit",
        )
        _require(self.num_nodes >= 1, f"trainer.num_nodes={self.num_nodes}: expected >= 1")
        for name in ("check_val_every_n_epoch", "checkpoint_every_n_steps"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"trainer.{name}={value}: expected >= 1 or null")
        _require(self.keep_checkpoints >= 0, f"trainer.keep_checkpoints={self.keep_checkpoints}: expected >= 0")
        _require(
            self.early_stopping_patience is None or self.early_stopping_patience >= 0,
            f"trainer.early_stopping_patience={self.early_stopping_patience}: expected >= 0 or null (no early stop)",
        )
        interval = self.val_check_interval
        if isinstance(interval, float) and interval > 1 and interval.is_integer():  # 1000.0 (YAML): batches, as
            self.val_check_interval = interval = int(interval)  # Lightning reads it
        if isinstance(interval, (int, float)) and not isinstance(interval, bool):
            _require(
                interval >= 1 if isinstance(interval, int) else 0.0 < interval <= 1.0,
                f"trainer.val_check_interval={interval}: expected a number of batches >= 1 or a fraction of an "
                "epoch in (0, 1]",
            )
        _require(
            self.accumulate_grad_batches >= 1,
            f"trainer.accumulate_grad_batches={self.accumulate_grad_batches}: expected >= 1",
        )
        _require(
            self.collective_timeout_s >= 1, f"trainer.collective_timeout_s={self.collective_timeout_s}: expected >= 1"
        )
        _require(
            self.profile_steps >= 0 and self.profile_after >= 0,
            f"trainer.profile_steps={self.profile_steps} / profile_after={self.profile_after}: expected >= 0",
        )
        _require(self.log_every_n_steps >= 1, f"trainer.log_every_n_steps={self.log_every_n_steps}: expected >= 1")
        if isinstance(self.val_check_interval, int) and not isinstance(self.val_check_interval, bool):
            # Validation saves last.ckpt: it must fall after an update, not inside an accumulation window.
            _require(
                self.val_check_interval % self.accumulate_grad_batches == 0,
                f"trainer.val_check_interval={self.val_check_interval} (batches) is not a multiple of "
                f"trainer.accumulate_grad_batches={self.accumulate_grad_batches}",
            )
        elif self.val_check_interval not in (None, 1.0):  # a fraction of an epoch, or a time
            _require(
                self.accumulate_grad_batches == 1,
                f"trainer.val_check_interval={self.val_check_interval} with trainer.accumulate_grad_batches="
                f"{self.accumulate_grad_batches}: validation (and last.ckpt) could fall inside an accumulation "
                f"window; give the interval in batches, a multiple of {self.accumulate_grad_batches}",
            )
        _require(
            self.precision in PRECISIONS,
            f"trainer.precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}",
        )
        if self.max_time is not None:
            parts = str(self.max_time).split(":")
            _require(
                len(parts) == 4 and all(p.isdigit() for p in parts),
                f"trainer.max_time={self.max_time!r}: expected DD:HH:MM:SS",
            )


@dataclass
class TrainConfig:
    """The root of ``conf/train.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    resume: str | None = None  # null | auto | path to a checkpoint
    # Start a new run from a checkpoint's weights and tokenizer, with a fresh optimiser, schedule and data
    # position (fine-tuning); the model settings must be the checkpoint's.
    init_from: str | None = None
    test_after_training: bool = True  # decode the test split with the best checkpoint and print scores
    threads: int | None = None  # torch intra-op threads on CPU; null = torch's default

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**32, f"seed={self.seed}: expected 0 <= seed < 2**32")
        if self.init_from:  # "~/..." quoted on the command line reaches here unexpanded
            self.init_from = os.path.expanduser(self.init_from)
        if self.resume not in (None, "auto"):
            self.resume = os.path.expanduser(self.resume)
        _require_threads(self.threads)
        _require(
            not (self.init_from and self.resume not in (None, "auto")),
            f"init_from={self.init_from} starts a new run from a checkpoint's weights and resume={self.resume} "
            f"continues another run from its state: give one (with resume=auto, init_from applies only while the "
            f"run directory has no last.ckpt)",
        )
        optim, trainer = self.optim, self.trainer
        if optim.schedule in ("linear", "cosine") and optim.decay_budget == "steps":
            _require(
                trainer.max_steps > optim.warmup_steps,
                f"optim.schedule={optim.schedule} decays over trainer.max_steps, which must exceed "
                f"optim.warmup_steps={optim.warmup_steps} (it is {trainer.max_steps}); or set optim.decay_budget=time",
            )
        if optim.schedule in ("linear", "cosine") and optim.decay_budget == "time":
            _require(
                trainer.max_time is not None,
                "optim.decay_budget=time decays over trainer.max_time, which is not set",
            )
        if self.model.share_all_embeddings:
            _require(
                self.tokenizer.joint,
                "model.share_all_embeddings=true needs tokenizer.joint=true (one vocabulary for both sides)",
            )


@dataclass
class EvaluateConfig:
    """The root of ``conf/evaluate.yaml``: score a checkpoint on its test split or on given files."""

    checkpoint: str = MISSING
    ensemble: list[str] = field(default_factory=list)  # more checkpoints to decode with it (one vocabulary)
    source: str | None = None
    reference: str | None = None
    references: list[str] = field(default_factory=list)  # several references of source= (reference= is one)
    split: str | None = None  # the checkpoint's data's train | valid | test split (default test), not with source=
    output: str | None = None
    overwrite: bool = False
    # Another system's output of the same sentences: paired bootstrap resampling against it.
    baseline: str | None = None
    beam: int | None = None  # overrides search.beam
    # A model of several directions (data.corpora): the language to translate into, and (for its own test split,
    # where several directions share a target) the source language.
    tgt_lang: str | None = None
    src_lang: str | None = None
    # Decoding: the checkpoint's own search settings (saved in training), with what the command line sets here.
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    threads: int | None = None
    precision: str = "32"  # decoding's: 32 or bf16 (autocast; for a GPU)

    def __post_init__(self) -> None:
        _require(self.split in (None, "train", "valid", "test"), f"split={self.split!r}: expected train, valid or test")
        _require_threads(self.threads)
        _require_decode_precision(self.precision)
        _require(self.beam is None or self.beam >= 1, f"beam={self.beam}: expected >= 1")
        if self.source is not None:  # what picks among the checkpoint's own data would be dropped without a word
            _require(self.split is None, f"split={self.split} names a split of the checkpoint's data: not with source=")
            _require(
                self.src_lang is None,
                f"src_lang={self.src_lang} picks a direction of the checkpoint's test split: not with source= "
                f"(tgt_lang= says what its sentences are translated into)",
            )
        _require(
            not (self.reference is not None and self.references),
            "give reference=FILE or references=[FILE,...], not both",
        )
        if self.reference is not None or self.references:
            _require(self.source is not None, "reference= needs source= (the file it translates)")

    @property
    def reference_files(self) -> list[str]:
        return [self.reference] if self.reference is not None else list(self.references)


@dataclass
class TranslateConfig:
    """The root of ``conf/translate.yaml``: translate stdin (or ``input=``) to stdout."""

    checkpoint: str = MISSING
    ensemble: list[str] = field(default_factory=list)  # more checkpoints to decode with it (one vocabulary)
    input: str | None = None
    beam: int | None = None
    nbest: int | None = None  # K > 1 writes TSV lines: sentence index, score, hypothesis (K per sentence)
    # Lines read before they are translated and written: null is 1 when stdin is a terminal (each line answered
    # as it is typed) and 5000 otherwise (batches of similar lengths decode fastest). buffer=1: interactive,
    # also through a pipe.
    buffer: int | None = None
    # A file instead of stdout: written in order, resumable (the same command goes on after a kill), sharded
    # across the processes of torchrun or a SLURM job array (input= needed). buffer= is then the chunk size.
    output: str | None = None
    overwrite: bool = False  # output=: start again over an existing output
    tgt_lang: str | None = None  # the language to translate into, for a model of several (data.lang_tokens)
    search: SearchConfig = field(default_factory=SearchConfig)
    threads: int | None = None
    precision: str = "32"  # decoding's: 32 or bf16 (autocast; for a GPU)

    def __post_init__(self) -> None:
        _require(self.beam is None or self.beam >= 1, f"beam={self.beam}: expected >= 1")
        _require(self.nbest is None or self.nbest >= 1, f"nbest={self.nbest}: expected >= 1")
        _require(self.buffer is None or self.buffer >= 1, f"buffer={self.buffer}: expected >= 1")
        _require_threads(self.threads)
        _require_decode_precision(self.precision)
        _require(self.output is None or self.input is not None, "output= needs input=FILE (a file can be resumed)")


@dataclass
class AverageConfig:
    """The root of ``conf/average.yaml``: average the parameters of several checkpoints."""

    checkpoints: list[str] = field(default_factory=list)
    run: str | None = None  # with last=N: the N newest step checkpoints of this run directory
    last: int | None = None
    output: str = MISSING
    overwrite: bool = False

    def __post_init__(self) -> None:
        _require(
            bool(self.checkpoints) != (self.run is not None), "give either checkpoints=[a,b,...] or run=DIR last=N"
        )
        _require(
            self.run is None or (self.last is not None and self.last >= 1),
            f"run= needs last=N with N >= 1 (got last={self.last})",
        )
        _require(
            self.last is None or self.run is not None,
            f"last={self.last} goes with run=DIR; checkpoints=[...] averages exactly the files given",
        )


@dataclass
class ReportConfig:
    """The root of ``conf/report.yaml``: decode and score every checkpoint of one run or several."""

    run: str | None = None
    runs: list[str] = field(default_factory=list)
    average_last: int = 0  # also report the average of the last N step checkpoints (trainer.keep_checkpoints)
    test_splits: list[str] = field(default_factory=list)  # split names of the checkpoints' data; [] = its test split
    include_data_splits: bool = True  # false: only the sources/references files
    sources: list[str] = field(default_factory=list)  # plain-text test sets, with references in the same order
    # One entry per source: a reference file, or a list of files (several references of that source).
    references: list[Any] = field(default_factory=list)
    # The checkpoint the others are tested against by paired bootstrap (a row's label, e.g. best, or an end of
    # RUN_PATH/CHECKPOINT naming one row); null: none.
    baseline: str | None = None
    output_dir: str | None = None  # default: the (first) run directory
    tgt_lang: str | None = None  # the language sources= are translated into, for a model of several
    # Decoding: each checkpoint's own search settings, with what the command line sets here.
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    threads: int | None = None
    precision: str = "32"  # decoding's: 32 or bf16 (autocast; for a GPU)

    def __post_init__(self) -> None:
        _require(bool(self.run) != bool(self.runs), "give either run=DIR or runs=[DIR,...]")
        _require(self.average_last >= 0, f"average_last={self.average_last}: expected >= 0")
        _require_threads(self.threads)
        _require_decode_precision(self.precision)
        _require(
            len(self.sources) == len(self.references),
            f"sources= has {len(self.sources)} files but references= has {len(self.references)}",
        )
        for entry in self.references:
            _require(
                isinstance(entry, str) or (bool(entry) and all(isinstance(f, str) for f in entry)),
                f"references: expected a file or a list of files for each source, got {entry!r}",
            )

    @property
    def reference_files(self) -> list[list[str]]:
        """For each source, its reference files."""
        return [[entry] if isinstance(entry, str) else list(entry) for entry in self.references]


@dataclass
class ExportConfig:
    """The root of ``conf/export.yaml``: convert a checkpoint for another inference engine."""

    checkpoint: str = MISSING
    output: str = MISSING
    format: str = "ctranslate2"
    quantization: str | None = None  # CTranslate2's weight types (CT2_QUANTIZATIONS); None keeps float32
    overwrite: bool = False

    def __post_init__(self) -> None:
        _require(self.format == "ctranslate2", f"format={self.format!r}: expected ctranslate2")
        _require(
            self.quantization is None or self.quantization in CT2_QUANTIZATIONS,
            f"quantization={self.quantization!r}: expected one of {', '.join(CT2_QUANTIZATIONS)}",
        )


@dataclass
class ConvertConfig:
    """The root of ``conf/convert.yaml``: a Hugging Face Marian directory to an ``mt`` checkpoint, or back;
    the direction follows ``input`` (a directory with ``config.json``, or a ``.ckpt`` file)."""

    input: str = MISSING
    output: str = MISSING
    overwrite: bool = False


CT2_QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


@dataclass
class TrialsConfig:
    """The root of ``conf/trials.yaml``: the table of a Hydra multirun's trials of mt.train."""

    dir: str = MISSING  # the sweep directory (hydra.sweep.dir)
    output: str | None = None  # default: DIR/trials.md
    overwrite: bool = False  # replace an existing output= (an earlier table only)


def max_time_seconds(max_time: str | None) -> float | None:
    """``trainer.max_time`` (DD:HH:MM:SS) in seconds."""
    if max_time is None:
        return None
    days, hours, minutes, seconds = (int(part) for part in str(max_time).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def search_overrides(given: SearchConfig, fields: set[str] | None, beam: int | None = None) -> dict:
    """What the command line set of the search: the ``fields`` of ``given`` (all of it when ``fields`` is None:
    a ``search=`` preset was chosen), and ``beam=`` on top. Applied over a checkpoint's saved search."""
    values = dataclasses.asdict(given)
    chosen = dict(values) if fields is None else {name: values[name] for name in fields if name in values}
    if beam is not None:
        chosen["beam"] = beam
    return chosen


def saved_search(saved: dict | None, overrides: dict) -> SearchConfig:
    """The search a checkpoint was trained and tuned with (its saved ``search``; the defaults for a file without
    one), with ``overrides`` (``search_overrides``) winning."""
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    values = {k: v for k, v in (saved or {}).items() if k in names}  # fields of older versions are dropped
    return from_dict(SearchConfig, {**values, **overrides})


def with_nbest(search: SearchConfig, nbest: int | None) -> SearchConfig:
    """``search`` returning ``nbest`` hypotheses (the beam widened to at least that many)."""
    if nbest is None:
        return search
    return dataclasses.replace(search, nbest=nbest, beam=max(search.beam, nbest))


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore, so YAML files are validated against them."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    # The direction a sweeper optimises the value mt.train returns in (conf/hydra/sweeper/mt_optuna.yaml).
    if not OmegaConf.has_resolver("mt_direction"):
        OmegaConf.register_new_resolver(
            "mt_direction",
            lambda metric, decode: (
                "minimize" if ValidationConfig(decode=decode, metric=metric).selection[1] == "min" else "maximize"
            ),
        )
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="translate_schema", node=TranslateConfig)
    store.store(name="average_schema", node=AverageConfig)
    store.store(name="report_schema", node=ReportConfig)
    store.store(name="export_schema", node=ExportConfig)
    store.store(name="convert_schema", node=ConvertConfig)
    store.store(name="trials_schema", node=TrialsConfig)


def from_dict(cls: type, values: dict) -> Any:
    """A config dataclass from a plain dict (e.g. checkpoint hyperparameters), validated like YAML."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), values))


def to_dict(config: Any) -> dict:
    """A config dataclass as plain Python containers (for hyperparameters and YAML)."""
    return dataclasses.asdict(config)
