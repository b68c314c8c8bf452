"""Per-GPU memory of the train stage for a composed crescent config, before renting the GPUs.

  python experiments/perf/memory_plan.py experiment=crescent_llama3_8b trainer.devices=8 [overrides ...]
  python experiments/perf/memory_plan.py experiment=crescent_llama3_8b --gpu-gb 80 --json

The config is composed from conf/ with Hydra's compose API (the same overrides as the `crescent` command).
Rows, each in GB (1e9 bytes) per GPU:

- weights, gradients, optimizer: DeepSpeed's own estimators for ZeRO-2 / ZeRO-3
  (deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs,
  deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs), split into rows by the multipliers
  their source states (16-bit params 2, 16-bit grads 2, fp32 grads 4, fp32 master params 4, Adam moments 8
  bytes per parameter); plain DDP under Lightning's bf16-mixed: fp32 weights 4 + fp32 grads 4 + Adam 8 bytes
  per parameter, plus autocast's 16-bit weight copies 2 (Rajbhandari et al. 2020, "ZeRO", section 3.1).
- activations, with and without gradient checkpointing: `activation_bytes_per_token_layer` below, an
  adaptation of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  eq. (1) (34·s·b·h + 5·a·s²·b bytes per layer) to Llama blocks (RMSNorm, GQA, SwiGLU, no dropout) and
  fused attention (sdpa / FlashAttention keep no s x s scores).
- logits: the fp32 logits of the whole micro batch (10 bytes per token x vocab: 16-bit lm_head output,
  fp32 copy, fp32 log-softmax kept for backward), or one chunk of them with train.loss_chunk_tokens.
- DeepSpeed buffers: overlap_comm uses 4.5x allgather_bucket_size + reduce_bucket_size elements
  (DeepSpeed config docs, "zero_optimization.overlap_comm"), 16-bit.
- CUDA context and workspace: a fixed 2 GB (CUDA context ~0.5-1 GB, cuBLAS/NCCL workspaces).

Model shapes come from the model's config.json when the model folder is local (model@student.local_path),
from the tiny model's own fields, else from KNOWN_SHAPES (copied from each hub repo's config.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CONF = REPO / "conf"
GB = 1e9
CUDA_CONTEXT_GB = 2.0


@dataclass(frozen=True)
class Shapes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def kv_hidden(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def layer_params(self) -> int:
        h, kv, i = self.hidden, self.kv_hidden, self.intermediate
        attn = h * (h + 2 * kv) + h * h + ((h + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * i + 2 * h  # q,k,v,o + gate,up,down + two RMSNorm weights

    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def largest_module_params(self) -> int:  # what ZeRO-3 gathers at once: the embedding (or a layer's MLP)
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)


# From each repo's config.json on the Hugging Face hub (hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads, intermediate_size, vocab_size, tie_word_embeddings; Qwen2 has q/k/v biases).
KNOWN_SHAPES: dict[str, Shapes] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": Shapes(4096, 32, 32, 8, 14336, 128256, False),
    "meta-llama/Llama-2-7b-chat-hf": Shapes(4096, 32, 32, 32, 11008, 32000, False),
    "meta-llama/Llama-3.2-1B-Instruct": Shapes(2048, 16, 32, 8, 8192, 128256, True),
    "mistralai/Mistral-7B-Instruct-v0.3": Shapes(4096, 32, 32, 8, 14336, 32768, False),
    "Qwen/Qwen2.5-7B-Instruct": Shapes(3584, 28, 28, 4, 18944, 152064, False, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B-Instruct": Shapes(1536, 28, 12, 2, 8960, 151936, True, qkv_bias=True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Shapes(576, 30, 9, 3, 1536, 49152, True),
}
# base models (Mind the Gap): the same shapes as their instruct versions
KNOWN_SHAPES.update({"meta-llama/Meta-Llama-3-8B": KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B-Instruct"],
                     "meta-llama/Llama-3.2-1B": KNOWN_SHAPES["meta-llama/Llama-3.2-1B-Instruct"],
                     "Qwen/Qwen2.5-7B": KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"],
                     "Qwen/Qwen2.5-1.5B": KNOWN_SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]})
SMOLLM2_VOCAB = 49152  # the tiny model uses SmolLM2's tokenizer (crescent/models/tiny.py)


def model_shapes(model_cfg) -> Shapes:
    """Shapes of a model/ preset: local config.json, the tiny model's fields, or KNOWN_SHAPES by hf_id."""
    local = model_cfg.get("local_path")
    if local and (Path(local).expanduser() / "config.json").is_file():
        c = json.loads((Path(local).expanduser() / "config.json").read_text())
        c = c.get("text_config", c)
        return Shapes(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                      c.get("num_key_value_heads") or c["num_attention_heads"], c["intermediate_size"],
                      c["vocab_size"], bool(c.get("tie_word_embeddings", False)),
                      qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")))
    if model_cfg.get("source") == "tiny":
        return Shapes(int(model_cfg.hidden_size), int(model_cfg.num_hidden_layers), int(model_cfg.num_attention_heads),
                      int(model_cfg.num_key_value_heads), int(model_cfg.intermediate_size), SMOLLM2_VOCAB, True)
    if model_cfg.get("hf_id") in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_cfg.hf_id]
    raise SystemExit(f"model {model_cfg.get('name')!r} (hf_id={model_cfg.get('hf_id')!r}): shapes unknown; set "
                     f"model@student.local_path to a folder with its config.json, or add it to KNOWN_SHAPES in {__file__}")


