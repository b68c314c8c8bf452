"""Wall time of a `voting.k` sweep with and without reuse across its jobs.

Runs the same Hydra multirun (`crescent -m voting.k=...`, stages generate + base-model eval) three times:

  no_reuse      every job has its own synth cache and no shared eval cache: each job samples and deduplicates
                the questions and scores the base model again (what a sweep cost before per-stage keys)
  reuse         one shared paths.synth_cache and paths.eval_cache: questions once, base model scored once
  reuse_nested  as reuse, plus sampling.nested_k=true: the answers of every k are read from the largest k's
                per-sample units (different random streams from the two runs above, so different rows)

    python experiments/perf/bench_sweep_reuse.py --ks 1,2,3,4 -- experiment=smoke

Everything after `--` is passed to every job. Writes results/bench_sweep_reuse.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VARIANTS = {
    "no_reuse": lambda shared: ["paths.synth_cache=${paths.output_dir}/synth_cache", "paths.eval_cache=null"],
    "reuse": lambda shared: [f"paths.synth_cache={shared}/synth", f"paths.eval_cache={shared}/eval"],
    "reuse_nested": lambda shared: [f"paths.synth_cache={shared}/synth", f"paths.eval_cache={shared}/eval",
                                    "sampling.nested_k=true"],
}


def run_variant(name: str, ks: str, extra: list[str], work: Path) -> dict:
    sweep = work / name
    cmd = [sys.executable, "-m", "crescent", "-m", f"voting.k={ks}", "stages=[generate,eval]", "eval.models=[base]",
           "logger=none", "print_config=false", f"hydra.sweep.dir={sweep}", *extra,
           *VARIANTS[name](work / f"{name}_shared")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    jobs = []
    for manifest in sorted(sweep.rglob("synth/manifest.json")):  # a path override nests the job's subdir name
        m = json.loads(manifest.read_text())
        ev = json.loads((manifest.parents[1] / "eval" / "results.json").read_text())
        jobs.append({"k": m["synth_config"]["voting"]["k"], "generate_wall_s": m["wall_s"],
                     "questions_s": m["timings_s"]["questions"], "eval_wall_s": ev["wall_s"],
                     "base_units_from_cache": len(ev.get("shared_cache_hits", []))})
    return {"variant": name, "command": " ".join(cmd), "wall_s": round(wall, 1), "jobs": jobs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="1,2,3,4", help="voting.k values of the sweep")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {list(VARIANTS)}")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_sweep_reuse.json"))
    ap.add_argument("extra", nargs="*", help="overrides for every job (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep_reuse_") as tmp:
        results = [run_variant(v, args.ks, args.extra, Path(tmp)) for v in args.variants.split(",")]
    out = {"ks": args.ks, "extra": args.extra, "load_average": os.getloadavg(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"| variant | sweep wall (s) | per job generate s (k: s) | base eval units from cache |")
    print("|---|---|---|---|")
    for r in results:
        gen = ", ".join(f"{j['k']}: {j['generate_wall_s']:.0f}" for j in sorted(r["jobs"], key=lambda j: j["k"]))
        hits = sum(j["base_units_from_cache"] for j in r["jobs"])
        print(f"| {r['variant']} | {r['wall_s']:.0f} | {gen} | {hits} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
