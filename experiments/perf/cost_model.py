"""GPU-hour cost model of one crescent job, computed from the composed config.

    python experiments/perf/cost_model.py experiment=crescent_llama3_8b backend.data_parallel_size=8 [overrides]

Prints the generated tokens per stage, the trained tokens, the engine calls per stage (the design's bound,
crescent.synth.questions.engine_call_bound) and H100-hours from stated throughput assumptions, next to the physical
floor (every stage at 100 % of H100 dense bf16 peak). Every assumption is a named constant below with its source;
token counts come from the config (max_calls x n bait samples, voting.k answers per question, train.epochs, the model
size). Sources: the project's scale note (published figures), repeated here so the script needs nothing outside the
repo:
  * generation: vLLM, Llama-3/3.1-8B bf16, 1 x H100 SXM offline: 8-12.6k output tok/s (Lambda vllm-benchmark
    v0.6.0 + multi-step 8,088; AIMultiple 12,553 with FlashInfer); compute ceiling 2N FLOP/token at 989 TFLOP/s.
  * SFT: 6N FLOP/token; H100 MFU 30-40 % for tuned FSDP2 / OLMo-core 7-8B SFT (torchtitan llama3 H100 benchmark,
    open-instruct OLMo-3 SFT guide); 20 % for DeepSpeed + Lightning + HF, packed (estimate).
  * eval: two models (base, trained) on the math + general suites with lm-eval: 0.4-0.75 H100-h per model with vLLM
    generation (lm-eval GSM8K on vLLM at ~8k tok/s, vLLM PR #28594; prefill 15-20M tokens at 30-50 % of peak).
  * workload per sample (Crescent paper setting, official code): bait question ~120 tokens, answer ~300 tokens,
    30 % of raw questions rewritten once, SFT row ~400 tokens (question + one answer + template).
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_plan import compose, model_shapes  # noqa: E402  (one composer and one table of model shapes)

H100_BF16_FLOPS = 989e12  # dense bf16 peak, H100 SXM datasheet
GEN_TOK_S = {"low": 8_000, "central": 10_000, "high": 12_600}  # vLLM 8B output tok/s per H100 (published, above)
SFT_MFU = {"low": 0.20, "central": 0.30, "high": 0.40}
EVAL_H_PER_MODEL = {"low": 0.75, "central": 0.55, "high": 0.40}  # H100-h per evaluated model (vLLM eval)
EVAL_FLOOR_H_PER_MODEL = 0.10  # (6M + 17M prefill + 2.4M decode) x 2N / peak, per model
ENGINE_START_H = 2.5 / 60  # one vLLM engine start-up per replica (estimate: 2-3 min)
QUESTION_TOKENS, ANSWER_TOKENS, SFT_ROW_TOKENS = 120, 300, 400
REWRITE_FRACTION = 0.30  # raw questions that need one rewrite (unknown in the paper: 10-60 %)
KEEP_FRACTION = 0.91  # SFT rows / answered questions (vote agreement filter; the paper's 50k of 55k)
def params(model_cfg) -> float:
    """Parameter count from memory_plan's model shapes (local config.json, tiny fields, or its hub-config table)."""
    return float(model_shapes(model_cfg).params())


def plan(cfg, scenario: str = "central") -> dict:
    """Token counts, engine calls and H100-hours of the composed config (one scenario of the assumptions)."""
    from crescent.synth.questions import engine_call_bound

    stages = list(cfg.stages)
    n_teacher, n_student = params(cfg.teacher), params(cfg.student)
    replicas = int(cfg.backend.get("data_parallel_size", 1) or 1) * int(cfg.backend.get("tensor_parallel_size", 1) or 1)
    k = int(cfg.voting.k)
    dataset = cfg.questions.get("source", "bait") == "dataset"
    raw = 0 if dataset else int(cfg.questions.max_calls) * int(cfg.sampling.question.n)
    if cfg.sampling.num_questions:
        raw = min(raw, int(cfg.sampling.num_questions)) if raw else int(cfg.sampling.num_questions)
    questions = raw or int(cfg.sampling.num_questions or 0)
    rewrites = int(REWRITE_FRACTION * raw) if cfg.dedup.name != "none" else 0
    tokens = {"bait": (0 if dataset else raw) * QUESTION_TOKENS, "rewrite": rewrites * QUESTION_TOKENS,
              "answers": questions * k * ANSWER_TOKENS,
              "reflect": questions * ANSWER_TOKENS if cfg.voting.get("reflect", False) else 0}
    generated = sum(tokens.values()) if "generate" in stages else 0
    rows = int(questions * KEEP_FRACTION)
    trained = rows * SFT_ROW_TOKENS * int(cfg.train.epochs) if "train" in stages else 0
    models = 2 if "eval" in stages else 0
    calls = engine_call_bound(cfg)

    gen_h = generated / GEN_TOK_S[scenario] / 3600 * (n_teacher / 8.03e9) + (ENGINE_START_H * replicas if generated else 0)
    sft_h = 6 * n_student * trained / (H100_BF16_FLOPS * SFT_MFU[scenario]) / 3600
    eval_h = models * EVAL_H_PER_MODEL[scenario] * (n_student / 8.03e9)
    floor = {"generate": 2 * n_teacher * generated / H100_BF16_FLOPS / 3600,
             "train": 6 * n_student * trained / H100_BF16_FLOPS / 3600,
             "eval": models * EVAL_FLOOR_H_PER_MODEL * (n_student / 8.03e9)}
    gpus = max(int(cfg.trainer.devices) * int(cfg.trainer.num_nodes), replicas, 1)
    busy = {"generate": gen_h, "train": sft_h, "eval": eval_h}
    return {"tokens": tokens, "generated": generated, "trained": trained, "sft_rows": rows, "engine_calls": calls,
            "gpu_h": busy, "total_gpu_h": sum(busy.values()), "floor_h": floor, "total_floor_h": sum(floor.values()),
            "gpus": gpus, "wall_h": sum(busy.values()) / gpus}


