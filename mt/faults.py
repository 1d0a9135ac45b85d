"""Named fault points, for the reliability tests: with ``MT_FAULT=NAME:N`` in the environment the process
kills itself (SIGKILL, as the OOM killer or a lost node would) the N-th time it reaches the point ``NAME``.
The variable is read when the module is imported; without it, ``point`` returns at once.

Points: ``checkpoint_write`` (a checkpoint's bytes written to its temporary file, not yet renamed over the
old one), ``validation_step`` (inside a validation), ``after_step_saves`` (an update's checkpoints saved,
its logged values not yet written), ``training_step`` (inside an update, before backward).
"""

from __future__ import annotations

import os
import signal

# Read once: ``point`` runs in every training step. "NAME:N" -> ("NAME", N); None without the variable.
_TARGET, _, _NTH = os.environ.get("MT_FAULT", "").partition(":")
_FAULT = (_TARGET, int(_NTH or 1)) if _TARGET else None
_reached = 0


def point(name: str) -> None:
    global _reached
    if _FAULT is None or name != _FAULT[0]:
        return
    _reached += 1
    if _reached == _FAULT[1]:
        os.kill(os.getpid(), signal.SIGKILL)
