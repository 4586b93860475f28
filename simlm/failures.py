"""How `run.py` fails: one clear line on stderr and in the run's `run.log`, and an early run-dir check.

- `report_failure`: a stage raised. `run.log` gets the traceback and then the one-line summary
  (`<ErrorType>: <message>`); the console gets only the summary, as the last line of stderr, and the
  process exits with status 1. `HYDRA_FULL_ERROR=1` (and sweeps, whose jobs Hydra reports itself) keep
  Hydra's own traceback after the same log lines.
- `RunDirCheck`: a Hydra callback that checks the run (or sweep) folder before Hydra creates it and
  configures logging, so an unwritable folder is named instead of "Unable to configure handler 'file'".
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("simlm")

# records carrying this attribute go to run.log only (the console filter below drops them)
FILE_ONLY = {"simlm_file_only": True}


class NotOnConsole(logging.Filter):
    """Logging filter for the console handler: drops the records meant for `run.log` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "simlm_file_only", False)


def failure_line(error: BaseException) -> str:
    """`<ErrorType>: <message>` on one line."""
    message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def report_failure(error: Exception, stage: str | None = None, log_file: str | Path | None = None) -> None:
    """Log `error` (traceback + summary line) to `run.log`, print the summary last on stderr, exit 1.

    Re-raises instead of exiting under `HYDRA_FULL_ERROR=1` or in a Hydra sweep.
    """
    line = failure_line(error)
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    log.error("stage %s failed:\n%s", stage or "?", tb, extra=FILE_ONLY)
    log.error("%s", line, extra=FILE_ONLY)
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_sweep():
        raise error
    where = f"; log: {log_file}" if log_file else ""
    sys.stdout.flush()
    print(
        f"simlm: stage {stage or '?'} failed (HYDRA_FULL_ERROR=1 shows the traceback{where})",
        file=sys.stderr,
    )
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(1)


def run_log_file() -> str | None:
    """The run's log file (Hydra's `job_logging.handlers.file.filename`), if Hydra configured one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().job_logging.handlers.file.filename)
    except Exception:
        return None


def _in_sweep() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # pragma: no cover - outside Hydra
        return False


def unwritable_reason(path: str | Path) -> str | None:
    """Why a folder cannot be created or written at `path`, or None when it can.

    Looks at the nearest existing ancestor: a regular file there, or a folder in which no file can be
    created. It tries creating (and removes) a temp file rather than reading permission bits: root
    bypasses those, but not read-only file systems, immutable folders or /proc and /sys.
    """
    path = Path(path).absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".simlm-write-check-", dir=probe)
    except OSError as e:
        what = "exists but is not writable" if probe == path else "is not writable"
        return f"{probe} {what} ({e.strerror})"
    os.close(fd)
    os.unlink(name)
    return None


def check_writable_dir(path: str | Path, key: str) -> None:
    """Exit with one line naming the folder (and the setting `key` that picks it) when it is not writable."""
    reason = unwritable_reason(path)
    if reason is None:
        return
    print(
        f"simlm: cannot write the run folder {Path(path).absolute()}: {reason}; "
        f"pick a writable one with {key}=<folder>",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)


class RunDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): the run/sweep folder must be writable before Hydra starts."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        check_writable_dir(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        check_writable_dir(str(config.hydra.sweep.dir), "hydra.sweep.dir")
