"""Units of generation work, done once each into the shared config-hash cache, in as few engine calls as allowed.

A stage (bait sampling, answers, reflection) is a list of `Unit`s: prompts whose outputs are written to one record
file (its presence marks the unit done). `run_units` does the missing ones:

- Seeds. A backend with per-request seeds (`per_request_seeds = True`: vLLM) gets every prompt's own request seed
  (crescent.utils.seeding.request_seeds: disjoint [seed, seed + n) stream ranges over the whole stage), so a row
  depends only on (master seed, stage, prompt index, sample index), and ALL the missing units of the stage go to the
  engine in ONE call (vLLM schedules and batches them itself). Backends without per-request seeds (hf, fast) make one
  call per unit with the unit's own seed, so a unit's rows still do not depend on which process does it.
- Locks. Each unit has its own lock (crescent.utils.locks.UnitLock): jobs and worker processes that share the
  cache split the units between them; none holds a whole stage.
- Shards. shard=(i, N) does the units with index % N == i first, then any unclaimed others (a dead or slow shard's
  units get done), then waits for the units other processes hold (printing who holds them), redoing any a dead
  holder left undone. Every process ends with the whole stage on disk, so what follows is identical in each.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from crescent.backends.base import Backend, SamplingParams
from crescent.utils.io import DamagedFileError, read_json, write_json
from crescent.utils.locks import UnitLock
from crescent.utils.seeding import request_seeds

log = logging.getLogger(__name__)


@dataclass
class Unit:
    path: Path  # the unit's record (JSON); written last, its presence marks the unit done
    prompts: list  # the unit's prompts, in stage order
    seed: int  # the seed of the unit's own call (backends without per-request seeds)
    first: int  # the stage index of the unit's first prompt (per-request stream seeds)


def unit_done(path: Path) -> bool:
    """The unit's record is on disk and reads back as a JSON object. A damaged one (torn, garbled, `null`: written
    by something else than crescent's atomic writes, or changed since) is removed, with a warning naming it, so
    the unit is done again (its rows depend only on its seed: the redo writes the same record)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        read_json(path, expect=dict, fix="removing it: the unit is done again")
        return True
    except DamagedFileError as err:
        log.warning("%s", err)
        path.unlink(missing_ok=True)
        return False


def parse_shard(value: Any) -> tuple[int, int] | None:
    """backend.shard "i/N" -> (i, N); None/"" -> None. A clear error otherwise."""
    if value in (None, "", "null"):
        return None
    try:
        i, n = (int(x) for x in str(value).split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"backend.shard={value!r}: expected 'i/N' with 0 <= i < N (e.g. backend.shard=0/4 for the "
                         "first of 4 array tasks writing into one paths.synth_cache), or null")
    return i, n


def per_request_seeds(backend: Any) -> bool:
    return bool(getattr(backend, "per_request_seeds", False))


def _order(units: Sequence[Unit], shard: tuple[int, int] | None) -> list[int]:
    idx = list(range(len(units)))
    if shard is None:
        return idx
    i, n = shard
    return [u for u in idx if u % n == i] + [u for u in idx if u % n != i]


def generate_batched(backend: Backend, prompts_per_unit: Sequence[Sequence], params: SamplingParams,
                     seeds_per_unit: Sequence[int], firsts: Sequence[int], seed: int, stage: tuple) -> list[list]:
    """Outputs per unit: one call over all units with per-request seeds where the backend takes them, else one
    call per unit with its seed."""
    if per_request_seeds(backend):
        flat = [p for ps in prompts_per_unit for p in ps]
        seeds = [s for ps, f in zip(prompts_per_unit, firsts) for s in request_seeds(seed, stage, f, len(ps), params.n)]
        outs = backend.generate(flat, params, seeds) if flat else []
        result, lo = [], 0
        for ps in prompts_per_unit:
            result.append(outs[lo:lo + len(ps)])
            lo += len(ps)
        return result
    return [backend.generate(list(ps), params, s) for ps, s in zip(prompts_per_unit, seeds_per_unit)]


def run_units(units: Sequence[Unit], params: SamplingParams, seed: int, stage: tuple,
              get_backend: Callable[[], Backend], record: Callable[[int, list, float], dict],
              shard: tuple[int, int] | None = None, on_done: Callable[[int], None] | None = None) -> None:
    """Make sure every unit's record exists. record(unit index, outputs per prompt, seconds) -> the JSON record."""

    def do(batch: list[int]) -> None:
        batch = [u for u in batch if not unit_done(units[u].path)]  # another process may have finished it meanwhile
        if not batch:
            return
        t0 = time.perf_counter()
        backend = get_backend()
        if per_request_seeds(backend):
            outs = generate_batched(backend, [units[u].prompts for u in batch], params, [units[u].seed for u in batch],
                                    [units[u].first for u in batch], seed, stage)
            seconds = (time.perf_counter() - t0) / len(batch)
            for u, o in zip(batch, outs):
                write_json(units[u].path, record(u, o, round(seconds, 3)))
                on_done and on_done(u)
        else:
            for u in batch:
                t1 = time.perf_counter()
                o = backend.generate(list(units[u].prompts), params, units[u].seed)
                write_json(units[u].path, record(u, o, round(time.perf_counter() - t1, 3)))
                on_done and on_done(u)

    locks: dict[int, UnitLock] = {}
    try:
        # 1. claim the free units of this shard, do them (one call with per-request seeds, else one per unit);
        #    then the same for other shards' units nobody has claimed yet (a dead or slow process's share)
        order = _order(units, shard)
        own = set(order if shard is None else [u for u in order if u % shard[1] == shard[0]])
        for group in ([u for u in order if u in own], [u for u in order if u not in own]):
            claimed = []
            for u in group:
                if unit_done(units[u].path):
                    on_done and on_done(u)
                    continue
                lock = UnitLock(units[u].path)
                if lock.acquire(blocking=False):
                    locks[u] = lock
                    claimed.append(u)
            if claimed and not per_request_seeds(get_backend()):
                for u in claimed:  # release each as soon as it is written, so a waiting process sees progress
                    do([u])
                    locks.pop(u).release()
            else:
                do(claimed)
            for lock in locks.values():
                lock.release()
            locks.clear()
        # 2. units held by others: wait for each (blocking lock; prints the holder), redo if its holder died
        for u in _order(units, shard):
            if unit_done(units[u].path):
                continue
            lock = UnitLock(units[u].path, what=f"{units[u].path.parent.name}/{units[u].path.name} (another process "
                                                 "is generating it)")
            with lock:
                if not unit_done(units[u].path):
                    do([u])
                elif on_done:
                    on_done(u)
    finally:
        for lock in locks.values():
            lock.release()
