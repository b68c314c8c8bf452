"""experiments/perf/cost_model.py on the paper presets: token counts follow the composed config, the engine calls are
the design's bound, and the estimate sits above the physical floor by the factors it states. The script runs as a
command (one process estimates every config these tests need: --jsonl), never imported as a module."""
import json
import subprocess
import sys

import pytest

from helpers import CONF, ROOT, compose_cfg

SCRIPT = ROOT / "experiments" / "perf" / "cost_model.py"
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
               if p.stem not in ("cpu_demo", "smoke") and not p.stem.endswith("_smoke"))
LLAMA3_8GPU = "experiment=crescent_llama3_8b backend.data_parallel_size=8"
K1, K8 = "experiment=crescent_llama3_8b voting.k=1", "experiment=crescent_llama3_8b voting.k=8"


@pytest.fixture(scope="module")
def estimates() -> dict[str, dict]:
    sets = [*(f"experiment={p}" for p in PAPER), LLAMA3_8GPU, K1, K8]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--jsonl"], input="\n".join(sets), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {" ".join(e["overrides"]): e for e in found}


@pytest.mark.parametrize("preset", PAPER)
def test_every_paper_preset_has_a_cost(estimates, preset):
    e = estimates[f"experiment={preset}"]
    c = e["central"]
    assert c["engine_calls"]["total"] >= 1 and c["total_gpu_h"] > c["total_floor_h"] > 0
    for stage, hours in c["gpu_h"].items():
        assert hours >= c["floor_h"][stage]
    assert "physical floor" in e["report"] and "H100 SXM datasheet" in e["report"]


def test_crescent_llama3_8b_on_8_gpus(estimates):
    e = estimates[LLAMA3_8GPU]
    cfg = compose_cfg(LLAMA3_8GPU.split())
    c, best = e["central"], e["high"]
    raw = 550 * 100
    assert c["tokens"] == {"bait": raw * 120, "rewrite": int(0.3 * raw) * 120, "answers": raw * cfg.voting.k * 300,
                           "reflect": 0}
    assert c["trained"] == int(raw * e["assumptions"]["keep_fraction"]) * 400 * 3
    assert c["engine_calls"]["total"] == 1 + cfg.dedup.max_attempts + 1  # one bait pass + rewrites + answers
    assert round(c["total_floor_h"], 1) == 1.3  # the published floor, from the same token counts
    # the published throughputs put a run at 3.5-6.2x the floor: generation runs at 13-20 % of the compute ceiling
    # and SFT at 20-40 % MFU (see the module docstring), so no assumption set reaches 2x
    assert 3 < best["total_gpu_h"] / best["total_floor_h"] < c["total_gpu_h"] / c["total_floor_h"] < 5
    assert c["gpus"] == 8 and c["wall_h"] == pytest.approx(c["total_gpu_h"] / 8)


def test_a_k_sweep_scales_the_answer_tokens_only(estimates):
    a, b = estimates[K1]["central"], estimates[K8]["central"]
    assert b["tokens"]["answers"] == 8 * a["tokens"]["answers"] and b["tokens"]["bait"] == a["tokens"]["bait"]


def test_the_command_prints_the_report():
    proc = subprocess.run([sys.executable, str(SCRIPT), *LLAMA3_8GPU.split()], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"cost model: {LLAMA3_8GPU}") and "physical floor" in proc.stdout