def report(cfg, overrides: list[str]) -> str:
    c, lo, hi = plan(cfg), plan(cfg, "low"), plan(cfg, "high")
    t = c["tokens"]
    lines = [f"cost model: {' '.join(overrides) or '(defaults)'}",
             f"  generated tokens: bait {t['bait']:,} + rewrites {t['rewrite']:,} + answers {t['answers']:,} "
             f"+ reflect {t['reflect']:,} = {c['generated']:,}",
             f"  trained tokens: {c['sft_rows']:,} rows x {SFT_ROW_TOKENS} tokens x {cfg.train.epochs} epochs "
             f"= {c['trained']:,}",
             "  engine calls (bound): " + ", ".join(f"{k} {v}" for k, v in c["engine_calls"].items()),
             "",
             "  | stage | H100-h central (range) | floor H100-h |",
             "  |---|---:|---:|"]
    for stage in ("generate", "train", "eval"):
        lines.append(f"  | {stage} | {c['gpu_h'][stage]:.2f} ({hi['gpu_h'][stage]:.2f}-{lo['gpu_h'][stage]:.2f}) "
                     f"| {c['floor_h'][stage]:.2f} |")
    lines += [f"  | **total** | **{c['total_gpu_h']:.2f}** ({hi['total_gpu_h']:.2f}-{lo['total_gpu_h']:.2f}) "
              f"| **{c['total_floor_h']:.2f}** |",
              "",
              f"  {c['total_gpu_h'] / c['total_floor_h']:.1f}x the physical floor (range "
              f"{hi['total_gpu_h'] / c['total_floor_h']:.1f}-{lo['total_gpu_h'] / c['total_floor_h']:.1f}x); "
              f"wall on {c['gpus']} GPUs ~ {c['wall_h'] * 60:.0f} min busy "
              f"(a reserved node bills {c['gpus']} x wall)",
              f"  assumptions: vLLM {GEN_TOK_S['low']:,}-{GEN_TOK_S['high']:,} out tok/s per H100 (Lambda "
              f"vllm-benchmark, AIMultiple), SFT MFU {SFT_MFU['low']:.0%}-{SFT_MFU['high']:.0%} (torchtitan, "
              f"open-instruct), eval {EVAL_H_PER_MODEL['high']}-{EVAL_H_PER_MODEL['low']} H100-h per 8B model "
              f"(lm-eval on vLLM), peak {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (NVIDIA H100 SXM datasheet)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=crescent_llama3_8b")
    parser.add_argument("--json", action="store_true", help="print the estimate (every scenario) as JSON")
    parser.add_argument("--jsonl", action="store_true",
                        help="estimate many configs in one process: one override set per stdin line (added to the "
                             "positional overrides), one JSON estimate per output line")
    args = parser.parse_args(argv)
    if args.jsonl:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(estimate([*args.overrides, *shlex.split(line)])))
        return 0
    print(json.dumps(estimate(args.overrides), indent=1) if args.json else report(compose(args.overrides), args.overrides))
    return 0


def estimate(overrides: list[str]) -> dict:
    """Every scenario's plan, the assumptions and the printed report of one config, as plain data."""
    cfg = compose(overrides)
    return {"overrides": overrides, **{scenario: plan(cfg, scenario) for scenario in ("central", "low", "high")},
            "assumptions": {"keep_fraction": KEEP_FRACTION, "question_tokens": QUESTION_TOKENS,
                            "answer_tokens": ANSWER_TOKENS, "sft_row_tokens": SFT_ROW_TOKENS,
                            "rewrite_fraction": REWRITE_FRACTION},
            "report": report(cfg, overrides)}


if __name__ == "__main__":
    raise SystemExit(main())
