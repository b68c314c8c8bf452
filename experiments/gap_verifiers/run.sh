#!/usr/bin/env bash
# Mind the Gap's verifier comparison at paper scale on SLURM (one GPU per job): GSM8K test (1,319 questions),
# 128 samples per question, T=0.7, top_p=0.9, 4-shot, 512 new tokens; relative gap per verifier and model.
# Phase 1 samples once per model (verify=none fills paths.cache_dir/gap/<hash>); phase 2 judges those same
# samples with each verifier, so the verifiers are compared on identical generations.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Base models, as the paper (methods.md §4: "base models, many sizes"); which sizes and families is our choice.
MODELS=${MODELS:-qwen2_5_1_5b,llama3_2_1b,qwen2_5_7b,llama3_8b}
SCALE=(stages=[gap] backend=vllm backend.tensor_parallel_size=1 gap.n_samples=128 gap.max_new_tokens=512
       gap.pass_k=[1,4,16,64,128] gap.chunk=64 gap.limit=null eval.limit=null logger=wandb
       hydra/launcher=slurm_1gpu)
crescent -m "model@teacher=$MODELS" verify=none "${SCALE[@]}" hydra.sweep.dir=multirun/gap_verifiers_samples "$@"
crescent -m "model@teacher=$MODELS" verify=mc,cot_binary,cot_score,tournament "${SCALE[@]}" \
  hydra.sweep.dir=multirun/gap_verifiers "$@"
python experiments/gap_verifiers/compare.py multirun/gap_verifiers
