"""Data parallel on one node: D engine processes, each on its own share of a stage's units.

Processes come from concurrent.futures.ProcessPoolExecutor (spawn start method, one fresh process per task, so a
CUDA_VISIBLE_DEVICES set at its start holds for its engine); the units, their locks and the shared config-hash cache
do the rest (crescent.backends.units): no scheduler or RPC of our own. A worker killed mid-stage leaves its claimed
units undone (their locks die with it); the error names the key, and a rerun (or any other shard) finishes them.
"""
from __future__ import annotations

import importlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Mapping, Sequence


def data_parallel_size(backend_cfg: Mapping[str, Any]) -> int:
    value = backend_cfg.get("data_parallel_size", 1)
    try:
        d = int(value if value is not None else 1)
    except (TypeError, ValueError):
        d = 0
    if d < 1 or (isinstance(value, float) and value != d):
        raise ValueError(f"backend.data_parallel_size={value!r}; allowed: an integer >= 1 (engine processes on this "
                         "node, each on its own share of the units)")
    return d


def worker_devices(backend_cfg: Mapping[str, Any], d: int) -> list[dict[str, str]]:
    """The environment of each of the d workers: for backend=vllm, CUDA_VISIBLE_DEVICES with its own
    tensor_parallel_size GPUs (of those visible to this process); nothing for the CPU backends."""
    if backend_cfg.get("name") != "vllm":
        return [{} for _ in range(d)]
    tp = int(backend_cfg.get("tensor_parallel_size", 1))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g for g in visible.split(",") if g.strip()]
    else:
        try:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        except ImportError:
            gpus = []
    if len(gpus) < d * tp:
        raise RuntimeError(f"backend.data_parallel_size={d} x backend.tensor_parallel_size={tp} needs {d * tp} GPUs, "
                           f"but {len(gpus)} are visible (CUDA_VISIBLE_DEVICES={visible!r}): lower "
                           "backend.data_parallel_size, or run more nodes as array tasks with backend.shard=i/N")
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[j * tp:(j + 1) * tp])} for j in range(d)]


def _call(target: str, env: dict[str, str], args: tuple) -> None:
    os.environ.update(env)
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(*args)


def run_workers(target: str, per_worker_args: Sequence[tuple], envs: Sequence[dict[str, str]]) -> None:
    """Run `module:function`(*args) once per worker, all at once, each in a fresh spawned process."""
    if not per_worker_args:
        return
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(per_worker_args), mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_call, target, env, args): j for j, (args, env) in enumerate(zip(per_worker_args, envs))}
        try:
            for fut in as_completed(futures):
                fut.result()
        except BrokenProcessPool as err:
            raise RuntimeError(f"a worker of backend.data_parallel_size={len(per_worker_args)} died (killed, or out of "
                               "memory); the units it held are left undone: rerun the same command to finish them "
                               "(finished units are kept)") from err
