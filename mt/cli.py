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


def prepare_cuda(*, tf32: bool = True) -> None:
    """Process-wide CUDA settings for mt's workloads (a no-op without a GPU).

    - cuDNN attention off: torch >= 2.9 prefers cuDNN's SDPA kernel for bf16/fp16 on Hopper and
      Blackwell, and cuDNN builds an execution plan for every new shape, hundreds of milliseconds each.
      Token-bucketed batches and incremental decoding change shape at nearly every call: on an H200
      (torch 2.11) bf16 decoding ran 14-20x slower than fp32 and a first epoch of bf16 training at about
      a tenth of the speed of later epochs, whose shapes had been seen. SDPA then picks the flash or
      memory-efficient kernel, as torch <= 2.8 did.
    - ``tf32``: fp32 matrix products on TF32 tensor cores (Ampere and later), through
      ``torch.set_float32_matmul_precision``, the API Lightning reads: setting the newer
      ``torch.backends.cuda.matmul.fp32_precision`` instead makes torch >= 2.9 raise when Lightning then
      calls ``torch.get_float32_matmul_precision()`` ("mix of the legacy and new APIs"), at every GPU start.

    (Here, not in mt.train: Hydra's submitit launcher pickles mt.train's functions by value when it
    runs as __main__, and torch.backends is a module object that cannot be pickled.)
    """
    if not torch.cuda.is_available():
        return
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # decoding after training: fp32 again


def quiet_library_logs() -> None:
    """Keep third-party info chatter off the console of the evaluation tools."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def best_device() -> torch.device:
    """The device to decode on: the GPU if there is one (set up by ``prepare_cuda``), else the CPU."""
    prepare_cuda(tf32=False)  # decoding keeps full fp32 matmuls
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