def activation_bytes_per_token_layer(s: Shapes, seq_len: int, attn: str) -> int:
    """Bytes kept for backward per token per decoder layer, 16-bit activations (bf16 autocast / DeepSpeed bf16).

    Korthikanti et al. 2022 eq. (1), per token: 34·h + 5·a·s (GPT block: LayerNorm, MHA, 4h GeLU MLP, dropout).
    For a Llama block without dropout, counted tensor by tensor as they do:
      attention  6·h + 4·h_kv   (q/k/v-proj input 2h; rotated q 2h, k 2h_kv; v 2h_kv; attention output,
                                 which is also o-proj's input, 2h)
      SwiGLU MLP 2·h + 8·I      (gate/up input 2h; gate, up, silu(gate), and their product = down input: 4 x 2I)
      2 RMSNorms 8·h            (transformers' LlamaRMSNorm computes in fp32: a 4h input copy each)
    eager attention also keeps the s x s probabilities: + 4·a·s (their 5·a·s less the dropout mask)."""
    h, kv, i = s.hidden, s.kv_hidden, s.intermediate
    per = 6 * h + 4 * kv + 2 * h + 8 * i + 8 * h
    if attn == "eager":
        per += 4 * s.heads * seq_len
    return per


def model_state_rows(cfg, shapes: Shapes, world: int, nodes: int) -> tuple[dict[str, float], str, float | None]:
    """(per-GPU bytes of weights / gradients / optimizer, how they were computed, host RAM per node or None)."""
    from crescent.train.trainer import _precision_flags

    p = shapes.params()
    trainable = p
    if cfg.train.get("lora"):
        lora = cfg.train.lora
        per_layer = sum({"q_proj": shapes.hidden * 2, "o_proj": shapes.hidden * 2,
                         "k_proj": shapes.hidden + shapes.kv_hidden, "v_proj": shapes.hidden + shapes.kv_hidden,
                         "gate_proj": shapes.hidden + shapes.intermediate, "up_proj": shapes.hidden + shapes.intermediate,
                         "down_proj": shapes.hidden + shapes.intermediate}.get(m, 0) for m in lora.target_modules)
        trainable = int(lora.r) * per_layer * shapes.layers
    bf16, fp16 = _precision_flags(cfg.trainer.precision)
    half = bf16 or fp16
    tr = cfg.trainer
    if tr.strategy != "deepspeed":
        w = 2 if str(tr.precision).endswith("-true") and half else 4
        rows = {"weights": w * p + (2 * p if half and w == 4 else 0),  # + autocast's 16-bit copies
                "gradients": w * trainable, "optimizer (Adam, fp32)": 8 * trainable if w == 4 else 2 * w * trainable}
        how = (f"DDP / single device, {tr.precision}: {w} B/param weights" + (" + 2 B autocast copies" if w == 4 and half
               else "") + f", {w} B/param grads, Adam moments (no DeepSpeed estimator for DDP)")
        return rows, how, None
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    ds = tr.deepspeed
    per_node = world // nodes
    stage, off_opt, off_par = int(ds.stage), bool(ds.offload_optimizer), bool(ds.offload_parameters)
    if stage == 3:
        cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
            trainable, shapes.largest_module_params(), num_gpus_per_node=per_node, num_nodes=nodes,
            cpu_offload=off_opt, cpu_offload_params=off_par, zero_init=False)
        if off_opt:  # only the gathered module (and, unless offloaded, the 16-bit parameter shard) stays
            rows = {"weights": largest + (0 if off_par else 2 * trainable / world), "gradients": 0,
                    "optimizer (Adam, fp32)": 0}
        else:  # DeepSpeed's 18 B/param over all GPUs: 16-bit + fp32 master weights 6, grads 4, Adam 8
            rows = {"weights": largest + 6 * trainable / world, "gradients": 4 * trainable / world,
                    "optimizer (Adam, fp32)": 8 * trainable / world}
        how = (f"deepspeed estimate_zero3_model_states_mem_needs(total_params={trainable}, largest_layer_params="
               f"{shapes.largest_module_params()}, num_gpus_per_node={per_node}, num_nodes={nodes}, cpu_offload="
               f"{off_opt}, cpu_offload_params={off_par}, zero_init=False) = {gpu / GB:.2f} GB (weights row includes "
               f"the gathered largest module, 4 B/param)")
    else:
        if stage == 0:
            cpu, gpu = 0, 18 * trainable + 2 * trainable
        else:
            cpu, gpu = estimate_zero2_model_states_mem_needs(trainable, num_gpus_per_node=per_node, num_nodes=nodes,
                                                             cpu_offload=off_opt)
        sharded = world if stage else 1
        rows = {"weights": 2 * p + (0 if off_opt else 4 * trainable / sharded),  # 16-bit + fp32 master shard
                "gradients": 0 if off_opt else 6 * trainable / sharded,  # 16-bit + fp32 shard
                "optimizer (Adam, fp32)": 0 if off_opt else 8 * trainable / sharded}
        how = (f"deepspeed estimate_zero2_model_states_mem_needs(total_params={trainable}, num_gpus_per_node={per_node}, "
               f"num_nodes={nodes}, cpu_offload={off_opt}) = {gpu / GB:.2f} GB" if stage else
               "ZeRO-0: 2 B 16-bit weights + 18 B/param unsharded states")
        if 2 * p != 2 * trainable:  # LoRA: frozen weights still 16-bit on every GPU
            gpu += 2 * (p - trainable)
    if abs(sum(rows.values()) - gpu) > 1e-6 * gpu + 1:
        raise AssertionError(f"row split {sum(rows.values())} != DeepSpeed's estimate {gpu}")
    return rows, how, cpu


