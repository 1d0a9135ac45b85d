"""The one shape of every ``python -m mt.X`` entry point: ``@entry_point("X", XConfig)``.

The decorated function takes the typed config and does the work. The decorator registers the
schemas with Hydra (when ``main`` runs, not at import), composes ``conf/X.yaml`` with the command
line, converts it to ``XConfig`` (whose checks run there), and turns every user error — a Hydra
override mistake, a ``ConfigError``, ``DataError``, ``CheckpointError``, ... — into one line on
stderr, ``error: <message>``, and exit status 2.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mt.atomic import atomic_write
from mt.config import register_configs
from mt.errors import USER_ERRORS, ConfigError, RunDirectoryTaken

T = TypeVar("T")
R = TypeVar("R")

# The Hydra config directory, absolute so that the console scripts (mt-train, ...) find it too.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys that no schema field declares: ``+key=value`` adds them to a composed config, and converting it to
    its dataclass would drop them without a word."""
    import dataclasses

    found = []
    node_type = OmegaConf.get_type(cfg)
    fields = {f.name for f in dataclasses.fields(node_type)} if dataclasses.is_dataclass(node_type) else None
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if fields is not None and key not in fields:
            found.append(name)
            continue
        if OmegaConf.is_missing(cfg, key):
            continue
        value = cfg[key]  # None, a value or a node
        if isinstance(value, DictConfig):
            found += unknown_keys(value, f"{name}.")
    return found


