"""Translating many sentences with a trained model: length-sorted batches, search, detokenization.

Shared by validation, ``mt.evaluate`` and ``mt.translate``; ``load_checkpoint`` is the one way a
``.ckpt`` file becomes a model (with its tokenizer) outside training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from mt.batching import collate, token_batches
from mt.config import SearchConfig
from mt.search import Decoder, Hypothesis, beam_search, greedy_search, sample
from mt.tokenizer import Tokenizer, TokenizerError

if TYPE_CHECKING:
    from mt.module import TranslationModule


class CheckpointError(ValueError):
    """A checkpoint file that is missing or cannot be loaded."""


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> TranslationModule:
    """The ``TranslationModule`` (model and tokenizer) stored in ``path``, in eval mode.

    Raises ``CheckpointError`` (one line, naming the file) for a missing, truncated or foreign file,
    weights that do not fit the stored hyperparameters, and a tokenizer whose vocabulary does not fit
    the model's embeddings.
    """
    from mt.module import TranslationModule

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        module = TranslationModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(_load_failure(path, error)) from None
    if module.tokenizer is None:
        raise CheckpointError(f"checkpoint {path}: holds no tokenizer")
    _check_vocabularies(path, module)
    return module.eval()


def load_translator(checkpoint: str | Path, ensemble: Sequence[str | Path] = ()) -> tuple[Decoder, TranslationModule]:
    """The model that decodes ``checkpoint`` (an ``Ensemble`` with the ``ensemble`` checkpoints, if
    any, which must share its tokenizer), and the module of ``checkpoint`` (tokenizer, data config)."""
    from mt.ensemble import Ensemble

    module = load_checkpoint(checkpoint)
    if not ensemble:
        return module.model, module
    members = [module.model]
    for path in ensemble:
        other = load_checkpoint(path)
        if other.tokenizer.to_state() != module.tokenizer.to_state():
            raise CheckpointError(
                f"checkpoint {path}: its tokenizer differs from that of {checkpoint}; an ensemble needs one vocabulary"
            )
        members.append(other.model)
    return Ensemble(members).eval(), module


def _load_failure(path: Path, error: Exception) -> str:
    """One line saying why ``path`` could not be loaded."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, RuntimeError) and lines and lines[0].startswith("Error(s) in loading state_dict"):
        detail = lines[1] if len(lines) > 1 else lines[0]
        shapes = re.match(
            r"size mismatch for (\S+): copying a param with shape torch.Size\((\[.*?\])\) from checkpoint, "
            r"the shape in current model is torch.Size\((\[.*?\])\)",
            detail,
        )
        if shapes:
            name, stored, expected = shapes.groups()
            detail = f"{name} has shape {stored}, its hyperparameters give {expected}"
        return (
            f"checkpoint {path}: its weights do not fit its model hyperparameters "
            f"(a different model size?): {detail[:200]}"
        )
    first = lines[0] if lines else ""
    if isinstance(error, TokenizerError):
        return f"checkpoint {path}: its tokenizer cannot be used ({first[:200]})"
    first = first.split(". ")[0][:200]  # the first sentence; torch appends paragraphs of advice
    return f"checkpoint {path}: cannot be loaded, truncated or not a checkpoint ({type(error).__name__}: {first})"


def _check_vocabularies(path: Path, module: TranslationModule) -> None:
    """The stored tokenizer must produce exactly the ids the stored embeddings have rows for."""
    sides = (
        ("source", module.tokenizer.src_vocab_size, "source embedding", module.model.src_embed.tokens.num_embeddings),
        ("target", module.tokenizer.tgt_vocab_size, "output layer", module.model.output.out_features),
    )
    for side, tokenizer_size, layer, model_size in sides:
        if tokenizer_size != model_size:
            raise CheckpointError(
                f"checkpoint {path}: its tokenizer has a {side} vocabulary of {tokenizer_size} pieces but the "
                f"model's {layer} has {model_size} rows (tokenizer and weights from different runs?)"
            )


def search_batch(
    model: Decoder,
    src_ids: torch.Tensor,
    src_pad_mask: torch.Tensor,
    search: SearchConfig,
    generator: torch.Generator | None = None,
    *,
    return_scores: bool = True,
) -> list[list[Hypothesis]]:
    """n-best hypotheses of one batch: sampling (one each, drawn from ``generator``, else from a new one
    seeded with ``search.seed``) if asked, else greedy when beam and n-best are 1, else beam search.
    ``return_scores=False`` lets greedy and sampling skip scoring (their scores are then ``None``);
    beam search scores anyway, since it ranks by them."""
    options = dict(
        max_len_a=search.max_len_a,
        max_len_b=search.max_len_b,
        length_penalty_alpha=search.length_penalty,
        length_penalty_type=search.length_penalty_type,
        min_len=search.min_len,
    )
    if search.sampling:
        generator = generator or sampling_generator(search, src_ids.device)
        hyps = sample(
            model,
            src_ids,
            src_pad_mask,
            top_k=search.top_k,
            top_p=search.top_p,
            temperature=search.temperature,
            generator=generator,
            return_scores=return_scores,
            **options,
        )
        return [[hyp] for hyp in hyps]
    if search.beam == 1 and search.nbest == 1:
        hyps = greedy_search(model, src_ids, src_pad_mask, return_scores=return_scores, **options)
        return [[hyp] for hyp in hyps]
    return beam_search(model, src_ids, src_pad_mask, beam=search.beam, nbest=search.nbest, **options)


