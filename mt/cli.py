"""What the three entry points share: typed config conversion and one-line errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mt.config import ConfigError
from mt.data import DataError
from mt.inference import CheckpointError
from mt.tokenizer import TokenizerError

T = TypeVar("T")

# Errors caused by the user's input: reported in one line, exit status 2, no traceback.
USER_ERRORS = (ConfigError, DataError, CheckpointError, TokenizerError, FileExistsError, FileNotFoundError)


class RunError(RuntimeError):
    """A request that would overwrite or corrupt something, or cannot run as asked."""


def to_typed(cfg: DictConfig, cls: type[T]) -> T:
    """The composed Hydra config as its dataclass (``__post_init__`` checks run here)."""
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        cause = error.__cause__ if isinstance(error.__cause__, ConfigError) else error
        raise ConfigError(str(cause).splitlines()[0]) from None
    if not isinstance(config, cls):
        raise ConfigError(f"config is a {type(config).__name__}, expected {cls.__name__}")
    return config


def reports_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors raised by ``main`` into ``error: <message>`` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (*USER_ERRORS, RunError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def quiet_library_logs() -> None:
    """Keep third-party info chatter off the console of the evaluation tools."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