def to_typed(cfg: DictConfig, cls: type[T]) -> T:
    """The composed Hydra config as its dataclass (``__post_init__`` checks run here)."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} (added with +{unknown[0]}=...?): not a setting of {cls.__name__}; "
            f"check its spelling"
        )
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
            record = True
            try:
                return run(to_typed(cfg, schema))
            except USER_ERRORS as error:
                line = f"error: {error}"
                record = not isinstance(error, RunDirectoryTaken)  # the directory is another run's: not ours
            except OSError as error:
                line = os_error_line(error)
                if line is None:
                    raise
            # Outside the handler: the error, and the frames of the run it holds, are not kept with a failed trial.
            _stop(line, record=record)

        hydra_task = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(task)

        @functools.wraps(run)
        def main() -> None:
            from hydra.errors import HydraException

            register_configs()
            sys.argv[1:] = [expand_home(argument) for argument in sys.argv[1:]]
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                hydra_task()
            except TrialFailed as error:  # raised by the sweeper once the trials it runs together have run
                listed = " (mt.trials lists the trials)" if config_name == "train" else ""
                print(f"error: a trial of the sweep failed: {error}{listed}", file=sys.stderr)
                sys.exit(2)
            except (HydraException, OmegaConfBaseException) as error:
                print(f"error: {_one_line(error)}", file=sys.stderr)
                sys.exit(2)
            except OSError as error:  # e.g. Hydra making a run directory whose parent is a file
                exit_on_os_error(error)
                raise
            except ValueError as error:  # Hydra's refusal of its own flags (e.g. -m with --cfg)
                if "No trials are completed yet" in str(error):  # Optuna's, once every trial of a study failed
                    print("error: every trial of the sweep failed (their error.txt says why)", file=sys.stderr)
                    sys.exit(2)
                if not _raised_by_hydra(error):
                    raise
                print(f"error: {_one_line(error)}", file=sys.stderr)
                sys.exit(2)
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        return main

    return decorate


def expand_home(argument: str) -> str:
    """An override ``key=~/path`` with the home directory written out, as the shell does for ``name=~/path``
    but not for a dotted key (``data.path=~/corpus``, ``hydra.run.dir=~/runs/x``), whose ``~`` Hydra's override
    grammar rejects ("LexerNoViableAltException"). Each value of a sweep's ``a,b`` list and of a ``[a,b]`` list
    too, unless quotes, braces or parentheses make its commas another's (an escaped comma, ``\\,``, is no
    separator); flags and arguments without ``=`` are left as they are."""
    if argument.startswith("-") or "=" not in argument:
        return argument
    key, value = argument.split("=", 1)
    opening, closing = ("[", "]") if value.startswith("[") and value.endswith("]") else ("", "")
    inner = value[len(opening) : len(value) - len(closing)]
    if any(mark in inner for mark in "'\"[]{}()"):
        return f"{key}={_expand_leading_home(value)}"  # a leading ~ still, whatever follows (an interpolation)
    parts = re.split(r"(?<!\\),", inner)
    return f"{key}={opening}{','.join(_expand_leading_home(part) for part in parts)}{closing}"


def _expand_leading_home(value: str) -> str:
    if not value.startswith("~"):
        return value
    head, slash, rest = value.partition("/")
    return os.path.expanduser(head) + slash + rest


# Errors of the machine, not of mt: each gets one line naming the file, and exit status 2.
_WRITE_ERRNOS = {
    errno.EACCES: "not writable by this user",
    errno.EPERM: "not permitted",
    errno.EROFS: "a read-only filesystem",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "a directory is in the way",
    errno.ENAMETOOLONG: "the name is too long",
}


def exit_on_os_error(error: OSError) -> None:
    """Exit quietly when the reader of stdout went away (``| head``: status 141, as a shell tool killed by
    SIGPIPE), with one line for a file that cannot be written (status 2); return for any other ``OSError``."""
    line = os_error_line(error)
    if line is not None:
        print(line, file=sys.stderr)
        sys.exit(2)


def os_error_line(error: OSError) -> str | None:
    """The one line of a file that cannot be written (None for any other ``OSError``); exits quietly (141) when
    the reader of stdout went away."""
    if (isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE) and _stdout_is_closed():
        try:  # Python would complain again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        os._exit(141)
    if error.errno in _WRITE_ERRNOS:
        where = error.filename or "a file"
        return f"error: cannot write {where}: {error.strerror} ({_WRITE_ERRNOS[error.errno]})"
    return None


class TrialFailed(RuntimeError):
    """A trial of a sweep (``-m``) stopped by a user error: said in one line, kept in its directory's
    ``error.txt`` (``mt.trials`` shows it), and raised to Hydra's launcher, which records the job as failed and
    runs the others (Optuna's sweeper counts it against ``hydra.sweeper.max_failure_rate``)."""


def _stop(line: str, *, record: bool = True) -> NoReturn:
    """End the command with ``line`` on stderr and status 2; a trial of a sweep fails alone (``TrialFailed``),
    its line kept in its directory's ``error.txt`` where ``record`` (not where that directory is another job's)."""
    print(line, file=sys.stderr)
    trial_dir = _trial_dir()
    if trial_dir is None:
        sys.exit(2)
    if not record:
        raise TrialFailed(line.removeprefix("error: ")) from None
    try:
        with atomic_write(trial_dir / "error.txt") as handle:  # ranks of one trial may all write it
            handle.write((line.removeprefix("error: ") + "\n").encode("utf-8"))
        overrides = trial_dir / ".hydra" / "overrides.yaml"
        if not overrides.exists():  # refused before its launch was recorded: mt.trials still shows its overrides
            from hydra.core.hydra_config import HydraConfig
            from omegaconf import OmegaConf

            with atomic_write(overrides) as handle:
                handle.write(OmegaConf.to_yaml(HydraConfig.get().overrides.task).encode("utf-8"))
    except OSError:
        pass  # the line is on stderr; a directory that cannot be written is often the error itself
    raise TrialFailed(line.removeprefix("error: ")) from None


def in_sweep() -> bool:
    """Whether this process runs the trials of a sweep (``-m``)."""
    return _trial_dir() is not None


def _trial_dir() -> Path | None:
    """The run directory of this trial, where Hydra runs a sweep (``-m``); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.runtime.output_dir)


def _stdout_is_closed() -> bool:
    """Whether the reader of standard output went away (and not some other pipe: a logger's socket, a worker):
    the kernel reports an error condition on a pipe whose read end is closed."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor, no poll on this platform
        return False


def _raised_by_hydra(error: BaseException) -> bool:
    """Whether ``error`` was raised in Hydra's own code (its command-line handling), not in a task."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and f"{os.sep}hydra{os.sep}" in traceback.tb_frame.f_code.co_filename


def _one_line(error: BaseException) -> str:
    """The first line of a Hydra or OmegaConf error, with the first line of its cause."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        message += f" ({str(cause).strip().splitlines()[0]})"
    return message
