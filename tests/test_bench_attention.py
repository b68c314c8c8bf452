"""experiments/perf/bench_attention.py on a small state: it times the repo's kernels and another build, and refuses
a build whose output differs."""
import importlib.util
import json
import sys

import pytest

from helpers import ROOT
from crescent.backends.native import FastKernels, load_kernels

PERF = ROOT / "experiments" / "perf"
SMALL = ["--rows", "8", "--hot-rows", "4", "--max-new-tokens", "40", "--rounds", "1"]


@pytest.fixture(scope="module")
def bench(cache_dir):
    if load_kernels(cache_dir) is None:
        pytest.skip("no C compiler: the native kernels cannot be built")
    sys.path.insert(0, str(PERF))  # the script imports perf_common
    spec = importlib.util.spec_from_file_location("bench_attention", PERF / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(PERF))


def test_times_both_placements_and_every_build(bench, cache_dir, tmp_path):
    build = load_kernels(cache_dir)._lib._name
    out = tmp_path / "attention.json"
    assert bench.main([*SMALL, "--kernels", build, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted((r["placement"], r["build"]) for r in results) == [
        ("cold", build), ("cold", "repo"), ("hot", build), ("hot", "repo")]
    assert all(r["ms_per_step"] > 0 and r["gb_s"] > 0 for r in results)
    cold = next(r for r in results if r["placement"] == "cold")
    assert cold["rows"] == 8 and cold["mb_per_step"] > 0


def test_a_build_with_other_output_is_refused(bench, cache_dir, tmp_path, monkeypatch):
    class Off(FastKernels):
        def attention(self, *args):
            return super().attention(*args) * 2

    monkeypatch.setattr(bench, "FastKernels", Off)
    with pytest.raises(SystemExit, match="differs from the repo's kernels"):
        bench.main([*SMALL, "--kernels", load_kernels(cache_dir)._lib._name, "--out", str(tmp_path / "a.json")])
