"""``python -m mt.convert input=PATH output=PATH [overwrite=true]``: Hugging Face Marian in and out.

The direction follows ``input``: a Hugging Face ``MarianMTModel`` directory (``config.json``, weights,
``source.spm``/``target.spm``, ``vocab.json``: the OPUS-MT layout) becomes an ``mt`` checkpoint that
``mt.evaluate``, ``mt.translate``, ``mt.export`` and ``init_from`` read; an ``mt`` checkpoint (``.ckpt``) becomes
such a directory, which ``MarianMTModel.from_pretrained`` and ``MarianTokenizer.from_pretrained`` load. How the
two layouts map: ``mt/model/marian.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mt.atomic import atomic_write, refuse_to_overwrite
from mt.cli import entry_point
from mt.config import ConvertConfig
from mt.errors import RunError
from mt.model.marian import checkpoint_to_marian, is_marian_directory, marian_to_checkpoint


def convert(source: str | Path, output: str | Path) -> str:
    """Convert ``source`` into ``output``; returns the direction, ``import`` or ``export``."""
    source, output = Path(source), Path(output)
    if is_marian_directory(source):
        checkpoint = marian_to_checkpoint(source)
        with atomic_write(output) as handle:
            torch.save(checkpoint, handle)
        return "import"
    if source.is_file():
        tmp = output.with_name(f".{output.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            checkpoint_to_marian(source, tmp)
            shutil.rmtree(output, ignore_errors=True)
            tmp.rename(output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return "export"
    raise RunError(
        f"input={source}: expected a Hugging Face Marian directory (with config.json) or an mt checkpoint file"
    )


@entry_point("convert", ConvertConfig)
def main(config: ConvertConfig) -> None:
    exporting = not is_marian_directory(config.input)
    refuse_to_overwrite(config.output, overwrite=config.overwrite, directory=exporting)
    direction = convert(config.input, config.output)
    print(json.dumps({"input": config.input, "output": config.output, "direction": direction}))


if __name__ == "__main__":
    main()
