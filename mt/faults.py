"""Named fault points, for the reliability tests: with ``MT_FAULT=NAME:N`` in the environment the process
kills itself (SIGKILL, as the OOM killer or a lost node would) the N-th time it reaches the point ``NAME``.
Without it, ``point`` returns at once.

Points: ``checkpoint_write`` (a checkpoint's bytes written to its temporary file, not yet renamed over the
old one), ``validation_step`` (inside a validation), ``after_step_saves`` (an update's checkpoints saved,
its logged values not yet written), ``training_step`` (inside an update, before backward).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("MT_FAULT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if name != target:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
