"""Translating many sentences with a trained model: length-sorted batches, search, detokenization.

Shared by validation, ``mt.evaluate``, ``mt.translate`` and ``mt.report``; checkpoints become models in
``mt.model.checkpoint``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from mt.config import SearchConfig
from mt.data.batching import collate, token_batches
from mt.data.tokenizer import Tokenizer
from mt.decode.search import Decodable, Hypothesis, beam_search, greedy_search, sample
from mt.device import decoding_precision
from mt.errors import DataError

log = logging.getLogger(__name__)


def search_batch(
    model: Decodable,
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
        max_len=search.max_len,
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
    model: Decodable,
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
    model: Decodable,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    search: SearchConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    generator: torch.Generator | None = None,
    return_scores: bool = True,
    first_line: int = 1,
    src_prefix: Sequence[int] = (),
    origin: str = "",
    precision: str = "32",
) -> list[list[tuple[str, float | None]]]:
    """Detokenized n-best translations with scores, one list per sentence, in input order.

    Empty sentences (whitespace only, or nothing the tokenizer keeps, such as a zero-width space) are not decoded:
    their translations are the empty string (``nbest`` of them, scored 0, so that each sentence has as many).
    ``generator``: sampling's random stream, to continue it across calls (``sampling_generator``).
    ``return_scores=False``: greedy and sampling skip scoring, and their scores (and those of empty
    sentences) are ``None``. Sources longer than ``search.max_src_len`` subwords are cut, with a warning
    naming the line (``first_line``: the number of the first sentence in the input, for the message).
    ``src_prefix``: ids before each source (a multilingual model's target-language token:
    ``Checkpoint.source_prefix``); a source's own language code is handled by ``Tokenizer.prefixed``.
    ``origin``: the input's name, for messages (a file, a test set). ``precision``: 32, or bf16 autocast
    (``mt.device.decoding_precision``).

    Raises:
        DataError: a source that starts with a language code the model lacks or ``src_prefix`` contradicts.
        ConfigError: bf16 on a GPU without it.
    """
    written = [i for i, s in enumerate(sentences) if s.strip()]
    room = max(1, search.max_src_len - len(src_prefix))  # the prefix counts towards max_src_len
    codes = set(tokenizer.language_tokens().values())
    nonempty: list[int] = []
    src: list[list[int]] = []
    for i, ids in zip(written, tokenizer.encode_src([sentences[i] for i in written])):
        where = f"{origin}: line {first_line + i}" if origin else f"line {first_line + i}"
        try:
            ids = tokenizer.prefixed(ids, sentences[i], src_prefix)[len(src_prefix) :]
        except DataError as error:
            raise DataError(f"{where}: {error}") from None
        # A line of nothing SentencePiece keeps (zero-width spaces, control characters) or of a language code
        # alone is empty too: decoded from EOS alone, the model would make a sentence up.
        if all(t in codes for t in ids):
            continue
        if len(ids) > room:
            log.warning("%s: %d subwords, cut to the first %d (search.max_src_len)", where, len(ids), room)
            ids = ids[:room]
        nonempty.append(i)
        src.append([*src_prefix, *ids])
    with decoding_precision(torch.device(device), precision):
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
    empty = [("", 0.0 if return_scores else None)] * (1 if search.sampling else search.nbest)  # as many as the rest
    out: list[list[tuple[str, float | None]]] = [list(empty) for _ in sentences]
    for i, nbest in zip(nonempty, hyps):
        texts = tokenizer.decode_tgt([h.tokens for h in nbest])
        out[i] = [(text, h.score) for text, h in zip(texts, nbest)]
    return out
