"""Issue 21 items 8 and 9: status.json is always final, waiting processes say whom they wait for.

- SIGTERM during generate (what `timeout` and SLURM send): status.json failed / terminated / SIGTERM, exit code 143,
  the last line printed names the signal. The deterministic point: this test holds one of generate's unit locks
  (the first bait unit's), so the run waits inside the stage, and prints who holds the lock, before the signal.
- A full disk: status.json falls back to a minimal in-place write, or to one stderr line naming ENOSPC and the path;
  the last line of a failed run names the disk-full cause.
- Locks: the waiter names the holder (pid, host, since) at once and with the time waited, and proceeds after
  release; two trainings in one run dir: the second waits for the first.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import ROOT, compose_cfg
from crescent.utils import locks, termination
from crescent.utils.io import read_json

HOLDER = """
import sys, time
from pathlib import Path
from crescent.utils.locks import UnitLock
lock = UnitLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
release = Path(sys.argv[2])
while not release.exists():
    time.sleep(0.05)
lock.release()
print("released", flush=True)
"""


def _env():
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}


class Holder:
    """Another process holding the lock on `path` until release()."""

    def __init__(self, path: Path, tmp_path: Path):
        self.release_file = tmp_path / f"release_{path.name}"
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(self.release_file)],
                                     stdout=subprocess.PIPE, text=True, env=_env())
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.release_file.touch()

    def close(self) -> None:
        self.release()
        self.proc.wait(timeout=60)


def _lines_until(proc, needle: str, seen: list) -> str:
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never printed; output:\n" + "".join(seen)[-4000:])


def test_sigterm_during_generate_records_failed_terminated_and_exits_143(tmp_path):
    from crescent.synth.keys import stage_dirs

    args = ["debug=default", "stages=[generate]"]
    workdir = stage_dirs(compose_cfg(args, tmp_path))["questions"]  # bait units live in the questions folder
    (workdir / "raw").mkdir(parents=True)
    holder = Holder(workdir / "raw" / "round_00000.json", tmp_path)  # the first bait unit
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "crescent", *args, f"hydra.run.dir={run_dir}",
                             f"paths.synth_cache={tmp_path}/synth_cache"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list = []
    try:
        line = _lines_until(proc, "waiting for", seen)  # inside generate, on the lock this test holds
        assert f"pid {holder.proc.pid} on {socket.gethostname()} since " in line
        assert read_json(run_dir / "status.json")["status"] == "running"
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        holder.close()
    status = read_json(run_dir / "status.json")
    assert status["status"] == "failed" and status["reason"] == "terminated" and status["signal"] == "SIGTERM"
    assert status["done"] == [] and "terminated by SIGTERM" in status["error"]
    assert rest.strip().splitlines()[-1] == f"crescent: terminated by SIGTERM (status: {run_dir / 'status.json'})"
    assert not (workdir / "manifest.json").exists()


def test_sigint_raises_terminated_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(termination.Terminated) as info:
        with termination.on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes of the main thread
                pass
    assert info.value.signame == "SIGINT" and info.value.exit_code == 130
    assert termination.failure_fields(info.value) == {"error": "Terminated: terminated by SIGINT",
                                                      "reason": "terminated", "signal": "SIGINT"}
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, f"could not write {path}: No space left on device")


def test_a_full_disk_still_leaves_a_final_status(make_cfg, tmp_path, monkeypatch):
    """The stage fails on ENOSPC and the atomic status write fails too: the minimal in-place write lands."""
    from crescent import pipeline

    cfg = make_cfg("debug=default", "stages=[generate]")
    status_path = tmp_path / "run" / "status.json"
    real = pipeline.write_json

    def write_json(path, obj):
        if obj.get("status") == "failed":
            raise _enospc(str(path))
        return real(path, obj)

    def generate(cfg, tracker):
        raise _enospc(str(tmp_path / "synth_cache" / "x" / "answers.jsonl"))

    monkeypatch.setattr(pipeline, "write_json", write_json)
    monkeypatch.setitem(pipeline.STAGE_FUNCS, "generate", generate)
    with pytest.raises(OSError) as info:
        pipeline.run(cfg)
    status = json.loads(status_path.read_text())
    assert status["status"] == "failed" and status["reason"] == "disk_full" and status["errno"] == "ENOSPC"
    assert "answers.jsonl" in status["error"] and "traceback" not in status  # the minimal record
    line = termination.last_line(info.value, status_path)
    assert line.startswith("crescent: failed: disk full (ENOSPC): ") and "answers.jsonl" in line


def test_when_no_status_write_lands_stderr_names_enospc_and_the_path(make_cfg, tmp_path, monkeypatch, capsys):
    """/dev/full: every write to it fails with a real ENOSPC. status.json is a link to it, the atomic write fails."""
    from crescent import pipeline

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    cfg = make_cfg("debug=default", "stages=[generate]")
    status_path = tmp_path / "run" / "status.json"
    status_path.parent.mkdir(parents=True)
    status_path.symlink_to("/dev/full")
    monkeypatch.setattr(pipeline, "write_json", lambda path, obj: (_ for _ in ()).throw(_enospc(str(path))))
    monkeypatch.setitem(pipeline.STAGE_FUNCS, "generate", lambda cfg, tracker: 1 / 0)
    with pytest.raises(ZeroDivisionError) as info:
        pipeline.run(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"crescent: could not write {status_path} (ENOSPC: No space left on device); the run's status "
                       "is 'failed': ZeroDivisionError: division by zero")
    assert err[-1] in info.value.__notes__  # also under the traceback


def test_cli_last_line_names_the_disk_full_cause(tmp_path):
    """A run whose stage hits ENOSPC: the console's last line says disk full, the errno and the file."""
    run_dir = tmp_path / "run"
    code = ("import errno, sys\n"
            "from crescent import cli, pipeline\n"
            "def boom(cfg, tracker):\n"
            "    raise OSError(errno.ENOSPC, 'could not write /full/disk/sft.jsonl: No space left on device')\n"
            "pipeline.STAGE_FUNCS['generate'] = boom\n"
            "cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", code, "debug=default", "stages=[generate]", f"hydra.run.dir={run_dir}",
                           f"paths.synth_cache={tmp_path}/synth"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"crescent: failed: disk full (ENOSPC): [Errno 28] could not write /full/disk/sft.jsonl: No space left on "
        f"device (status: {run_dir / 'status.json'})")
    assert read_json(run_dir / "status.json")["reason"] == "disk_full"


