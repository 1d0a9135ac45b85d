"""``python -m mt.convert input=PATH output=PATH [overwrite=true]``: Hugging Face Marian in and out.

The direction follows ``input``: a Hugging Face ``MarianMTModel`` directory (``config.json``, weights,
``source.spm``/``target.spm``, ``vocab.json``: the OPUS-MT layout) becomes an ``mt`` checkpoint that
``mt.evaluate``, ``mt.translate``, ``mt.export`` and ``init_from`` read; an ``mt`` checkpoint (``.ckpt``) becomes
such a directory, which ``MarianMTModel.from_pretrained`` and ``MarianTokenizer.from_pretrained`` load. How the
two layouts map: ``mt/model/marian.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mt.atomic import atomic_write, refuse_to_overwrite, refuse_to_replace, replacing_directory
from mt.cli import entry_point
from mt.config import ConvertConfig
from mt.errors import RunError
from mt.model.checkpoint import refuse_to_replace_checkpoint
from mt.model.marian import checkpoint_to_marian, is_marian_directory, marian_to_checkpoint, not_an_export


def convert(source: str | Path, output: str | Path) -> str:
    """Convert ``source`` into ``output``; returns the direction, ``import`` or ``export``.

    An existing ``output`` is replaced only if it is what this direction writes: a checkpoint of an earlier
    import, or an empty directory or an earlier export; never one that is, or holds, ``source``.
    """
    source, output = Path(source), Path(output)
    if is_marian_directory(source):
        _refuse_to_replace_checkpoint(source, output)
        checkpoint = marian_to_checkpoint(source)
        with atomic_write(output) as handle:
            torch.save(checkpoint, handle)
        return "import"
    if source.is_file():
        if output.exists() and not output.is_dir():
            raise RunError(f"output={output}: a file; expected a directory name for the Hugging Face export")
        refuse_to_replace(output, source=source, kind="Hugging Face export", foreign=not_an_export)
        with replacing_directory(output) as tmp:
            checkpoint_to_marian(source, tmp)
        return "export"
    raise RunError(
        f"input={source}: expected a Hugging Face Marian directory (with config.json) or an mt checkpoint file"
    )


def _refuse_to_replace_checkpoint(source: Path, output: Path) -> None:
    """Refuse an existing ``output`` that is not a checkpoint of an earlier import (a training checkpoint, any
    other file), or that is a file of the ``source`` directory."""
    if output.exists() and not output.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise RunError(f"output={output}: a file of the input {source}; choose another output")
    refuse_to_replace_checkpoint(output, mark="imported_from", command="import")


@entry_point("convert", ConvertConfig)
def main(config: ConvertConfig) -> None:
    exporting = not is_marian_directory(config.input)
    refuse_to_overwrite(config.output, overwrite=config.overwrite, directory=exporting)
    direction = convert(config.input, config.output)
    print(json.dumps({"input": config.input, "output": config.output, "direction": direction}))


if __name__ == "__main__":
    main()
