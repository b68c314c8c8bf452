"""A run's end is always recorded: SIGTERM / SIGINT become an exception, failures are described by their cause.

- `on_signals()`: while a run is in progress, SIGTERM (what `timeout`, `kill` and SLURM send) and SIGINT (Ctrl-C)
  raise `Terminated` in the main thread, so the pipeline's failure path writes status.json `failed` with
  `reason: terminated` and the signal's name; the console script then exits with the conventional 128 + signum.
  Only the first signal raises (a second one during the status write is logged and ignored). Handlers are put back
  afterwards; nothing is installed outside the main thread.
- `failure_fields(err)`: what status.json records for an exception (error, reason, signal / errno).
- `last_line(err, status_path)`: the final line the console prints, naming the cause (a full disk: ENOSPC and
  the file, wherever it sits in the exception chain).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):
    """The process got SIGTERM or SIGINT; not an Exception, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        super().__init__(f"terminated by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """SIGTERM / SIGINT raise Terminated inside this block (main thread only; nested blocks keep the outer one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if all(isinstance(signal.getsignal(s), _Handler) for s in SIGNALS):
        yield  # an outer block (rounds -> run) already handles them
        return
    handler = _Handler()
    saved = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old)


class _Handler:
    def __init__(self):
        self.fired: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.fired is not None:
            log.warning("%s received while recording the end of the run after %s: ignored",
                        signal.Signals(signum).name, signal.Signals(self.fired).name)
            return
        self.fired = signum
        raise Terminated(signum)


def chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def disk_full(err: BaseException) -> OSError | None:
    """The ENOSPC / EDQUOT error in err's chain, if any."""
    return next((e for e in chain(err) if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)), None)


def failure_fields(err: BaseException) -> dict:
    """status.json fields of a failed run: error, and reason = terminated (signal) | disk_full (errno) | error."""
    fields = {"error": f"{type(err).__name__}: {err}", "reason": "error"}
    if isinstance(err, Terminated):
        fields.update(reason="terminated", signal=err.signame)
    elif isinstance(err, KeyboardInterrupt):
        fields.update(reason="terminated", signal="SIGINT")
    elif disk_full(err) is not None:
        full = disk_full(err)
        fields.update(reason="disk_full", errno=errno.errorcode.get(full.errno, str(full.errno)),
                      cause=f"{full.strerror or full}: {full.filename or str(full)}")
    return fields


def close_progress_bars() -> None:
    """Close tqdm bars a failed stage left open, so that none redraws itself after the last line (at exit)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def last_line(err: BaseException, status_path=None) -> str:
    """One line naming the cause of a failed run (what the console script prints last)."""
    where = f" (status: {status_path})" if status_path else ""
    if isinstance(err, Terminated):
        return f"crescent: terminated by {err.signame}{where}"
    full = disk_full(err)
    if full is not None:
        name = errno.errorcode.get(full.errno, str(full.errno))
        return f"crescent: failed: disk full ({name}): {full}{where}"
    return f"crescent: failed: {type(err).__name__}: {err}{where}"
