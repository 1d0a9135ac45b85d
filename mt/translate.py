"""``python -m mt.translate checkpoint=PATH [beam=N] [input=F] < in > out``.

Reads one sentence a line from stdin (or ``input=``), writes one translation a line to stdout, in
order, with a progress bar on stderr; a model trained on several target languages translates into ``tgt_lang=``.
With ``nbest=K`` it writes K tab-separated lines per sentence instead: sentence index (from 0), score
(length-normalised log-probability), hypothesis, best first.
Input is read in chunks of 5,000 lines, so long streams start flowing early; from a terminal, or with
``buffer=1``, each line is answered as soon as it is read (``buffer=N``: every N lines). Windows (CRLF) line endings are
accepted; input that is not UTF-8 stops with an error naming the line.

``output=FILE`` (with ``input=FILE``) is for corpora, e.g. back-translation: the file is written in input
order, a killed run continues where it stopped when the same command runs again, and under torchrun or a SLURM
job array each process translates a contiguous shard, the last to finish merging them in order
(``mt/decode/bulk.py``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from mt.atomic import file_version
from mt.cli import entry_point, set_on_command_line
from mt.config import TranslateConfig, saved_search, search_overrides, with_nbest
from mt.data.readers import read_lines
from mt.decode.bulk import shard_of_environment, translate_file
from mt.decode.translator import sampling_generator, translate
from mt.device import best_device, set_threads
from mt.errors import DataError
from mt.model.checkpoint import load_translator

CHUNK_LINES = 5000


def stdin_lines(stream: BinaryIO | None = None) -> Iterator[str]:
    """Lines of standard input decoded as UTF-8, strictly: a ``DataError`` names the first bad line.

    (Python's own text stdin would smuggle undecodable bytes through as surrogates.)
    """
    stream = sys.stdin.buffer if stream is None else stream
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"invalid UTF-8 ({error.reason} at byte {error.start} of the line)"
            raise DataError(f"<stdin>:{number}: {message}") from None


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """``lines`` without their ending (``\n`` or ``\r\n``, as ``read_lines`` removes them) in lists of ``size``."""
    chunk: list[str] = []
    for line in lines:
        line = line[:-1] if line.endswith("\n") else line
        chunk.append(line[:-1] if line.endswith("\r") else line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def buffer_lines(config: TranslateConfig) -> int:
    """Lines translated together: ``buffer=``, else one at a time for a person typing, else ``CHUNK_LINES``."""
    if config.buffer is not None:
        return config.buffer
    interactive = config.input is None and sys.stdin.isatty()
    return 1 if interactive else CHUNK_LINES


def output_lines(translations: list[list[tuple[str, float | None]]], first: int, nbest: bool) -> list[str]:
    """The output's lines for sentences ``first, first+1, ...``: the best translation each, or n-best TSV lines."""
    if not nbest:
        return [best[0][0] for best in translations]
    return [f"{first + i}\t{score:.4f}\t{text}" for i, best in enumerate(translations) for text, score in best]


def translate_to_file(
    config: TranslateConfig, model, loaded, search, device, prefix: list[int], versions: dict
) -> None:
    """``output=``: this process's shard of ``input=``, resumably, merged in order by the last to finish.
    ``versions``: of the checkpoint and the ensemble's, taken before they were loaded."""
    from tqdm import tqdm

    rank, world = shard_of_environment()

    def translate_chunk(lines: list[str], first: int) -> list[str]:
        # Sampling seeded by the chunk, not one stream: a resumed or sharded run draws the same numbers.
        generator = None
        if search.sampling:
            generator = torch.Generator(device=device).manual_seed(search.seed * 1_000_003 + first)
        translations = translate(
            model,
            loaded.tokenizer,
            lines,
            search,
            device=device,
            generator=generator,
            first_line=first + 1,
            return_scores=config.nbest is not None,
            src_prefix=prefix,
            origin=config.input,
            precision=config.precision,
        )
        return output_lines(translations, first, config.nbest is not None)

    def progress(done: int, total: int) -> tqdm:
        return tqdm(total=total, initial=done, unit="line", desc=f"translate {rank + 1}/{world}", file=sys.stderr)

    identity = {
        "input": file_version(config.input),
        **versions,
        "search": dataclasses.asdict(search),
        "nbest": config.nbest,
        "tgt_lang": config.tgt_lang,
        # bf16 only: outputs started with fp32 decoding before precision= existed go on as they were
        **({"precision": config.precision} if config.precision != "32" else {}),
    }
    complete = translate_file(
        Path(config.input),
        Path(config.output),
        translate_chunk,
        identity=identity,
        chunk_lines=config.buffer or CHUNK_LINES,
        rank=rank,
        world=world,
        overwrite=config.overwrite,
        progress=progress,
    )
    state = "complete" if complete else "this shard done; the last process to finish merges"
    print(json.dumps({"output": config.output, "rank": rank, "world": world, "state": state}), file=sys.stderr)


@entry_point("translate", TranslateConfig)
def main(config: TranslateConfig) -> None:
    set_threads(config.threads)
    if config.output is not None:  # streamed in chunks from the file, never read whole
        if not Path(config.input).is_file():
            raise DataError(f"{config.input}: no such file")
        lines: Iterable[str] = ()
    else:
        lines = read_lines(config.input) if config.input else stdin_lines()  # a bad input= fails before the load
    versions = {  # before loading: a file rewritten meanwhile is then found changed, never taken as the one loaded
        "checkpoint": file_version(config.checkpoint),
        "ensemble": [file_version(p) for p in config.ensemble],
    }
    model, loaded = load_translator(config.checkpoint, config.ensemble)
    prefix = loaded.source_prefix(config.tgt_lang)  # a language the model cannot produce fails before decoding
    # The checkpoint's own search, with what the command line sets winning.
    overrides = search_overrides(config.search, set_on_command_line("search"), config.beam)
    chosen = saved_search(loaded.search, overrides)
    search = with_nbest(chosen, config.nbest)
    if search.beam > chosen.beam:  # said, since the first of the n-best may then differ from the plain translation
        print(
            f"nbest={config.nbest}: beam {search.beam} instead of {chosen.beam}, so the best of the {config.nbest} "
            f"may differ from the translation without nbest (beam= sets the beam)",
            file=sys.stderr,
        )
    device = best_device()
    model = model.to(device)
    if config.output is not None:
        return translate_to_file(config, model, loaded, search, device, prefix, versions)
    generator = sampling_generator(search, device) if search.sampling else None  # one stream for all chunks
    offset = 0
    buffer = buffer_lines(config)
    for chunk in chunks(lines, buffer):
        translations = translate(
            model,
            loaded.tokenizer,
            chunk,
            search,
            device=device,
            progress=buffer >= 100,  # no bar flickering on stderr for a line at a time
            generator=generator,
            first_line=offset + 1,
            return_scores=config.nbest is not None,  # scores are printed only with n-best lists
            src_prefix=prefix,
            origin=config.input or "",
            precision=config.precision,
        )
        sys.stdout.writelines(line + "\n" for line in output_lines(translations, offset, config.nbest is not None))
        offset += len(chunk)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
