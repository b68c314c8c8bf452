"""The fast backend's C kernels (fast_kernels.c): built once per machine with gcc, loaded with ctypes.

- decode attention that reads only each row's own cache length (torch's scaled_dot_product_attention needs
  the cache padded to the longest row) and reads a prompt's keys and values once for the rows that sample it;
- rotary embedding of q and k plus the KV-cache write in one call (torch: ~8 ops per layer);
- residual add + RMSNorm and silu(gate) * up in bf16 (torch: 6 ops), rounded as transformers rounds them (the
  RMS statistic is summed in another order: about 1 in 10^4 outputs differs by one bf16 ulp);
- temperature / top-p sampling with two passes over each row of logits (torch: several full-vocabulary ops).

`load_kernels` returns None (the caller falls back to torch, with a warning) when the source file is missing, no C
compiler is found or the build fails.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fast_kernels.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}
KEY_BLOCK = 16  # the C kernels store keys in blocks of this many positions (KEY_AT in fast_kernels.c)


def block_keys(k: torch.Tensor) -> torch.Tensor:
    """(..., T, D) keys, T a multiple of KEY_BLOCK, in the C kernels' layout (same shape): each block of positions
    stored as (D / 2, KEY_BLOCK, 2), the dims 2i and 2i+1 of its positions side by side."""
    *lead, length, dim = k.shape
    blocks = k.reshape(*lead, length // KEY_BLOCK, KEY_BLOCK, dim // 2, 2)
    return blocks.transpose(-3, -2).reshape(k.shape)


def unblock_keys(k: torch.Tensor) -> torch.Tensor:
    """Inverse of block_keys."""
    *lead, length, dim = k.shape
    blocks = k.reshape(*lead, length // KEY_BLOCK, dim // 2, KEY_BLOCK, 2)
    return blocks.transpose(-3, -2).reshape(k.shape)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def cpuinfo_line(field: str) -> str:
    """The first /proc/cpuinfo line starting with `field` ("flags", "model name"), else platform.processor()."""
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(field)), "")
    except OSError:
        return platform.processor()


def _build_key(compiler: str) -> str:
    """Source, flags, compiler and CPU: -march=native binaries must not be shared across machines."""
    parts = [SOURCE.read_text(), " ".join(FLAGS), compiler, platform.machine(), cpuinfo_line("flags")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _build(compiler: str, out_dir: Path) -> None:
    cmd = [compiler, *FLAGS, str(SOURCE), "-o", str(out_dir / "fast_kernels.so"), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class FastKernels:
    """ctypes front end of fast_kernels.so; every call runs on torch's intra-op threads (shared libgomp)."""

    def __init__(self, library: ctypes.CDLL):
        self._lib = library
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        library.decode_attention_scratch.argtypes = library.decode_attention_shared.argtypes = [i64, i64, i64]
        library.sample_scratch.argtypes = [i64]
        for fn in (library.decode_attention_scratch, library.decode_attention_shared, library.sample_scratch):
            fn.restype = i64
        for suffix in DTYPES.values():
            attend = getattr(library, f"decode_attention_{suffix}")
            attend.argtypes = [ptr] * 10 + [i64] * 6 + [ctypes.c_float, ctypes.c_int]
            rope = getattr(library, f"rope_store_{suffix}")
            rope.argtypes = [ptr] * 7 + [i64] * 5 + [ctypes.c_int]
            norm = getattr(library, f"add_norm_{suffix}")
            norm.argtypes = [ptr] * 4 + [i64] * 2 + [ctypes.c_float, ctypes.c_int]
            norm.restype = None
            sample = getattr(library, f"sample_{suffix}")
            sample.argtypes = [ptr] * 4 + [i64] * 2 + [ctypes.c_float] * 2 + [ctypes.c_int]
            attend.restype = rope.restype = sample.restype = None
        library.silu_mul_bf16.argtypes = [ptr] * 2 + [i64] * 2 + [ctypes.c_int]
        library.silu_mul_bf16.restype = None
        self._work = torch.empty(0)

    @staticmethod
    def supports(dtype: torch.dtype) -> bool:
        return dtype in DTYPES

    def _scratch(self, floats: int) -> torch.Tensor:
        if self._work.numel() < floats:
            self._work = torch.empty(floats, dtype=torch.float32)
        return self._work

    def attention(self, q: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  generated: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """softmax(q k^T / sqrt(D)) v over each row's prompt and generated positions.

        q (B, KV*G, D); prefix = (pk, pv, pre, plen): keys/values (NP, KV, TP, D), row b's prompt in slot pre[b],
        plen[b] positions; generated = (k, v, glen): keys/values (S >= B, KV, T, D), row b's in slot b, glen[b]
        positions. Keys in block_keys' layout (TP, T multiples of its block). Returns (B, KV*G, D)."""
        pk, pv, pre, plen = prefix
        k, v, glen = generated
        rows, heads, dim = q.shape
        kv_heads, groups = k.shape[1], heads // k.shape[1]
        if not all(t.is_contiguous() for t in (q, pk, pv, k, v)) or k.shape[0] < rows:
            raise ValueError("decode attention needs contiguous tensors and a cache slot per row")
        if pk.shape[2] % KEY_BLOCK or k.shape[2] % KEY_BLOCK or dim % 2:
            raise ValueError(f"decode attention needs cache lengths in multiples of {KEY_BLOCK} and an even head dim")
        pre, plen, glen = (t.to(torch.int64).contiguous() for t in (pre, plen, glen))
        threads, longest = torch.get_num_threads(), max(pk.shape[2], k.shape[2])
        work = self._scratch(threads * self._lib.decode_attention_scratch(groups, dim, longest)
                             + self._lib.decode_attention_shared(rows, heads, dim))
        out = torch.empty_like(q)
        getattr(self._lib, f"decode_attention_{DTYPES[q.dtype]}")(
            q.data_ptr(), pk.data_ptr(), pv.data_ptr(), pre.data_ptr(), plen.data_ptr(), k.data_ptr(), v.data_ptr(),
            glen.data_ptr(), out.data_ptr(), work.data_ptr(), rows, kv_heads, groups, dim, pk.shape[2], k.shape[2],
            dim**-0.5, threads,
        )
        return out

    def rope_store(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Rotate q and k of qkv (B, heads + 2 KV, D) with cos, sin (B, D); write k and v to positions[b] of slot b
        of k, v (S >= B, KV, T, D), k in block_keys' layout. Returns the rotated q (B, heads, D)."""
        rows, _, dim = qkv.shape
        kv_heads, length = k.shape[1], k.shape[2]
        tensors = (qkv, cos, sin, k, v)
        if not all(t.is_contiguous() and t.dtype == qkv.dtype for t in tensors) or k.shape[0] < rows:
            raise ValueError("rope_store needs contiguous tensors of one dtype and a cache slot per row")
        if length % KEY_BLOCK or dim % 2:
            raise ValueError(f"rope_store needs a cache length in multiples of {KEY_BLOCK} and an even head dim")
        positions = positions.to(torch.int64).contiguous()
        q = torch.empty(rows, heads, dim, dtype=qkv.dtype)
        getattr(self._lib, f"rope_store_{DTYPES[qkv.dtype]}")(
            qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), positions.data_ptr(), q.data_ptr(), k.data_ptr(),
            v.data_ptr(), rows, heads, kv_heads, dim, length, torch.get_num_threads(),
        )
        return q

    def add_norm(self, x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x += y in place (when y is given), then returns RMSNorm(x) (transformers' LlamaRMSNorm)."""
        if not (x.is_contiguous() and (y is None or y.is_contiguous() and y.shape == x.shape)):
            raise ValueError("add_norm needs contiguous x and y of one shape")
        h = torch.empty_like(x)
        getattr(self._lib, f"add_norm_{DTYPES[x.dtype]}")(
            x.data_ptr(), None if y is None else y.data_ptr(), weight.data_ptr(), h.data_ptr(), x.shape[0],
            x.shape[1], eps, torch.get_num_threads(),
        )
        return h

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for bf16 gate_up (N, 2I) = [gate | up], as the model computes it in bf16."""
        rows, width = gate_up.shape
        if gate_up.dtype != torch.bfloat16 or not gate_up.is_contiguous():
            raise ValueError("silu_mul needs a contiguous bf16 tensor")
        out = torch.empty(rows, width // 2, dtype=gate_up.dtype)
        self._lib.silu_mul_bf16(gate_up.data_ptr(), out.data_ptr(), rows, width // 2, torch.get_num_threads())
        return out

    def sample(self, logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
        """One token per row of logits (B, V): temperature > 0, nucleus top_p, uniform draws u (B,) float64."""
        rows, vocab = logits.shape
        logits, u, threads = logits.contiguous(), u.to(torch.float64).contiguous(), torch.get_num_threads()
        work = self._scratch(threads * self._lib.sample_scratch(vocab))
        out = torch.empty(rows, dtype=torch.int64)
        getattr(self._lib, f"sample_{DTYPES[logits.dtype]}")(
            logits.data_ptr(), u.data_ptr(), out.data_ptr(), work.data_ptr(), rows, vocab, temperature, top_p, threads,
        )
        return out


_LOADED: dict[str, FastKernels | None] = {}


def load_kernels(cache_dir: str | Path | None = None) -> FastKernels | None:
    """The compiled kernels (built into <cache>/kernels/ on first use), or None where they cannot be built."""
    from crescent.models.embedded import build_once
    from crescent.models.loading import default_cache_dir

    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler (gcc, cc or $CC) found: the fast backend runs its torch fallbacks")
        return None
    try:
        key = _build_key(compiler)
    except OSError as err:  # an install without the kernel source (it ships as package data)
        log.warning("the fast backend's kernel source %s cannot be read (%s; reinstall crescent to restore it): "
                    "the fast backend runs its torch fallbacks", SOURCE, err.strerror or err)
        return None
    out_dir = Path(cache_dir or default_cache_dir()) / "kernels" / f"fast-{key}"
    if str(out_dir) not in _LOADED:
        try:
            build_once(out_dir, lambda tmp: _build(compiler, tmp), "fast backend kernels")
            _LOADED[str(out_dir)] = FastKernels(ctypes.CDLL(str(out_dir / "fast_kernels.so")))
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", None) or err
            log.warning("building the fast backend kernels failed (%s): using the torch fallbacks", str(detail)[-2000:])
            _LOADED[str(out_dir)] = None
    return _LOADED[str(out_dir)]
