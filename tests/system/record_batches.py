"""``python -m tests.system.record_batches [mt.train overrides]``: ``mt.train``, and every rank appends the
training batches it receives to ``RUN_DIR/batches/rank<R>.jsonl``, one line per batch:
``{"step": global step before the update, "positions": the pairs' positions in the corpus}``.

The distributed resume tests compare these records with an uninterrupted run's. The Lightning launcher
starts the other ranks with the same ``-m`` module, so they record too.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

import mt.training.run
from mt.train import main


class RecordBatches(L.Callback):
    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / "batches"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "positions": batch.corpus_positions.tolist()}
        with open(self.directory / f"rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


def recording(build_trainer):
    def build(config, run_dir, **kwargs):
        trainer, best = build_trainer(config, run_dir, **kwargs)
        trainer.callbacks.append(RecordBatches(run_dir))
        return trainer, best

    return build


if __name__ == "__main__":
    mt.training.run.build_trainer = recording(mt.training.run.build_trainer)
    main()
