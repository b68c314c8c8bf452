"""Which process am I, and "wait for rank 0's result": rank helpers that work before Lightning's process group exists.

Launchers start the same `crescent` command once per rank:

- Lightning's own launcher (plain `crescent trainer.devices=N`): rank 0 runs ALONE until `trainer.fit`, which then
  re-executes the command for local ranks 1..N-1 with LOCAL_RANK / NODE_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
  set, the same hydra.run.dir and hydra.output_subdir=null (lightning/pytorch/strategies/launchers/subprocess_script.py);
- torchrun: all ranks start together with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT / TORCHELASTIC_*;
- srun (and the submitit launcher, which runs the Hydra job in every SLURM task): all tasks start together with
  SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID.

Rank and world size are read through Lightning's own cluster-environment classes (TorchElasticEnvironment,
SLURMEnvironment, LSFEnvironment, detected in the order Lightning's accelerator connector uses), so crescent and the
Trainer always agree on who is rank 0. Lightning's default environment keeps the rank in the process (set by the
strategy), so for its launcher the rank is NODE_RANK x processes-per-node + LOCAL_RANK, as the launcher sets them.

Why files for "wait for rank 0's result" (rank_zero_first) rather than a torch.distributed process group or store:
with Lightning's launcher ranks 1..N-1 do not exist until rank 0 reaches `trainer.fit`, so nothing collective can
happen before training (a group made by the children before fit would also be the one Lightning reuses, with rank 0
already inside fit: deadlock); with torchrun/srun the ranks start together and a group created before Lightning's would
fix the backend (gloo vs nccl) and timeout behind Lightning's and DeepSpeed's back. A result file written atomically by
rank 0 in the run dir works the same for all three launchers, carries the result itself (a manifest, a checkpoint
decision) and not just a signal, and tells the waiting ranks when rank 0 failed (the file then holds the error). Files
live in <run_dir>/.ranks/<launch id>/, so a relaunch into the same run dir never reads an older launch's results.
MULTI-NODE: the run dir must be on a filesystem all nodes share (it must be anyway: checkpoints, hf_export/).

After training, ranks use the process group Lightning made (trainer.strategy.barrier), e.g. before the ZeRO-3 export.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SYNC_DIR = ".ranks"  # in the run dir
WAIT_ENV = "CRESCENT_RANK_WAIT_S"  # how long ranks > 0 wait for one rank-0 result (default 24 h)
DEFAULT_WAIT_S = 24 * 3600
LAUNCH_ENV = "CRESCENT_LAUNCH_ID"  # one id per launch, inherited by the processes Lightning's launcher starts
STAMP_ENV = "CRESCENT_RUN_STAMP"  # "<date>/<time>_<suffix>" of the default run dir, the same on every rank
# any of these in the environment means a launcher may have started several processes
_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "LSB_JOBID",
                  "TORCHELASTIC_RUN_ID")


class RankZeroFailed(RuntimeError):
    """Rank 0 failed (or never answered) in a step the other ranks were waiting for."""


def _cluster_environment():
    """Lightning's ClusterEnvironment for an externally launched job (torchrun, srun, LSF), else None.

    Lightning is imported only when a launcher variable is set: a single-process run stays light."""
    if not any(v in os.environ for v in _LAUNCHER_VARS):
        return None
    from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment):  # Lightning's priority order
        if env_type.detect():
            return env_type()
    return None


def _process_group():
    try:
        import torch.distributed as td
    except ImportError:  # pragma: no cover
        return None
    return td if td.is_available() and td.is_initialized() else None


def local_rank() -> int:
    env = _cluster_environment()
    return env.local_rank() if env is not None else int(os.environ.get("LOCAL_RANK", 0))


def node_rank() -> int:
    env = _cluster_environment()
    if env is not None:
        return env.node_rank()
    return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))


def global_rank(devices_per_node: int | None = None) -> int:
    """This process's global rank: from the process group when one exists, else from the launcher's environment.

    devices_per_node (trainer.devices) is needed only for Lightning's launcher on several nodes, where the rank is
    NODE_RANK x devices + LOCAL_RANK; without it a process on node > 0 still reports a rank > 0."""
    pg = _process_group()
    if pg is not None:
        return pg.get_rank()
    env = _cluster_environment()
    if env is not None:
        return env.global_rank()
    node, local = node_rank(), int(os.environ.get("LOCAL_RANK", 0))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or devices_per_node or 1)
    return node * max(per_node, local + 1) + local


def world_size() -> int:
    """Processes in this launch as far as this process can tell: with Lightning's launcher, rank 0 sees 1 until
    trainer.fit has started the others."""
    pg = _process_group()
    if pg is not None:
        return pg.get_world_size()
    env = _cluster_environment()
    if env is not None:
        return env.world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def launched_externally() -> bool:
    """True when a launcher (torchrun, srun, Lightning's for its children) started this process as one of several."""
    return "LOCAL_RANK" in os.environ or _cluster_environment() is not None and world_size() > 1


def is_global_zero() -> bool:
    """True on the process that owns status.json, summaries, the W&B run, export and eval."""
    return global_rank() == 0


def rank_label() -> str:
    return f"rank {global_rank()}/{world_size()}"


# ---------------------------------------------------------------------------------------------- launch identity
_agreed: dict[str, str] = {}


def _now_stamp(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t).strftime("%Y-%m-%d/%H-%M-%S")


def _agent_store_agree(key: str, proposal: str) -> str | None:
    """The first proposal any rank made for `key`, through torchrun's own TCPStore (hosted by the elastic agent at
    MASTER_ADDR:MASTER_PORT when TORCHELASTIC_USE_AGENT_STORE=True); None when there is no such store."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in os.environ:
        return None
    from datetime import timedelta

    import torch.distributed as td

    try:
        store = td.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                            timeout=timedelta(seconds=60))
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        value = store.compare_set(f"crescent/{key}/{restart}", "", proposal)
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError is a RuntimeError
        log.warning("could not reach torchrun's store at %s:%s (%s): each rank uses its own %s",
                    os.environ["MASTER_ADDR"], os.environ.get("MASTER_PORT"), e, key)
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _launcher_id() -> str | None:
    """An id the launcher gives all ranks of one launch (and only that launch), or None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id not in ("", "none"):  # torchrun --standalone or --rdzv-id
        return f"tr-{run_id[:12]}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if os.environ.get("SLURM_JOB_ID") and "SLURM_NTASKS" in os.environ:
        step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID", "0"))
        return f"sl-{os.environ['SLURM_JOB_ID']}.{step}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    return None


def launch_id() -> str:
    """One id per launch, identical on all its ranks: CRESCENT_LAUNCH_ID when set (Lightning's launcher passes rank 0's
    to the processes it starts), else agreed through torchrun's store, else the torchrun / SLURM job ids, else new.
    It names <run_dir>/.ranks/<launch id>/, so results of an earlier launch into the same run dir are never read."""
    if os.environ.get(LAUNCH_ENV):
        return os.environ[LAUNCH_ENV]
    if "launch" not in _agreed:
        proposal = f"{_now_stamp().replace('/', '_')}-{secrets.token_hex(3)}"
        _agreed["launch"] = _agent_store_agree("launch", proposal) or _launcher_id() or proposal
    return _agreed["launch"]


def export_launch_id() -> str | None:
    """Put this launch's id in the environment so that processes started from here (Lightning's launcher) share it;
    returns the previous value (None: unset), for restore_launch_id."""
    previous = os.environ.get(LAUNCH_ENV)
    os.environ[LAUNCH_ENV] = launch_id()
    return previous


def restore_launch_id(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(LAUNCH_ENV, None)
    else:
        os.environ[LAUNCH_ENV] = previous


def run_stamp() -> str:
    """'<date>/<time>_<suffix>' for the default run dir (resolver crescent.run_stamp): the same on every rank of one
    launch, different for two launches in the same second.

    CRESCENT_RUN_STAMP when set; torchrun: the first rank's proposal, agreed through torchrun's own store;
    srun: the SLURM job start time (SLURM_JOB_START_TIME, else the date only) and job/step id; else now + 6 random hex
    digits (a single process, or rank 0 of Lightning's launcher, whose children are given the folder itself)."""
    if os.environ.get(STAMP_ENV):
        return os.environ[STAMP_ENV]
    if "stamp" not in _agreed:
        proposal = f"{_now_stamp()}_{secrets.token_hex(3)}"  # 100 launches in one second: 0.03% of a clash
        stamp = _agent_store_agree("run_stamp", proposal)
        if stamp is None and os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
            step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID", "0"))
            start = os.environ.get("SLURM_JOB_START_TIME")
            # without the start time only the date is local to each task (differs only across a midnight)
            when = _now_stamp(float(start)) if start else datetime.now().strftime("%Y-%m-%d") + "/slurm"
            stamp = f"{when}_{os.environ['SLURM_JOB_ID']}.{step}"
        _agreed["stamp"] = stamp or proposal
    return _agreed["stamp"]


def short_hash(text: object, n: int = 8) -> str:
    """The first n hex digits of sha256(str(text)) (resolver crescent.short_hash): a sweep job's folder name
    from its overrides, stable across runs and machines, never too long for the file system."""
    import hashlib

    return hashlib.sha256(str(text).encode()).hexdigest()[:int(n)]


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("crescent.run_stamp"):
        # use_cache: one value per config object, like Hydra's ${now:}
        OmegaConf.register_new_resolver("crescent.run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("crescent.short_hash"):
        # ${crescent.short_hash:${hydra.job.override_dirname}}: the sweep subdir (conf/hydra/default.yaml)
        OmegaConf.register_new_resolver("crescent.short_hash", short_hash)


# -------------------------------------------------------------------------------------------- rank-0 results
def sync_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SYNC_DIR / launch_id()


def _wait_limit() -> float:
    raw = os.environ.get(WAIT_ENV)
    if raw is None:
        return float(DEFAULT_WAIT_S)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{WAIT_ENV}={raw!r}: expected seconds (a number > 0)") from None
    if not value > 0:
        raise ValueError(f"{WAIT_ENV}={raw!r}: expected seconds (a number > 0)")
    return value


def _write(path: Path, obj: Any) -> None:
    from crescent.utils.io import write_json

    write_json(path, obj)


def publish(run_dir: str | Path, name: str, result: Any = None, error: str | None = None) -> Path:
    """Rank 0: the result (or the error) of step `name`, for the ranks waiting in wait_for."""
    path = sync_dir(run_dir) / f"{name}.json"
    body = {"ok": error is None, "result": result, "error": error, "rank": global_rank(), "host": socket.gethostname(),
            "pid": os.getpid(), "time": time.time()}
    _write(path, body)
    return path


def wait_for(run_dir: str | Path, name: str, timeout_s: float | None = None, poll_s: float = 0.5,
             progress_s: float = 60.0) -> Any:
    """Ranks > 0: block until rank 0 published step `name`, then return its result. Raises RankZeroFailed when rank 0
    reports an error, or after timeout_s (default: CRESCENT_RANK_WAIT_S, 24 h) with no answer."""
    path = sync_dir(run_dir) / f"{name}.json"
    limit = _wait_limit() if timeout_s is None else float(timeout_s)
    t0 = last = time.monotonic()
    log.info("%s: waiting for rank 0 to finish %s (%s)", rank_label(), name, path)
    while True:
        if path.is_file():
            try:
                body = json.loads(path.read_text())
            except (OSError, ValueError):  # written by rename, so only a foreign writer gets here; retry
                body = None
            if body is not None:
                if not body.get("ok"):
                    raise RankZeroFailed(f"rank 0 failed in {name}: {body.get('error')} (see its log and status.json "
                                         f"in {Path(run_dir)})")
                log.info("%s: rank 0 finished %s after %.0f s of waiting", rank_label(), name, time.monotonic() - t0)
                return body.get("result")
        now = time.monotonic()
        if now - t0 > limit:
            raise RankZeroFailed(f"{rank_label()}: rank 0 did not finish {name} within {limit:.0f} s (no {path}); "
                                 f"is rank 0 alive, and is the run dir on a filesystem all nodes share? "
                                 f"Raise the limit with {WAIT_ENV}=SECONDS")
        if now - last >= progress_s:
            log.info("%s: still waiting for rank 0 to finish %s (%.0f s so far, %s)", rank_label(), name, now - t0,
                     path)
            last = now
        time.sleep(poll_s)


def rank_zero_first(run_dir: str | Path, name: str, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
    """fn() on global rank 0, its (JSON-able) result published to the other ranks, which wait for it and return it.
    A failure on rank 0 is published too (the others raise RankZeroFailed instead of waiting) and re-raised."""
    if not is_global_zero():
        return wait_for(run_dir, name, timeout_s)
    try:
        result = fn()
    except BaseException as e:
        try:
            publish(run_dir, name, error=f"{type(e).__name__}: {e}")
        except OSError:
            log.exception("could not publish rank 0's failure in %s", name)
        raise
    publish(run_dir, name, result)
    return result


def record_rank(run_dir: str | Path, info: dict) -> Path:
    """<run_dir>/.ranks/<launch id>/rank<k>.json: what this rank did (stages run / waited / skipped, status writes),
    for debugging a launch and for the multi-process tests."""
    rank = global_rank()
    path = sync_dir(run_dir) / f"rank{rank}.json"
    _write(path, {"rank": rank, "world_size": world_size(), "local_rank": local_rank(), "host": socket.gethostname(),
                  "pid": os.getpid(), **info})
    return path


# ------------------------------------------------------------------------------- Lightning launcher's children
_children: list = []


def adopt_children(trainer) -> None:
    """Remember the processes Lightning's launcher started in trainer.fit, so rank 0 can wait for them at the end."""
    procs = getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None) or []
    _children.extend(p for p in procs if p not in _children)


def wait_for_children(timeout_s: float = 600.0) -> list[int | None]:
    """Rank 0 of Lightning's launcher: wait until the ranks it started have exited; their return codes."""
    import subprocess

    codes = []
    for proc in list(_children):
        try:
            codes.append(proc.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            log.warning("rank process %s still running %.0f s after this rank finished", proc.pid, timeout_s)
            codes.append(None)
    _children.clear()
    return codes
