"""Data parallel on CPU: backend.data_parallel_size=2 worker processes, and 2 sharded array-style invocations
(backend.shard=i/2) writing into one cache, give byte-identical questions.jsonl / sft.jsonl to D=1; a worker killed
mid-stage and a rerun give the same rows; the lock-file fallback (no flock)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT

SMALL = ["debug=default", "sampling.num_questions=6", "sampling.question.n=4", "questions.calls_per_round=1",
         "questions.max_calls=12", "questions.rounds_per_pass=4", "sampling.answer_chunk=1", "voting.k=2",
         "sampling.question.max_new_tokens=16", "sampling.answer.max_new_tokens=16"]
SMOL = ["logger=none", "sampling.num_questions=4", "sampling.question.n=4", "questions.calls_per_round=1",
        "questions.max_calls=8", "questions.rounds_per_pass=2", "sampling.answer_chunk=1", "voting.k=2",
        "sampling.question.max_new_tokens=48", "sampling.answer.max_new_tokens=48"]


def _start(args, cache: Path, run_dir: Path, env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "crescent", *args, f"paths.synth_cache={cache}", f"hydra.run.dir={run_dir}",
           "print_config=false"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def _ok(proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=900) == 0, proc.stderr.read().decode()[-3000:]


def _rows(run_dir: Path) -> tuple[str, str, str]:
    """questions.jsonl, sft.jsonl and answers.jsonl (the tiny random model's k answers rarely agree, so its
    sft.jsonl may be empty: the sampled answers are compared too)."""
    synth = run_dir / "synth"
    return tuple((synth / name).read_text() for name in ("questions.jsonl", "sft.jsonl", "answers.jsonl"))


def _check_parallel_equals_serial(tmp_path, args):
    _ok(_start(args, tmp_path / "c1", tmp_path / "d1"))
    reference = _rows(tmp_path / "d1")
    assert reference[0] and reference[2]
    _ok(_start([*args, "backend.data_parallel_size=2"], tmp_path / "c2", tmp_path / "d2"))
    assert _rows(tmp_path / "d2") == reference
    shards = [_start([*args, f"backend.shard={i}/2"], tmp_path / "c3", tmp_path / f"s{i}") for i in range(2)]
    for p in shards:
        _ok(p)
    assert _rows(tmp_path / "s0") == _rows(tmp_path / "s1") == reference
    return reference


def test_two_workers_and_two_shards_give_the_rows_of_one_process(tmp_path):
    _check_parallel_equals_serial(tmp_path, SMALL)


@pytest.mark.slow
def test_smollm2_two_workers_and_two_shards_give_the_rows_of_one_process(tmp_path):
    _check_parallel_equals_serial(tmp_path, SMOL)


@pytest.mark.slow  # 35 s; the default suite keeps the two-worker rows test and the kills of tests/test_chaos.py
def test_killing_one_worker_mid_stage_then_rerun_gives_the_same_rows(tmp_path):
    _ok(_start(SMALL, tmp_path / "ref_cache", tmp_path / "ref"))
    reference = _rows(tmp_path / "ref")
    cache = tmp_path / "cache"
    proc = _start([*SMALL, "backend.data_parallel_size=2"], cache, tmp_path / "r1")
    victim, t0 = None, time.time()
    while victim is None:
        assert proc.poll() is None, "the run finished before a worker could be killed: " + proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 600
        for owner in cache.glob("**/*.lock.owner"):  # per-stage folders: questions/<key>/raw/..., answers/<key>/...
            try:
                pid = json.loads(owner.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue
            if pid != proc.pid:  # a worker (the parent's own units would carry its pid)
                os.kill(pid, signal.SIGKILL)
                victim = pid
                break
        time.sleep(0.05)
    assert proc.wait(timeout=600) != 0
    assert "backend.data_parallel_size=2" in proc.stderr.read().decode()
    assert not list(cache.glob("*/manifest.json"))
    _ok(_start([*SMALL, "backend.data_parallel_size=2"], cache, tmp_path / "r2"))
    assert _rows(tmp_path / "r2") == reference


def test_lock_file_fallback_records_the_owner_and_takes_over_a_stale_lock(tmp_path, monkeypatch, caplog):
    from crescent.utils import locks

    monkeypatch.setenv("CRESCENT_LOCK", "file")
    unit = tmp_path / "chunk_00000.json"
    first = locks.UnitLock(unit, heartbeat_s=0.05, stale_s=0.5)
    assert first.acquire(blocking=False)
    owner = locks.read_owner(unit)
    assert owner["pid"] == os.getpid() and owner["host"] and owner["since"]
    second = locks.UnitLock(unit, heartbeat_s=0.05, stale_s=0.5)
    time.sleep(0.7)  # the holder's heartbeat keeps its lock alive past stale_s
    assert not second.acquire(blocking=False)
    assert locks.read_owner(unit)["heartbeat"] > owner["heartbeat"]
    first.release()
    assert second.acquire(blocking=False)
    # a holder that died (no heartbeat): its lock is taken over after stale_s
    second._stop.set()
    dead = {**locks.read_owner(unit), "pid": 999999, "heartbeat": time.time() - 10}
    (tmp_path / "chunk_00000.json.lock.owner").write_text(json.dumps(dead))
    third = locks.UnitLock(unit, stale_s=0.5)
    with caplog.at_level("WARNING"):
        assert third.acquire(blocking=False)
    assert "pid 999999" in caplog.text
    third.release()
    assert locks.read_owner(unit) is None


def test_flock_failure_falls_back_to_lock_files(tmp_path, monkeypatch):
    from crescent.utils import locks

    monkeypatch.setattr(locks, "_flock_broken", False)
    monkeypatch.setattr(locks.UnitLock, "_try_flock", lambda self, timeout: (_ for _ in ()).throw(OSError(37, "No locks available")))
    lock = locks.UnitLock(tmp_path / "u.json")
    assert lock.acquire(blocking=False) and lock._mode == "file"
    assert locks.read_owner(tmp_path / "u.json")["pid"] == os.getpid()
    lock.release()


def test_bad_shard_and_data_parallel_values_name_the_key():
    from crescent.backends.units import parse_shard
    from crescent.backends.workers import data_parallel_size

    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError, match="backend.shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="backend.data_parallel_size"):
        data_parallel_size({"data_parallel_size": 0})
