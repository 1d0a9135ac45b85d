"""The one shape of every ``python -m mt.X`` entry point: ``@entry_point("X", XConfig)``.

The decorated function takes the typed config and does the work. The decorator registers the
schemas with Hydra (when ``main`` runs, not at import), composes ``conf/X.yaml`` with the command
line, converts it to ``XConfig`` (whose checks run there), and turns every user error — a Hydra
override mistake, a ``ConfigError``, ``DataError``, ``CheckpointError``, ... — into one line on
stderr, ``error: <message>``, and exit status 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mt.config import register_configs
from mt.errors import USER_ERRORS, ConfigError

T = TypeVar("T")
R = TypeVar("R")

# The Hydra config directory, absolute so that the console scripts (mt-train, ...) find it too.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


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


def set_on_command_line(section: str) -> set[str] | None:
    """The fields of the config node ``section`` that the command line set (``search.beam=10`` gives
    ``{"beam"}``), or None when it chose the group itself (``search=greedy``: all of it is the user's choice)."""
    from hydra.core.hydra_config import HydraConfig

    fields: set[str] = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == section or key.startswith(f"{section}@"):
            return None
        if key.startswith(f"{section}."):
            fields.add(key[len(section) + 1 :].split(".")[0])
    return fields


def entry_point(config_name: str, schema: type[T]) -> Callable[[Callable[[T], R]], Callable[[], None]]:
    """Make ``run(config: schema)`` the command ``python -m mt.<config_name>``; returns its ``main()``.

    ``main()`` is what the console script and ``__main__`` call. What ``run`` returns goes to Hydra, whose
    sweepers optimise it (``main()`` itself returns nothing). Hydra prints its own errors over several lines
    and exits with 1 unless ``HYDRA_FULL_ERROR`` makes it raise them: set for the call, they are caught and
    reported here.
    """

    def decorate(run: Callable[[T], R]) -> Callable[[], None]:
        import hydra

        @functools.wraps(run)
        def task(cfg: DictConfig) -> R:
            try:
                return run(to_typed(cfg, schema))
            except USER_ERRORS as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)

        hydra_task = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(task)

        @functools.wraps(run)
        def main() -> None:
            from hydra.errors import HydraException

            register_configs()
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                hydra_task()
            except (HydraException, OmegaConfBaseException) as error:
                print(f"error: {_one_line(error)}", file=sys.stderr)
                sys.exit(2)
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return main

    return decorate


def _one_line(error: BaseException) -> str:
    """The first line of a Hydra or OmegaConf error, with the first line of its cause."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    return message
