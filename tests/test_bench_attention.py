"""experiments/perf/bench_attention.py on a small state, run as a command: it times the repo's kernels and another
build, and refuses a build whose output differs."""
import json
import subprocess
import sys

import pytest

from crescent.backends import native
from helpers import ROOT

SCRIPT = ROOT / "experiments" / "perf" / "bench_attention.py"
SMALL = ["--rows", "8", "--hot-rows", "4", "--max-new-tokens", "40", "--rounds", "1"]


@pytest.fixture(scope="module")
def build(cache_dir) -> str:
    """The path of the repo's kernels as loaded here (the benchmark compares it with itself: same output)."""
    kernels = native.load_kernels(cache_dir)
    if kernels is None:
        pytest.skip("no C compiler: the native kernels cannot be built")
    return kernels._lib._name


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *SMALL, *args], capture_output=True, text=True, timeout=600)


def test_times_both_placements_and_every_build(build, tmp_path):
    out = tmp_path / "attention.json"
    proc = bench("--kernels", build, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert sorted((r["placement"], r["build"]) for r in results) == [
        ("cold", build), ("cold", "repo"), ("hot", build), ("hot", "repo")]
    assert all(r["ms_per_step"] > 0 and r["gb_s"] > 0 for r in results)
    cold = next(r for r in results if r["placement"] == "cold")
    assert cold["rows"] == 8 and cold["mb_per_step"] > 0


def test_a_build_with_other_output_is_refused(build, tmp_path):
    """A build of a changed source (attention output doubled) is compared, found different and refused."""
    source = native.SOURCE.read_text()
    changed = source.replace("float inv = 1.0f / (pl[x]", "float inv = 2.0f / (pl[x]")
    assert changed != source, "the softmax merge line of fast_kernels.c moved: update this test's patch"
    (tmp_path / "off.c").write_text(changed)
    subprocess.run([native._compiler(), *native.FLAGS, str(tmp_path / "off.c"), "-o", str(tmp_path / "off.so"), "-lm"],
                   check=True, capture_output=True)
    proc = bench("--kernels", str(tmp_path / "off.so"), "--out", str(tmp_path / "a.json"))
    assert proc.returncode == 1 and "differs from the repo's kernels" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "a.json").exists()
