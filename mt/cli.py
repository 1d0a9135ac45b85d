"""What the three entry points share: typed config conversion and one-line errors."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mt.config import ConfigError
from mt.data import DataError
from mt.inference import CheckpointError
from mt.tokenizer import TokenizerError

T = TypeVar("T")

# The Hydra config directory, absolute so that the console scripts (mt-train, ...) find it too.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

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


def entry_point(hydra_main: Callable[[], Any]) -> Callable[[], Any]:
    """A ``@hydra.main`` function whose command-line mistakes (a misspelt key, a wrong type, an
    unknown group option) end in one line, ``error: ...``, and exit status 2, as in ``reports_errors``.

    Hydra prints such errors itself, over several lines, and exits with 1, unless
    ``HYDRA_FULL_ERROR`` makes it raise them: set for the call, they are caught here.
    """
    from hydra.errors import HydraException

    @functools.wraps(hydra_main)
    def wrapper() -> Any:
        previous = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return hydra_main()
        except (HydraException, OmegaConfBaseException) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            cause = error.__cause__
            if cause is not None and str(cause).strip():
                message += f" ({str(cause).strip().splitlines()[0]})"
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        finally:
            if previous is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = previous

    return wrapper


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def enable_tf32() -> None:
    """fp32 matrix products on TF32 tensor cores (NVIDIA Ampere and later)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
    # (Here, not in mt.train: Hydra's submitit launcher pickles mt.train's functions by value when it
    # runs as __main__, and torch.backends is a module object that cannot be pickled.)


def quiet_library_logs() -> None:
    """Keep third-party info chatter off the console of the evaluation tools."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
