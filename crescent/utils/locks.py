"""Locks that work on cluster filesystems: per-unit locks of the synth cache, the run dir's training lock.

`UnitLock(path)` guards one unit of work (a bait round, an answer chunk, a dedup pass): jobs that share a config
hash split the units instead of one job holding the whole stage. Two mechanisms:

- flock (filelock.FileLock, the default): released by the kernel when the holder dies.
- a lock file (`<path>.lock.owner`, created with O_CREAT | O_EXCL, which NFSv3+ and Lustre honour even where
  flock is off) holding its owner {pid, host, since, heartbeat}; the holder rewrites the heartbeat every
  `heartbeat_s`, and a lock whose heartbeat is older than `stale_s` is taken over (its holder died: a killed job
  cannot release it). Used when flock is unavailable (the first flock raising OSError, e.g. ENOLCK on NFS without
  lockd) or when CRESCENT_LOCK=file.

Both write the owner file, so a waiting job prints who holds the lock (pid, host, since) at once, then a progress
line every `progress_s` (PROGRESS_S, 30 s) with the time waited so far.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)
LOCK_MODES = ("auto", "flock", "file")
HEARTBEAT_S = 10.0
STALE_S = 60.0
PROGRESS_S = 30.0  # a waiting process says whom it waits for every PROGRESS_S
_flock_broken = False  # set once flock has failed on this filesystem: the lock-file fallback from then on


def lock_mode() -> str:
    mode = os.environ.get("CRESCENT_LOCK", "auto")
    if mode not in LOCK_MODES:
        raise ValueError(f"CRESCENT_LOCK={mode!r}; allowed: {list(LOCK_MODES)}")
    return mode


def _owner() -> dict:
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"), "heartbeat": now}


def read_owner(path: str | Path) -> dict | None:
    """The owner record of the lock on `path` (None when free or unreadable)."""
    try:
        return json.loads(Path(f"{path}.lock.owner").read_text())
    except (OSError, ValueError):
        return None


def describe(owner: dict | None) -> str:
    if not owner:
        return "an unknown holder"
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"


class UnitLock:
    """A lock on the unit whose record is `path`. acquire(blocking=False) -> bool; a context manager blocks."""

    def __init__(self, path: str | Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
                 poll_s: float = 0.2, what: str | None = None, progress_s: float | None = None):
        self.path = Path(path)
        self.what = what or self.path.name  # named in the waiting lines
        self.progress_s = PROGRESS_S if progress_s is None else progress_s
        self.owner_path = Path(f"{path}.lock.owner")
        self.heartbeat_s, self.stale_s, self.poll_s = heartbeat_s, stale_s, poll_s
        self._flock: FileLock | None = None
        self._mode: str | None = None
        self._stop: threading.Event | None = None

    # -- flock ---------------------------------------------------------------------------------------------
    def _try_flock(self, timeout: float) -> bool:
        self._flock = self._flock or FileLock(f"{self.path}.lock")
        try:
            self._flock.acquire(timeout=timeout)
        except Timeout:
            return False
        self.owner_path.write_text(json.dumps(_owner()))
        return True

    # -- lock file -----------------------------------------------------------------------------------------
    def _try_file(self) -> bool:
        try:
            fd = os.open(self.owner_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_owner(self.path)
            age = time.time() - float((owner or {}).get("heartbeat", 0) or 0)
            if owner is not None and age < self.stale_s:
                return False
            if owner is None:  # being written right now, or garbage: stale only by the file's own age
                try:
                    if time.time() - self.owner_path.stat().st_mtime < self.stale_s:
                        return False
                except FileNotFoundError:
                    return False
            log.warning("taking over the stale lock on %s (held by %s, no heartbeat for %.0f s)",
                        self.path, describe(owner), age)
            try:
                self.owner_path.unlink()
            except FileNotFoundError:
                pass
            return self._try_file()
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_owner()))
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), daemon=True).start()
        return True

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            owner = {**(read_owner(self.path) or _owner()), "heartbeat": time.time()}
            tmp = self.owner_path.with_name(self.owner_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(owner))
            tmp.replace(self.owner_path)

    # -- interface -----------------------------------------------------------------------------------------
    def _try(self) -> bool:
        global _flock_broken
        mode = lock_mode()
        if mode == "flock" or (mode == "auto" and not _flock_broken):
            try:
                ok = self._try_flock(timeout=0)
                self._mode = "flock"
                return ok
            except OSError as err:
                if mode == "flock":
                    raise OSError(f"flock on {self.path}.lock failed ({err}); set CRESCENT_LOCK=file to use lock "
                                  "files with a heartbeat, or put paths.synth_cache on a local disk") from err
                log.warning("flock is not supported on %s (%s): using lock files with owner and heartbeat",
                            self.path.parent, err)
                _flock_broken = True
        self._mode = "file"
        return self._try_file()

    def acquire(self, blocking: bool = True) -> bool:
        if self._try():
            return True
        if not blocking:
            return False
        start = announced = time.time()
        log.warning("waiting for %s (lock %s.lock): held by %s", self.what, self.path, describe(read_owner(self.path)))
        while not self._try():
            if time.time() - announced >= self.progress_s:
                announced = time.time()
                log.warning("still waiting for %s after %.0f s: held by %s", self.what, announced - start,
                            describe(read_owner(self.path)))
            time.sleep(self.poll_s)
        log.info("got the lock on %s after %.0f s", self.what, time.time() - start)
        return True

    def release(self) -> None:
        if self._mode == "file":
            if self._stop is not None:
                self._stop.set()
            try:
                self.owner_path.unlink()
            except FileNotFoundError:
                pass
        elif self._mode == "flock" and self._flock is not None and self._flock.is_locked:
            try:
                self.owner_path.unlink()
            except FileNotFoundError:
                pass
            self._flock.release()
        self._mode = None

    def __enter__(self) -> "UnitLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