def sampling_generator(search: SearchConfig, device: torch.device | str) -> torch.Generator:
    """The random stream of sampling: seeded with ``search.seed``, one for a whole decoding run, so that
    its batches (and ``mt.translate``'s chunks) draw on, rather than repeat, each other's numbers."""
    return torch.Generator(device=device).manual_seed(search.seed)


def decode_ids(
    model: Decoder,
    src: Sequence[Sequence[int]],
    search: SearchConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "decode",
    generator: torch.Generator | None = None,
    return_scores: bool = True,
) -> list[list[Hypothesis]]:
    """n-best hypotheses for every source (subword ids without EOS), in input order; unscored (scores
    ``None``) from greedy or sampling with ``return_scores=False``, for callers that read only tokens.

    Sources are sorted by length, so similar lengths decode together, and cut into batches. On a CPU,
    ``parallel_batches`` of them decode at once, each on one thread (``torch.set_num_threads(1)`` for
    the call): a small batch's matrix products and many small operators use one core better than two
    cores share them. ``search.max_tokens`` bounds the padded source tokens of the batches in flight
    times the rows a source takes (``beam``, or one when sampling): it bounds the decoder's rows, cache
    and memory whatever the beam. On 2 CPU cores the default 8,000 (two batches of 4,000 greedy, of
    800 source tokens at beam 5) was the fastest measured; a GPU wants larger batches.
    """
    lengths = np.fromiter((len(s) + 1 for s in src), dtype=np.int64, count=len(src))
    order = np.argsort(lengths, kind="stable")
    workers = parallel_batches(search, device)
    budget = max(search.max_tokens // (search.rows_per_source * workers), int(lengths.max(initial=1)))
    if search.sampling and generator is None:
        generator = sampling_generator(search, device)

    def decode_batch(batch_ids: np.ndarray) -> tuple[np.ndarray, list[list[Hypothesis]]]:
        batch = collate([src[i] for i in batch_ids], None, batch_ids).to(device)
        hyps = search_batch(model, batch.src_ids, batch.src_pad_mask, search, generator, return_scores=return_scores)
        return batch_ids, hyps

    results: list[list[Hypothesis]] = [[] for _ in src]
    with tqdm(total=len(src), desc=desc, unit="sent", disable=not progress, leave=False) as bar:
        for batch_ids, hyps in _map_on_threads(decode_batch, token_batches(order, lengths, budget), workers):
            for i, nbest in zip(batch_ids.tolist(), hyps):
                results[i] = nbest
            bar.update(len(batch_ids))
    return results


def parallel_batches(search: SearchConfig, device: torch.device | str) -> int:
    """How many batches ``decode_ids`` decodes at once: one off the CPU and when sampling (whose batches
    draw on one random stream, in order); else ``search.parallel_batches``, 0 meaning torch's thread count."""
    if torch.device(device).type != "cpu" or search.sampling:
        return 1
    return search.parallel_batches or torch.get_num_threads()


def _map_on_threads(function, items: list, workers: int):
    """``map(function, items)``, in order; with ``workers`` > 1 on as many threads of one torch thread
    each, which inherit the caller's CPU autocast (autocast and inference mode are per thread)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def in_worker(item):
        with torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
            return function(item)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            yield from pool.map(in_worker, items)
    finally:
        torch.set_num_threads(threads)


def translate(
    model: Decoder,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    search: SearchConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    generator: torch.Generator | None = None,
    return_scores: bool = True,
) -> list[list[tuple[str, float | None]]]:
    """Detokenized n-best translations with scores, one list per sentence, in input order.

    Empty (or whitespace-only) sentences are not decoded: their translation is the empty string.
    ``generator``: sampling's random stream, to continue it across calls (``sampling_generator``).
    ``return_scores=False``: greedy and sampling skip scoring, and their scores (and those of empty
    sentences) are ``None``.
    """
    nonempty = [i for i, s in enumerate(sentences) if s.strip()]
    src = tokenizer.encode_src([sentences[i] for i in nonempty])
    hyps = decode_ids(
        model,
        src,
        search,
        device=device,
        progress=progress,
        desc="translate",
        generator=generator,
        return_scores=return_scores,
    )
    empty_score = 0.0 if return_scores else None
    out: list[list[tuple[str, float | None]]] = [[("", empty_score)] for _ in sentences]
    for i, nbest in zip(nonempty, hyps):
        texts = tokenizer.decode_tgt([h.tokens for h in nbest])
        out[i] = [(text, h.score) for text, h in zip(texts, nbest)]
    return out
