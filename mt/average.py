"""``python -m mt.average checkpoints=[a,b,c] output=avg.ckpt`` or ``run=DIR last=N output=...``.

Averages the parameters of checkpoints of one model (e.g. the last N of a run, kept with
``trainer.keep_checkpoints=N``). The result is a checkpoint like any other: it evaluates and
translates with ``mt.evaluate`` / ``mt.translate``. It carries the first checkpoint's
hyperparameters and tokenizer, and no optimizer state (it is for decoding, not for resuming).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mt.atomic import atomic_write, refuse_to_overwrite
from mt.cli import entry_point
from mt.config import AverageConfig
from mt.errors import RunError
from mt.model.averaging import average_checkpoints
from mt.model.checkpoint import newest_checkpoints, refuse_to_replace_checkpoint


@entry_point("average", AverageConfig)
def main(config: AverageConfig) -> None:
    output = Path(config.output)
    refuse_to_overwrite(output, overwrite=config.overwrite)
    paths = [Path(p) for p in config.checkpoints] or newest_checkpoints(config.run, config.last)
    if any(output.resolve() == path.resolve() for path in paths):
        raise RunError(f"output={output}: one of the checkpoints averaged; choose another output")
    refuse_to_replace_checkpoint(output, mark="averaged_from", command="mt.average")
    checkpoint = average_checkpoints(paths)
    with atomic_write(output) as handle:
        torch.save(checkpoint, handle)
    print(json.dumps({"output": str(output), "averaged": [str(p) for p in paths]}))


if __name__ == "__main__":
    main()
