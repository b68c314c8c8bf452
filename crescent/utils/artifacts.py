"""Size and sha256 of the files a manifest vouches for, and their check on reuse.

A stage that writes a manifest (synth/manifest.json, train_result.json) records `record(paths, root)` in it; a
later run that would reuse the folder calls `verify(root, recorded)` first and gets the list of problems (empty:
every file is there, with the recorded size and sha256). A torn, shortened or bit-flipped file is then regenerated
or named in an error, never used.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping

_BLOCK = 1 << 20


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _name(path: Path, root: Path | None) -> str:
    return path.relative_to(root).as_posix() if root is not None else path.name


def record(paths: Iterable[str | Path], root: str | Path | None = None) -> dict[str, dict]:
    """{name: {"size", "sha256"}} of each file; name = its path relative to `root` (else its file name).
    A folder stands for every file under it."""
    root = Path(root) if root is not None else None
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return {_name(f, root): {"size": f.stat().st_size, "sha256": sha256(f)} for f in files}


def verify_files(root: str | Path, recorded: Mapping[str, Mapping]) -> dict[str, str]:
    """{name: problem} for each recorded file under `root` that is missing, has another size (torn, shortened,
    grown) or another sha256 (changed in place); {} when all match."""
    problems = {}
    for name, want in sorted(recorded.items()):
        path = Path(root) / name
        if not path.is_file():
            problems[name] = f"{path} is missing"
            continue
        size = path.stat().st_size
        if size != int(want["size"]):
            problems[name] = f"{path} has {size} bytes, {want['size']} recorded (torn or changed)"
        elif sha256(path) != want["sha256"]:
            problems[name] = f"{path} has another sha256 than recorded (changed in place)"
    return problems


def verify(root: str | Path, recorded: Mapping[str, Mapping]) -> list[str]:
    """The problems (messages naming the file) of the files under `root` against `recorded` (as `record` wrote
    it); [] when every file is there with its recorded size and sha256."""
    return list(verify_files(root, recorded).values())
