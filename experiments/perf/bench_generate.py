"""Generation throughput on this machine: backend=hf (transformers generate) vs backend=fast (continuous batching).

Both backends run the embedded SmolLM2-135M-Instruct (conf/model/smollm2_135m_instruct.yaml) in bf16 where the CPU
runs it natively, with the answer stage's decoding (temperature 0.7, top-p 0.9, conf/sampling/cpu.yaml). Parts:

  roofline  measured bf16 GEMM throughput on the model's decode shapes and memory bandwidth -> tokens/s bounds;
  sweep     tokens/s and requests/s vs batch size with no length spread: EOS does not stop a sequence, so every
            one is exactly --sweep-tokens long (one batch of `batch size` sequences per point); short distinct raw
            prompts (~8 tokens), so the points measure decoding rather than prefill;
  answer    the answer-stage workload: GSM8K-like word problems in crescent's answer prompt, n=4 samples each,
            max_new_tokens 400 with natural EOS, so lengths spread from ~20 to 400. hf runs at the batch size that
            was best in the sweep (each batch lasts as long as its longest answer); fast runs with its config
            (finished sequences are replaced at once). hf answers the first --hf-questions questions only (its
            batches take minutes); tokens/s compares the two.

Examples (from the repo root):
  python experiments/perf/bench_generate.py            # full run, 6.5-9 min here
  python experiments/perf/bench_generate.py --quick    # about a minute
  python experiments/perf/bench_generate.py --profile  # only fast's answer workload, time per op (~4 min)
See experiments/perf/README.md for the results.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from perf_common import REPO, RESULTS, best_of, machine_info, stream_bandwidth  # noqa: E402  (offline HF, the repo on sys.path)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from crescent.backends.base import SamplingParams  # noqa: E402
from crescent.backends.fast import FastBackend, Linear, LlamaForward  # noqa: E402
from crescent.backends.hf import HFBackend  # noqa: E402
from crescent.models.loading import bf16_is_fast, load_model_and_tokenizer  # noqa: E402

ANSWER_PROMPT = ("{question} Please think step by step and provide a detailed explanation. Please provide the answer "
                 "figure in the end of the response: \n\n#### Answer: ")  # conf/questions/bait.yaml
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy"]
ITEMS = ["apples", "clips", "stickers", "cupcakes", "marbles", "books", "pencils", "eggs", "cookies", "shells"]


# -- workload ------------------------------------------------------------------------------------------------
def question(rng: random.Random) -> str:
    """A one-step, two-step or multi-step word problem (short to long answers)."""
    a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
    who, what, other = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(NAMES)
    kind = rng.randrange(3)
    if kind == 0:
        return f"What is {a} plus {b}?"
    if kind == 1:
        return f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
    return (f"{who} had {a} {what}. She bought {b} more on Monday and {c} times as many on Tuesday as on Monday, "
            f"then gave a third of all her {what} to {other}. How many {what} does she have left?")


def answer_prompts(n: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    return [[{"role": "user", "content": ANSWER_PROMPT.format(question=question(rng))}] for _ in range(n)]


def story_prompts(n: int) -> list[str]:
    """Short distinct raw prompts (no chat template) for the fixed-length sweep."""
    return [f"Story {i}: Once upon a time, {NAMES[i % len(NAMES)]}" for i in range(n)]


def sampling(max_new_tokens: int, n: int = 1) -> SamplingParams:
    return SamplingParams(n=n, temperature=0.7, top_p=0.9, max_new_tokens=max_new_tokens)


# -- timing --------------------------------------------------------------------------------------------------
def timed(backend, prompts, params: SamplingParams, seed: int, forced: bool) -> dict:
    """One generate call; forced: EOS does not stop a sequence (every one is max_new_tokens long)."""
    start = time.perf_counter()
    with eos_disabled(backend, forced):
        outputs = backend.generate(prompts, params, seed=seed)
    seconds = time.perf_counter() - start
    sequences = sum(len(o) for o in outputs)
    if forced:
        tokens = sequences * params.max_new_tokens
    else:  # both backends count tokens up to and including eos
        tokens = backend.last_stats["new_tokens"]
    lengths = backend.last_stats.get("lengths") or []
    return {"sequences": sequences, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": tokens / seconds, "requests_per_s": sequences / seconds,
            "length_stats": length_stats(lengths) if lengths else None}


class eos_disabled:
    """Context: the backend does not stop at EOS (fast: no eos ids; hf: generation_config.eos_token_id None)."""

    def __init__(self, backend, active: bool):
        self.backend, self.active = backend, active

    def __enter__(self):
        if self.active and isinstance(self.backend, FastBackend):
            self.saved, self.backend.eos = self.backend.eos, torch.empty(0, dtype=torch.int64)
        elif self.active:
            config = self.backend.model.generation_config
            self.saved, config.eos_token_id = config.eos_token_id, None

    def __exit__(self, *exc):
        if self.active and isinstance(self.backend, FastBackend):
            self.backend.eos = self.saved
        elif self.active:
            self.backend.model.generation_config.eos_token_id = self.saved


def length_stats(lengths: list[int]) -> dict:
    s = sorted(lengths)
    return {"min": s[0], "p10": s[len(s) // 10], "median": statistics.median(s), "p90": s[9 * len(s) // 10],
            "max": s[-1], "mean": round(statistics.fmean(s), 1)}


# -- roofline ------------------------------------------------------------------------------------------------
def roofline(forward, rows: int, context: float) -> dict:
    """Tokens/s bounds from measured GEMM speed (the backend's own prepacked GEMMs) and memory bandwidth."""
    dtype = forward.dtype
    gemms: list[Linear] = [lin for layer in forward.layers for lin in (layer.qkv, layer.out, layer.gate_up, layer.down)]
    gemms.append(forward.lm_head)
    x = {lin.shape[1]: torch.randn(rows, lin.shape[1], dtype=dtype) for lin in gemms}

    def step():
        for lin in gemms:
            lin(x[lin.shape[1]])

    gemm_s = best_of(step, 3)
    flops = 2 * rows * sum(n * k for n, k in (lin.shape for lin in gemms))
    a = torch.randn(2048, 2048, dtype=dtype)
    peak = 2 * 2048**3 / best_of(lambda: a @ a)
    bandwidth = stream_bandwidth()
    kv_per_token = forward.cache_bytes(1) * context  # every layer's K and V, read once per token (no prompt sharing)
    per_token = gemm_s / rows + kv_per_token / bandwidth
    return {"rows": rows, "gemm_gflops_model_shapes": flops / gemm_s / 1e9, "gemm_gflops_2048": peak / 1e9,
            "flops_per_token": flops / rows, "bandwidth_gb_s": bandwidth / 1e9, "mean_context": context,
            "kv_bytes_per_token": kv_per_token, "tok_s_gemm_only": rows / gemm_s,
            "tok_s_peak_gemm_only": peak / (flops / rows), "tok_s_gemm_plus_kv": 1 / per_token}


# -- runs ----------------------------------------------------------------------------------------------------
def load(args):
    model_cfg = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m_instruct.yaml")
    dtype = "bfloat16" if bf16_is_fast("cpu") else "float32"
    tokenizer, model = load_model_and_tokenizer(model_cfg, dtype=dtype)
    hf = HFBackend(model, tokenizer, batch_size=32)
    fast = FastBackend(model, tokenizer, batch_size=args.fast_batch)
    return hf, fast, dtype


def sweep(args, hf: HFBackend, fast: FastBackend) -> list[dict]:
    rows = []
    prompts = story_prompts(max(args.hf_batches + args.fast_batches))
    params = sampling(args.sweep_tokens)
    runs = [("hf", b, hf, "batch_size") for b in args.hf_batches]
    runs += [("fast", b, fast, "batch_size") for b in args.fast_batches]
    runs += [("fast (torch kernels)", args.fast_batch, FastBackend(fast.model, fast.tokenizer, kernels="torch"),
              "batch_size")] if args.torch_kernels else []
    for name, batch, backend, attr in runs:
        setattr(backend, attr, batch)
        result = timed(backend, prompts[:batch], params, args.seed, forced=True)
        rows.append({"backend": name, "batch_size": batch, **result})
        print(f"sweep {name:>20} batch {batch:>4}: {result['tokens_per_s']:7.1f} tok/s "
              f"{result['requests_per_s']:6.2f} req/s ({result['seconds']:.1f} s)", flush=True)
    fast.batch_size = args.fast_batch
    return rows


def answer(args, hf: HFBackend, fast: FastBackend, hf_batch: int) -> list[dict]:
    prompts = answer_prompts(args.questions, args.seed)
    params = sampling(args.max_new_tokens, n=args.samples)
    hf.batch_size = hf_batch
    out = []
    for name, backend, subset in [("fast", fast, prompts), ("hf", hf, prompts[: args.hf_questions])]:
        result = timed(backend, subset, params, args.seed, forced=False)
        batch = backend.batch_size
        out.append({"backend": name, "batch_size": batch, "questions": len(subset), **result})
        print(f"answer {name:>4} (batch {batch}): {result['tokens_per_s']:7.1f} tok/s {result['requests_per_s']:6.2f} "
              f"req/s, {result['tokens']} tokens in {result['seconds']:.1f} s, lengths {result['length_stats']}",
              flush=True)
    return out


@contextlib.contextmanager
def op_timers(fast: FastBackend, seconds: Counter):
    """Add each C kernel's, GEMM's, prefill's and decode step's wall time to `seconds` while inside."""
    patched = [(obj, name, getattr(obj, name)) for obj, name in
               [(fast.forward.kernels, n) for n in ("attention", "rope_store", "add_norm", "silu_mul", "sample")
                if fast.forward.kernels is not None]
               + [(Linear, "_mm"), (LlamaForward, "prefill"), (LlamaForward, "decode")]]

    def timed_call(fn, label):
        def call(*args, **kwargs):
            key = "lm_head" if label == "gemm" and args[0] is fast.forward.lm_head else label
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[key] += time.perf_counter() - start
                seconds[f"calls:{key}"] += 1
        return call

    for obj, name, fn in patched:
        setattr(obj, name, timed_call(fn, "gemm" if name == "_mm" else name))
    try:
        yield
    finally:
        for obj, name, fn in patched:
            setattr(obj, name, fn)


def profile(args, fast: FastBackend) -> dict:
    """The answer workload on fast with op timers: seconds per op, and per decode step."""
    seconds: Counter = Counter()
    prompts = answer_prompts(args.questions, args.seed)
    with op_timers(fast, seconds):
        result = timed(fast, prompts, sampling(args.max_new_tokens, n=args.samples), args.seed, forced=False)
    steps = seconds["calls:decode"]
    ops = {k: v for k, v in seconds.items() if not k.startswith("calls:")}
    print(f"answer fast: {result['tokens_per_s']:.1f} tok/s, {result['tokens']} tokens in {result['seconds']:.1f} s, "
          f"{steps} decode steps, {result['tokens'] / max(steps, 1):.1f} rows busy per step on average")
    print("| op | s | ms per decode step |\n|---|---:|---:|")
    for op, s in sorted(ops.items(), key=lambda kv: -kv[1]):
        print(f"| {op} | {s:.1f} | {1e3 * s / max(steps, 1):.1f} |")
    print("(decode and prefill include the ops they call; gemm includes prefill's GEMMs)")
    return {"answer": result, "decode_steps": steps, "seconds_per_op": ops}


# -- report --------------------------------------------------------------------------------------------------
def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in [("hf", "o-"), ("fast", "s-"), ("fast (torch kernels)", "^")]:
        pts = [r for r in out["sweep"] if r["backend"] == name]
        if pts:
            ax1.plot([r["batch_size"] for r in pts], [r["tokens_per_s"] for r in pts], style, label=name)
    roof = out["roofline"]
    ax1.axhline(roof["tok_s_gemm_plus_kv"], ls="--", c="gray", label="roofline: GEMM + KV reads")
    ax1.set(xscale="log", xlabel="batch size (sequences per step)", ylabel="tokens/s",
            title=f"fixed length ({out['args']['sweep_tokens']} tokens), no spread")
    ax1.legend(fontsize=8)
    names = [f"{r['backend']}\n(batch {r['batch_size']})" for r in out["answer"]]
    bars = ax2.bar(names, [r["tokens_per_s"] for r in out["answer"]], color=["tab:orange", "tab:blue"])
    ax2.bar_label(bars, fmt="%.0f")
    ax2.axhline(roof["tok_s_gemm_plus_kv"], ls="--", c="gray")
    ax2.set(ylabel="tokens/s", title=f"answer workload (n={out['args']['samples']}, natural EOS, "
                                     f"<= {out['args']['max_new_tokens']} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(out: dict) -> str:
    lines = ["| part | backend | batch | sequences | tokens | s | tok/s | req/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for part in ("sweep", "answer"):
        for r in out[part]:
            lines.append(f"| {part} | {r['backend']} | {r['batch_size']} | {r['sequences']} | {r['tokens']} | "
                         f"{r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['requests_per_s']:.2f} |")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: small sweep, 8 questions, <= 128 tokens")
    p.add_argument("--profile", action="store_true",
                   help="only fast's answer workload, with the time of every kernel and GEMM (writes *_profile.json)")
    p.add_argument("--hf-batches", default="16,32,64,128", help="hf batch sizes for the sweep")
    p.add_argument("--fast-batches", default="32,64,128,256", help="fast batch sizes (slots) for the sweep")
    p.add_argument("--fast-batch", type=int, default=128, help="fast slots for the answer workload (default 128)")
    p.add_argument("--sweep-tokens", type=int, default=64, help="tokens per sequence in the sweep (default 64)")
    p.add_argument("--questions", type=int, default=256, help="answer workload questions for fast (default 256)")
    p.add_argument("--hf-questions", type=int, default=16, help="of which hf answers the first (default 16)")
    p.add_argument("--samples", type=int, default=4, help="answers per question (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=400, help="answer length cap (default 400)")
    p.add_argument("--torch-kernels", action=argparse.BooleanOptionalAction, default=True,
                   help="also sweep fast with kernels=torch at --fast-batch (default on)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "bench_generate.json"), help="results JSON (PNG next to it)")
    args = p.parse_args(argv)
    if args.quick:
        args.hf_batches, args.fast_batches, args.sweep_tokens = "32", "64,128", 32
        args.questions, args.hf_questions, args.max_new_tokens, args.torch_kernels = 8, 4, 128, False
    args.hf_batches = [int(b) for b in str(args.hf_batches).split(",") if b]
    args.fast_batches = [int(b) for b in str(args.fast_batches).split(",") if b]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start, load_start = time.time(), os.getloadavg()
    hf, fast, dtype = load(args)
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        fast.generate(answer_prompts(2, 99), sampling(4), seed=0)  # warm-up (kernel build, caches)
        if args.profile:
            path = Path(args.out).with_name(Path(args.out).stem + "_profile.json")
            out = {"args": vars(args), **profile(args, fast), "env": machine_info(load_start)}
            path.write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {path}")
            return 0
        sweep_rows = sweep(args, hf, fast)
        hf_best = max((r for r in sweep_rows if r["backend"] == "hf"), key=lambda r: r["tokens_per_s"])
        answer_rows = answer(args, hf, fast, hf_best["batch_size"])
        fast_answer = answer_rows[0]
        context = len(fast._encode(answer_prompts(1, args.seed)[0])) + fast_answer["length_stats"]["mean"] / 2
        roof = roofline(fast.forward, args.fast_batch, context)
    hf_answer = answer_rows[1]
    out = {
        "command": "python experiments/perf/bench_generate.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "dtype": dtype, "kernels": "native" if fast.native else "torch",
        "roofline": roof, "sweep": sweep_rows, "answer": answer_rows,
        "speedup_answer_vs_hf_best": fast_answer["tokens_per_s"] / hf_answer["tokens_per_s"],
        "speedup_fast_vs_hf_best_sweep": max(r["tokens_per_s"] for r in sweep_rows if r["backend"] == "fast")
        / hf_best["tokens_per_s"],
        "wall_s": round(time.time() - t_start, 1),
        "env": machine_info(load_start),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, path.with_suffix(".png"))
    print(markdown(out))
    print(f"\nroofline ({dtype}, {args.fast_batch} rows): GEMMs {roof['gemm_gflops_model_shapes']:.0f} GFLOP/s "
          f"(2048^3: {roof['gemm_gflops_2048']:.0f}), memory {roof['bandwidth_gb_s']:.1f} GB/s -> "
          f"{roof['tok_s_gemm_only']:.0f} tok/s GEMMs only, {roof['tok_s_gemm_plus_kv']:.0f} tok/s with KV reads "
          f"(mean context {context:.0f})")
    print(f"answer workload: fast {fast_answer['tokens_per_s']:.0f} tok/s = {out['speedup_answer_vs_hf_best']:.1f}x hf "
          f"at batch {hf_best['batch_size']} (goal: >= 1000 tok/s and >= 4x)")
    print(f"load average {load_start} -> {out['env']['loadavg_at_end']}; wall {out['wall_s']} s; wrote {path} "
          f"and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