def plan(cfg, gpu_gb: float = 80.0) -> dict[str, Any]:
    """The per-GPU memory plan of cfg's train stage (bytes), with and without gradient checkpointing."""
    from crescent.train.trainer import batch_plan, gradient_checkpointing_on

    tr, tc = cfg.trainer, cfg.train
    shapes = model_shapes(cfg.student)
    bp = batch_plan(tc.global_batch_size, tc.micro_batch_size, tr.devices, tr.num_nodes, tr.accelerator)
    seq = int(tc.max_seq_len)
    tokens = bp.micro_batch_size * seq  # packed blocks or the longest rows (the sampler puts them first)
    attn = str(tc.get("attn_implementation", "sdpa"))
    state, how, host = model_state_rows(cfg, shapes, bp.world_size, int(tr.num_nodes))
    per_layer = activation_bytes_per_token_layer(shapes, seq, attn)
    full = shapes.layers * per_layer * tokens
    ckpt = shapes.layers * 2 * shapes.hidden * tokens + per_layer * tokens  # layer inputs + one layer recomputed
    chunk = int(tc.get("loss_chunk_tokens") or 0)
    kd = float(tc.kd.alpha) > 0
    logit_tokens = min(chunk, tokens) if chunk and not kd else tokens
    logits = 10 * logit_tokens * shapes.vocab
    extra = {}
    if kd:  # the teacher's weights (training dtype) and fp32 logits
        t_shapes = model_shapes(cfg.teacher)
        extra["teacher (KD)"] = 4 * t_shapes.params() + 4 * tokens * t_shapes.vocab
    if tr.strategy == "deepspeed":
        ds = tr.deepspeed
        factor = 4.5 if ds.overlap_comm else 1.0
        extra["DeepSpeed comm buffers"] = factor * (int(ds.allgather_bucket_size) + int(ds.reduce_bucket_size)) * 2
    extra["CUDA context + workspaces"] = CUDA_CONTEXT_GB * GB
    checkpointing = gradient_checkpointing_on(cfg)
    rows = {**state, "activations (checkpointing on)": ckpt, "activations (checkpointing off)": full,
            "logits": logits, **extra}
    common = sum(state.values()) + logits + sum(extra.values())
    total_on, total_off = common + ckpt, common + full
    total = total_on if checkpointing else total_off
    return {"experiment": cfg.get("tags"), "student": cfg.student.name, "params": shapes.params(),
            "shapes": asdict(shapes), "batch_plan": bp._asdict(), "tokens_per_micro_batch": tokens,
            "attn_implementation": attn, "gradient_checkpointing": checkpointing, "loss_chunk_tokens": chunk or None,
            "strategy": tr.strategy, "zero_stage": int(tr.deepspeed.stage) if tr.strategy == "deepspeed" else None,
            "precision": str(tr.precision), "rows": rows, "model_states_source": how,
            "host_ram_per_node": host, "total_checkpointing_on": total_on, "total_checkpointing_off": total_off,
            "total": total, "gpu_bytes": gpu_gb * GB, "margin": gpu_gb * GB - total, "fits": total < gpu_gb * GB}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, "paths.output_dir=/tmp/memory_plan"])