# ---- locks ------------------------------------------------------------------------------------------------------

def _release_when_logged(caplog, holder: Holder, needle: str, events: list) -> threading.Thread:
    def watch():
        while not any(needle in r.getMessage() for r in list(caplog.records)):
            threading.Event().wait(0.02)
        events.append("released")
        holder.release()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_a_waiter_names_the_holder_with_progress_and_proceeds_after_release(tmp_path, caplog):
    target = tmp_path / "unit"
    holder = Holder(target, tmp_path)
    caplog.set_level("INFO", logger="crescent.utils.locks")
    events: list = []
    try:
        watcher = _release_when_logged(caplog, holder, "still waiting for", events)
        lock = locks.UnitLock(target, what="answer chunk 0", progress_s=0.2, poll_s=0.02)
        lock.acquire()
        events.append("acquired")
        lock.release()
        watcher.join()
    finally:
        holder.close()
    messages = [r.getMessage() for r in caplog.records]
    first = next(m for m in messages if m.startswith("waiting for"))
    assert first.startswith(f"waiting for answer chunk 0 (lock {target}.lock): held by pid {holder.proc.pid} on "
                            f"{socket.gethostname()} since 20")
    progress = next(m for m in messages if m.startswith("still waiting for"))
    assert "answer chunk 0 after " in progress and f"pid {holder.proc.pid}" in progress
    assert events == ["released", "acquired"]


def test_two_trainings_in_one_run_dir_the_second_waits_for_the_first(make_cfg, tmp_path, monkeypatch, caplog):
    from crescent.train import stage as train_stage

    cfg = make_cfg("debug=default", "stages=[train]")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True)
    first = Holder(run_dir / ".train", tmp_path)  # the first training, in another process
    events: list = []
    monkeypatch.setattr(train_stage, "_train", lambda cfg, tracker=None: events.append("trained") or {"ok": 1})
    monkeypatch.setattr(locks, "PROGRESS_S", 0.2)
    caplog.set_level("INFO", logger="crescent.utils.locks")
    try:
        watcher = _release_when_logged(caplog, first, "still waiting for the training in", events)
        assert train_stage.run(cfg) == {"ok": 1}
        watcher.join()
    finally:
        first.close()
    assert events == ["released", "trained"]  # never beside the first one
    waiting = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for"))
    assert f"the training in {run_dir}" in waiting and f"held by pid {first.proc.pid} on {socket.gethostname()}" in waiting


def test_launches_in_the_same_second_get_distinct_run_dirs(monkeypatch):
    from omegaconf import OmegaConf

    from crescent.utils import dist

    monkeypatch.delenv(dist.STAMP_ENV, raising=False)
    monkeypatch.setattr(dist, "_now_stamp", lambda t=None: "2026-12-05/23-59-59")  # one second for all
    dist.register_resolvers()
    dirs = set()
    for _ in range(2):  # two launches: each process starts with no agreed stamp
        monkeypatch.setattr(dist, "_agreed", {})
        dirs.add(OmegaConf.create({"dir": "outputs/${crescent.run_stamp:}"}).dir)
    assert len(dirs) == 2 and all(d.startswith("outputs/2026-12-05/23-59-59_") for d in dirs)
