"""``python -m mt.translate checkpoint=PATH [beam=N] [input=F] < in > out``.

Reads one sentence a line from stdin (or ``input=``), writes one translation a line to stdout, in
order, with a progress bar on stderr. With ``nbest=K`` it writes K tab-separated lines per sentence
instead: sentence index (from 0), score (length-normalised log-probability), hypothesis, best first.
Input is read in chunks of 5,000 lines, so long streams start flowing early; from a terminal, or with
``buffer=1``, each line is answered as soon as it is read (``buffer=N``: every N lines). Windows (CRLF) line endings are
accepted; input that is not UTF-8 stops with an error naming the line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from mt.cli import entry_point, set_on_command_line
from mt.config import TranslateConfig, saved_search, search_overrides, with_nbest
from mt.data.readers import read_lines
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


@entry_point("translate", TranslateConfig)
def main(config: TranslateConfig) -> None:
    set_threads(config.threads)
    lines = read_lines(config.input) if config.input else stdin_lines()  # a bad input= fails before the load
    model, loaded = load_translator(config.checkpoint, config.ensemble)
    # The checkpoint's own search, with what the command line sets winning.
    overrides = search_overrides(config.search, set_on_command_line("search"), config.beam)
    search = with_nbest(saved_search(loaded.search, overrides), config.nbest)
    device = best_device()
    model = model.to(device)
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
        )
        for index, nbest in enumerate(translations):
            if config.nbest is None:
                sys.stdout.write(nbest[0][0] + "\n")
            else:
                sys.stdout.writelines(f"{offset + index}\t{score:.4f}\t{text}\n" for text, score in nbest)
        offset += len(chunk)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
