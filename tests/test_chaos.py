"""Crash safety end to end: experiments/perf/chaos.py (run as a command) with one SIGKILL at startup and one in each
stage (a small run; the script's default makes 12 kills); the train kill lands after a checkpoint, and the rerun
must resume from it and end with the reference's steps and loss."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def test_sigkill_in_every_stage_then_rerun_matches_an_uninterrupted_run(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "perf" / "chaos.py"), "--kills", "4", "--seed",
                           "0", "--small", "--workdir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=3600)
    print(proc.stdout[-5000:])
    report = json.loads(out.read_text())
    assert report["kill_plan"] == ["startup", "generate", "train", "eval"]
    killed = [a for a in report["attempts"] if a["outcome"].startswith("killed")]
    assert all(a["outcome"] == "killed; cache ok" for a in killed)
    assert len({a["stage"] for a in killed}) >= 2  # spread over the run (which stages exactly depends on timing)
    failed = [(name, detail) for name, ok, detail in report["checks"] if not ok]
    assert failed == [] and len(report["checks"]) >= 12 and proc.returncode == 0
    # the train kill left a mid-training checkpoint and the next run continued from exactly it
    assert any(step and start == f"step {step}" for _, step, start in report["resumes"]), report["resumes"]
    assert "training resumed from its last checkpoint" in [name for name, _, _ in report["checks"]]
