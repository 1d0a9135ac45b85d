"""``python -m mt.translate checkpoint=PATH [beam=N] [input=F] < in > out``.

Reads one sentence a line from stdin (or ``input=``), writes one translation a line to stdout, in
order, with a progress bar on stderr. With ``nbest=K`` it writes K tab-separated lines per sentence
instead: sentence index (from 0), score (length-normalised log-probability), hypothesis, best first.
Input is read in chunks, so long streams start flowing early. Windows (CRLF) line endings are
accepted; input that is not UTF-8 stops with an error naming the line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import hydra
from omegaconf import DictConfig

from mt.cli import CONF_DIR, best_device, entry_point, quiet_library_logs, reports_errors, set_threads, to_typed
from mt.config import TranslateConfig, register_configs, with_beam, with_nbest
from mt.data import DataError
from mt.inference import load_translator, sampling_generator, translate
from mt.readers import read_lines

register_configs()

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
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.rstrip("\r\n"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="translate")
@reports_errors
def _main(cfg: DictConfig) -> None:
    config = to_typed(cfg, TranslateConfig)
    set_threads(config.threads)
    quiet_library_logs()
    search = with_nbest(with_beam(config.search, config.beam), config.nbest)
    lines = read_lines(config.input) if config.input else stdin_lines()  # a bad input= fails before the load
    model, module = load_translator(config.checkpoint, config.ensemble)
    device = best_device()
    model = model.to(device)
    generator = sampling_generator(search, device) if search.sampling else None  # one stream for all chunks
    offset = 0
    for chunk in chunks(lines, CHUNK_LINES):
        translations = translate(
            model,
            module.tokenizer,
            chunk,
            search,
            device=device,
            progress=True,
            generator=generator,
            return_scores=config.nbest is not None,  # scores are printed only with n-best lists
        )
        for index, nbest in enumerate(translations):
            if config.nbest is None:
                sys.stdout.write(nbest[0][0] + "\n")
            else:
                sys.stdout.writelines(f"{offset + index}\t{score:.4f}\t{text}\n" for text, score in nbest)
        offset += len(chunk)
        sys.stdout.flush()


main = entry_point(_main)

if __name__ == "__main__":
    main()