def table(result: dict) -> str:
    on = result["gradient_checkpointing"]
    lines = [f"student {result['student']} ({result['params'] / 1e9:.2f} B params), {result['strategy']}"
             + (f" ZeRO-{result['zero_stage']}" if result["zero_stage"] is not None else "")
             + f", {result['batch_plan']['world_size']} GPUs, {result['precision']}, micro batch "
               f"{result['batch_plan']['micro_batch_size']} x {result['tokens_per_micro_batch'] // result['batch_plan']['micro_batch_size']}"
               f" tokens, attention {result['attn_implementation']}, loss_chunk_tokens {result['loss_chunk_tokens']}",
             "", "| per GPU | GB |", "|---|---:|"]
    for name, value in result["rows"].items():
        used = "" if "checkpointing" not in name else (" (this config)" if ("on" in name.split("(")[1]) == on else "")
        lines.append(f"| {name}{used} | {value / GB:.1f} |")
    lines += [f"| **total, checkpointing on** | **{result['total_checkpointing_on'] / GB:.1f}** |",
              f"| total, checkpointing off | {result['total_checkpointing_off'] / GB:.1f} |", "",
              f"train.gradient_checkpointing -> {on}: {result['total'] / GB:.1f} GB of {result['gpu_bytes'] / GB:.0f} GB, "
              f"margin {result['margin'] / GB:.1f} GB ({100 * result['margin'] / result['gpu_bytes']:.0f} %): "
              + ("fits" if result["fits"] else "DOES NOT FIT"),
              f"model states: {result['model_states_source']}",
              "weights = the 16-bit parameters (+ the fp32 master shard under DeepSpeed; fp32 + autocast copies "
              "under DDP)"]
    if result["host_ram_per_node"]:
        lines.append(f"host RAM per node (DeepSpeed's estimate, which assumes an fp32 copy per rank; the train stage "
                     f"loads the 16-bit weights): {result['host_ram_per_node'] / GB:.0f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for the crescent command")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory per GPU (GB, 1e9 bytes)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--jsonl", action="store_true",
                        help="plan many configs in one process: one override set per stdin line (as on the command "
                             "line, added to the positional overrides), one JSON plan per output line")
    args = parser.parse_args(argv)
    if args.jsonl:
        for line in sys.stdin:
            if line.strip():
                overrides = [*args.overrides, *shlex.split(line)]
                print(json.dumps({"overrides": overrides, **plan(compose(overrides), args.gpu_gb)}, default=str))
        return 0
    result = plan(compose(args.overrides), args.gpu_gb)
    print(json.dumps(result, indent=1, default=str) if args.json else table(result))
    return 0 if result["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
