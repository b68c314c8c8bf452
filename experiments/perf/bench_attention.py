"""Decode attention of the fast backend on its own: time per decode step and the rate at which it reads the KV cache.

The state mimics the answer workload at its busiest (bench_generate.py): --rows rows, --samples rows per prompt
(the prompt's keys and values stored once), prompts of 70-150 tokens, rows at 1-400 generated tokens, the embedded
model's shapes (30 layers, 3 kv heads of 64 dims, 3 query heads each), random bf16 contents. Two placements:

  cold  each layer has its own cache, as in decoding: every step reads ~0.5 GB from memory;
  hot   every layer reuses layer 0's cache, small enough (--hot-rows 32: ~6 MB) to stay in L3: the kernel's cost
        with few memory stalls.

Next to them it measures streaming bandwidth (a 512 MiB bf16 sum). `--kernels a.so,b.so` times other builds of
fast_kernels.c (gcc -O3 -march=native -ffp-contract=off -fopenmp -fPIC -shared) against the repo's, interleaved
(this host's speed drifts by 10-20 % between runs), after checking that every build's output is bit-identical to
the repo's.

  python experiments/perf/bench_attention.py                  # cold and hot, ~15 s
  python experiments/perf/bench_attention.py --kernels /tmp/variant.so
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import sys
import time
from pathlib import Path

from perf_common import RESULTS, machine_info, stream_bandwidth  # noqa: E402  (offline HF, the repo on sys.path)

import torch  # noqa: E402

from crescent.backends.native import KEY_BLOCK, FastKernels, load_kernels  # noqa: E402

LAYERS, KV_HEADS, GROUPS, HEAD_DIM = 30, 3, 3, 64  # SmolLM2-135M
PROMPT_TOKENS = (70, 150)  # the answer workload's prompts: 67-113 tokens


def state(rows: int, samples: int, max_new_tokens: int, seed: int) -> dict:
    """Random caches and lengths (keys in the kernels' blocked layout: contents do not matter for speed)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    prompts = -(-rows // samples)
    plens = [rng.randint(*PROMPT_TOKENS) for _ in range(prompts)]
    pre = torch.tensor([r // samples for r in range(rows)])
    glen = torch.tensor([rng.randint(1, max_new_tokens) for _ in range(rows)])

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(torch.bfloat16)

    length, prompt_length = (-(-n // KEY_BLOCK) * KEY_BLOCK for n in (max_new_tokens, PROMPT_TOKENS[1]))
    return {"q": rand(rows, KV_HEADS * GROUPS, HEAD_DIM), "pre": pre, "plen": torch.tensor(plens)[pre], "glen": glen,
            "pk": rand(LAYERS, prompts, KV_HEADS, prompt_length, HEAD_DIM),
            "pv": rand(LAYERS, prompts, KV_HEADS, prompt_length, HEAD_DIM),
            "k": rand(LAYERS, rows, KV_HEADS, length, HEAD_DIM), "v": rand(LAYERS, rows, KV_HEADS, length, HEAD_DIM),
            "bytes": LAYERS * 2 * KV_HEADS * HEAD_DIM * 2 * (int(glen.sum()) + sum(plens))}


def step(kernels: FastKernels, s: dict, hot: bool) -> torch.Tensor:
    """One decode step's attention (every layer); returns the last layer's output."""
    for i in range(LAYERS):
        j = 0 if hot else i
        prefix = (s["pk"][j], s["pv"][j], s["pre"], s["plen"])
        out = kernels.attention(s["q"], prefix, (s["k"][j], s["v"][j], s["glen"]))
    return out


def timed(builds: dict[str, FastKernels], s: dict, hot: bool, rounds: int) -> dict[str, float]:
    """Best seconds per step of each build, the builds interleaved round by round."""
    best = dict.fromkeys(builds, float("inf"))
    for _ in range(rounds):
        for name, kernels in builds.items():
            start = time.perf_counter()
            step(kernels, s, hot)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=107, help="busy rows (default 107: the answer workload's mean)")
    p.add_argument("--hot-rows", type=int, default=32, help="rows of the hot placement (default 32: ~6 MB a layer)")
    p.add_argument("--samples", type=int, default=4, help="rows per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--kernels", default="", help="comma-separated .so builds to compare with the repo's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "bench_attention.json"))
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    repo = load_kernels()
    if repo is None:
        sys.exit("the fast backend's C kernels could not be built here (see the log)")
    others = [path for path in args.kernels.split(",") if path]
    builds = {"repo": repo, **{path: FastKernels(ctypes.CDLL(str(Path(path).resolve()))) for path in others}}
    rows = {}
    with torch.inference_mode():
        for placement, n in (("cold", args.rows), ("hot", args.hot_rows)):
            s = state(n, args.samples, args.max_new_tokens, args.seed)
            reference = step(repo, s, placement == "hot")
            for name in others:
                if not torch.equal(step(builds[name], s, placement == "hot"), reference):
                    sys.exit(f"{name}: output differs from the repo's kernels")
            for name, seconds in timed(builds, s, placement == "hot", args.rounds).items():
                rows[placement, name] = {"placement": placement, "build": name, "rows": n, "ms_per_step": 1e3 * seconds,
                                         "mb_per_step": s["bytes"] / 1e6, "gb_s": s["bytes"] / seconds / 1e9}
            del s
        bandwidth = stream_bandwidth() / 1e9
    print("| placement | build | rows | ms per step | MB read | GB/s |\n|---|---|---:|---:|---:|---:|")
    for r in rows.values():
        print(f"| {r['placement']} | {r['build']} | {r['rows']} | {r['ms_per_step']:.1f} | {r['mb_per_step']:.0f} | "
              f"{r['gb_s']:.1f} |")
    print(f"streaming bandwidth (bf16 sum of 512 MiB, best of 3): {bandwidth:.1f} GB/s")
    out = {"command": "python experiments/perf/bench_attention.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "args": vars(args), "results": list(rows.values()), "stream_gb_s": bandwidth,
           "env": machine_info(load_start)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
