"""Every error that mt reports to its user: one line on stderr, ``error: <message>``, exit status 2.

Each message names the file, field or value at fault and what was expected. This module imports
nothing, so every layer can raise these without importing another.
"""


class ConfigError(ValueError):
    """A configuration value that is well-typed but impossible."""


class DataError(ValueError):
    """A corpus that cannot be read as configured; the message names the file or field."""


class TokenizerError(ValueError):
    """A tokenizer model that cannot be used."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing or cannot be loaded."""


class RunError(RuntimeError):
    """A request that would overwrite or corrupt something, or cannot run as asked."""


class RunDirectoryTaken(RunError):
    """The run directory holds another run (finished, or live): a refused launch leaves its records alone."""


class RunDirectoryBusy(RunDirectoryTaken):
    """Another live training process holds the run directory."""


class NonFiniteLossError(RunError):
    """Too many consecutive steps with a NaN or infinite loss."""


# What the entry points report in one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, CheckpointError, TokenizerError, RunError, FileExistsError, FileNotFoundError)


def listing(names, most: int = 12) -> str:
    """``a, b, c`` for a message; the first ``most`` and how many in all where there are more."""
    names = sorted(names)
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names)} in all)"
