"""Crash-safe file writes: a file is either absent or complete.

Writes go to a temp file in the same folder, are fsynced and renamed over the target, so a kill or
a full disk leaves the previous version intact (and no temp file). A failed write raises OSError
(same errno, so PermissionError etc. still match) naming the file. `read_jsonl` refuses a torn last
line (one cut off by a writer that was killed mid-line) instead of parsing it as data.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class TornFileError(ValueError):
    """A JSONL file whose last line is cut off: its writer was killed or ran out of space mid-line."""


def _failed(err: OSError, what: str) -> OSError:
    """The same error (errno, so the same OSError subclass) with a message that names the path."""
    message = f"{what}: {err.strerror or err}"
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def _atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _failed(err, f"could not write {path}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _failed(err, f"could not write {path} (any previous version is left unchanged)") from err
        raise


def _encode(text: str) -> bytes:
    # backslashreplace: a lone surrogate in model text is written as its JSON escape, not a crash
    return text.encode("utf-8", errors="backslashreplace")


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + fsync + rename)."""
    _atomic_write(Path(path), _encode(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))


class DamagedFileError(ValueError):
    """A run or cache file that exists but does not decode; the message names it and what to do."""


def read_json(path: str | Path, expect: type | None = None, fix: str | None = None) -> Any:
    """The JSON value in `path`. A file that does not decode (torn, garbled, not UTF-8) or, with `expect`,
    holds another type (e.g. `null` where an object belongs) raises DamagedFileError naming the file, what
    was expected and what to do (`fix`, default: delete it and rerun the stage that writes it)."""
    fix = fix or f"delete {path} and rerun the stage that writes it"
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise DamagedFileError(f"{path} is damaged: expected a JSON document, could not decode it ({err}); "
                               f"{fix}") from err
    if expect is not None and not isinstance(obj, expect):
        raise DamagedFileError(f"{path} is damaged: expected a JSON {expect.__name__}, got "
                               f"{type(obj).__name__}; {fix}")
    return obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write all rows atomically; returns the row count."""
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in rows]
    _atomic_write(Path(path), _encode("".join(line + "\n" for line in lines)))
    return len(lines)


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy atomically: `dst` is its previous version or a whole copy of `src`, never a part."""
    _atomic_write(Path(dst), Path(src).read_bytes())


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """The rows (JSON objects, one per line) of a JSONL file; blank lines are skipped.

    A last line without its newline is accepted only when it is a whole JSON object (hand-written
    files); one that does not parse was cut off by its writer: TornFileError, never a row. Any other
    line that is not a JSON object raises ValueError with its line number.
    """
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError from a cut multi-byte character
                if not line.endswith(b"\n"):
                    raise TornFileError(f"{path}: the last line (line {number}) is cut off -- its writer was "
                                        "killed or ran out of space; rerun the stage that writes it") from err
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield row


def ensure_writable(directory: str | Path, what: str = "output directory") -> Path:
    """Create `directory` if needed and check that a file can be written in it: a clear OSError naming
    it (`what`, e.g. the config key) otherwise. Meant for a pre-flight check before models load."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _failed(err, f"{what} {directory} is not writable") from err
    return directory
