"""Named fault points, for the reliability tests: with ``MT_FAULT=NAME:N`` in the environment the process
kills itself (SIGKILL, as the OOM killer or a lost node would) the N-th time it reaches the point ``NAME``;
with ``MT_FAULT=NAME:N:ERRNO`` (``ENOSPC``, ``EACCES``, ...) it raises that ``OSError`` there instead, as a
full disk or a read-only directory would. The variable is read when the module is imported; without it,
``point`` returns at once.

Points: ``checkpoint_write`` (a checkpoint's bytes written to its temporary file, not yet renamed over the
old one), ``validation_step`` (inside a validation), ``after_step_saves`` (an update's checkpoints saved,
its logged values not yet written), ``training_step`` (inside an update, before backward), ``run_directory``
(the first write into a training run's directory), ``translate_chunk`` (``mt.translate output=``: a chunk's
lines written to the file, its progress not yet recorded).
"""

from __future__ import annotations

import errno
import os
import signal

# Read once: ``point`` runs in every training step. "NAME:N[:ERRNO]" -> ("NAME", N, errno or 0).
_TARGET, _, _REST = os.environ.get("MT_FAULT", "").partition(":")
_NTH, _, _ERRNO = _REST.partition(":")
_FAULT = (_TARGET, int(_NTH or 1), getattr(errno, _ERRNO) if _ERRNO else 0) if _TARGET else None
_reached = 0


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """A fault point; ``path`` is the file an injected ``OSError`` names."""
    global _reached
    if _FAULT is None or name != _FAULT[0]:
        return
    _reached += 1
    if _reached == _FAULT[1]:
        if _FAULT[2]:
            raise OSError(_FAULT[2], os.strerror(_FAULT[2]), None if path is None else str(path))
        os.kill(os.getpid(), signal.SIGKILL)
