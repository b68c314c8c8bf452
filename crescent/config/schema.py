"""The schema of every config group: one pydantic model per group (or group option), one line per key.

A key: `name: <type> [= None]` (`= None`: optional, checked when present). Types come from fields.py
(Int(1), Num(ge=0.0), OneOf(choices.X), Null(...), Template(...), ...); their Allowed text is the wording of
the error. Options of a group are a discriminated union on `name` (backend, dedup, logger) or `source`
(model). Cross-field rules (files exist, batch sizes divide, ...) are in checks.py."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from crescent.config import choices as C
from crescent.config.fields import (BOOL, DEVICE, FRACTION, NONEMPTY, POSITIVE, SEED, STR, TOP_P, Allowed,
                                    Check, Int, ListOf, Null, Num, OneOf, Section, StrList, Template, WholeSection,
                                    is_int, is_num, is_str)


def _metric_ok(x: Any) -> bool:
    stage, _, metric = x.partition("/") if isinstance(x, str) else ("", "", "")
    return x is None or (stage in C.STAGES and metric != "")


def exemplars_ok(x: Any) -> bool:
    return isinstance(x, list) and all(
        isinstance(e, dict) and isinstance(e.get("question"), str) and isinstance(e.get("cot"), str)
        and (isinstance(e.get("answer"), str) or is_num(e.get("answer"))) for e in x)


def _shard_ok(x: Any) -> bool:
    return isinstance(x, str) and bool(re.fullmatch(r"\d+/\d+", x)) and int(x.split("/")[0]) < int(x.split("/")[1])


PATH = Check("a non-empty string (a folder path)", is_str)


# ----- groups every run uses -------------------------------------------------------------------------------------

class Paths(Section):
    output_dir: PATH
    cache_dir: PATH
    synth_cache: PATH
    eval_cache: Null(PATH) = None  # the shared base-model eval cache (null: off)


class Clean(Section):
    min_words: Int(0)
    max_chars: Int(1)
    require_question: BOOL


class Dataset(Section):
    loader: OneOf(C.DatasetLoader)
    path: Null(NONEMPTY)
    question_field: NONEMPTY
    offset: Int(0) = None


class Questions(Section):
    name: NONEMPTY
    source: OneOf(C.QuestionSource)
    prompt_version: NONEMPTY
    prompt: Null(STR)
    answer_format: OneOf(C.AnswerFormat)
    formats: ListOf(C.TrainFormat)
    answer_prompt: Template("question")
    answer_stop: StrList()
    calls_per_round: Int(1)
    rounds_per_pass: Null(Int(1)) = None
    max_calls: Int(1)
    clean: Clean
    dataset: Annotated[Optional[Dataset], Allowed("a mapping")] = None
    exemplars: Check("a list of mappings with string question, cot and answer", exemplars_ok) = None
    seed_count: Int(1) = None
    augment_prompts: Annotated[dict[str, Template("question")], Field(strict=True, min_length=1),
                               Allowed("a non-empty mapping of style -> prompt")] = None


class Decoding(Section):
    temperature: Num(ge=0.0)
    top_p: TOP_P
    max_new_tokens: Int(1)


class QuestionDecoding(Decoding):
    n: Int(1)


class RewriteDecoding(Decoding):
    n: Check("1 (one rewrite per duplicate and attempt)", lambda x: is_int(x) and x == 1) = None


class Sampling(Section):
    name: NONEMPTY
    num_questions: Null(Int(1))
    answer_chunk: Int(1)
    nested_k: BOOL = None  # per-sample answer streams: a voting.k sweep reuses the samples it shares
    question: QuestionDecoding
    rewrite: RewriteDecoding
    answer: Decoding


class NoDedup(Section):
    name: Literal["none"]


class EmbeddingDedup(Section):
    name: Literal["embedding"]
    threshold: Num(ge=0.0, le=1.0)
    max_attempts: Int(0)
    index: OneOf(C.DedupIndex)
    exact_max: Int(1)
    embedder: OneOf(C.Embedder)
    batch_size: Int(1)
    rewrite_prompt: Template("question", "neighbour")


class Decontam(Section):  # decontam=none: the step is off
    name: NONEMPTY = None
    policy: OneOf(C.DecontamPolicy) = None


class DecontamOn(Decontam):  # decontam=report|drop (crescent/synth/decontam.py)
    ngram: Int(1)
    embedding: BOOL
    threshold: Num(ge=0.0, le=1.0)
    match_numbers: BOOL
    index: OneOf(C.DedupIndex)
    top: Int(0)
    text_fields: StrList(nonempty=True)
    benchmarks: Null(StrList(nonempty=True))
    batch_size: Int(1)


class Voting(Section):
    name: OneOf(C.Voting)
    k: Int(1)
    tie: OneOf(C.TiePolicy)
    min_agreement: Num(ge=0.0, le=1.0)
    keep: OneOf(C.Keep)
    reflect: BOOL
    reflect_prompt: Template("question", "response") = None


class NoLogger(Section):
    name: Literal["none"]


class CsvLogger(Section):
    name: Literal["csv"]


class WandbLogger(Section):
    name: Literal["wandb"]
    project: NONEMPTY
    entity: Null(NONEMPTY)
    group: Null(NONEMPTY)
    job_type: Null(NONEMPTY)
    mode: OneOf(C.WandbMode)


class _Parallel(Section):  # every backend: engine processes on this node, this invocation's array-task shard "i/N"
    data_parallel_size: Int(1) = None
    shard: Null(Check("'i/N' with 0 <= i < N", _shard_ok)) = None


class HFBackend(_Parallel):
    name: Literal["hf"]
    batch_size: Int(1)
    dtype: OneOf(C.Dtype)
    device: Null(DEVICE)
    sort_by_length: BOOL


class VllmBackend(_Parallel):
    name: Literal["vllm"]
    tensor_parallel_size: Int(1)
    gpu_memory_utilization: TOP_P
    max_model_len: Null(Int(1))
    dtype: OneOf(C.VllmDtype)
    enforce_eager: BOOL


class FastBackend(_Parallel):
    name: Literal["fast"]
    batch_size: Int(1)
    dtype: OneOf(C.FastDtype)
    kernels: OneOf(C.Kernels)
    cache_gb: POSITIVE


class _Model(Section):  # model@teacher / model@student
    name: NONEMPTY
    hf_id: Null(NONEMPTY)  # hub: an 'org/name' id unless local_path exists (checks._model_errors)
    local_path: Null(NONEMPTY)
    revision: Null(NONEMPTY)
    chat_template: Null(NONEMPTY)
    trust_remote_code: BOOL
    dtype: OneOf(C.Dtype)


class HubModel(_Model):
    source: Literal["hub"]


class EmbeddedModel(_Model):
    source: Literal["embedded"]
    gguf_package: NONEMPTY
    gguf_file: NONEMPTY


class TinyModel(EmbeddedModel):
    source: Literal["tiny"]
    hidden_size: Int(1)
    num_hidden_layers: Int(1)
    num_attention_heads: Int(1)
    num_key_value_heads: Int(1)
    intermediate_size: Int(1)
    max_position_embeddings: Int(1)
    init_seed: Int(0)
    initializer_range: POSITIVE = None


TINY_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "max_position_embeddings")


def _union(*models: Any, tag: str = "name") -> Any:
    return Annotated[Union[models], Field(discriminator=tag)]


Model = _union(EmbeddedModel, TinyModel, HubModel, tag="source")  # order: choices.MODEL_SOURCES


class Run(Section):
    """The root: keys and groups every run uses; the stage groups are checked when their stage runs."""
    stages: ListOf(C.Stage)
    rounds: Int(1)
    seed: SEED
    tags: StrList()
    cache_synth: BOOL
    optimized_metric: Check(f"null or '<stage>/<metric>' with a stage from {list(C.STAGES)}", _metric_ok)
    print_config: BOOL
    paths: Paths
    teacher: Model
    student: Model
    backend: _union(HFBackend, VllmBackend, FastBackend)  # order: choices.BACKENDS
    questions: Questions
    sampling: Sampling
    dedup: _union(EmbeddingDedup, NoDedup)
    voting: Voting
    decontam: Any = None  # Decontam / DecontamOn (checks._decontam_errors)
    logger: _union(NoLogger, CsvLogger, WandbLogger)
    train: Any = None  # TrainStage (stages=[train])
    trainer: Any = None
    eval: Any = None  # EvalStage (stages=[eval])
    verify: Any = None  # checks.verify_errors
    gap: Any = None  # checks.gap_errors (stages=[gap])


# ----- stages=[train] ----------------------------------------------------------------------------------------------

class OptimizerCfg(Section):
    name: OneOf(C.Optimizer)
    lr: POSITIVE
    weight_decay: Num(ge=0.0)
    betas: Check("a list of two numbers in [0, 1)",
                 lambda x: isinstance(x, list) and len(x) == 2 and all(is_num(b) and 0 <= b < 1 for b in x))
    eps: POSITIVE


class SchedulerCfg(Section):
    name: OneOf(C.Scheduler)
    warmup_ratio: Num(ge=0.0, le=1.0)
    min_lr_ratio: Num(ge=0.0, le=1.0)


class KD(Section):
    alpha: Num(ge=0.0, le=1.0)
    temperature: POSITIVE


class Lora(WholeSection):
    r: Int(1)
    alpha: POSITIVE
    dropout: FRACTION
    target_modules: StrList(nonempty=True)


class Train(Section):
    name: OneOf(C.TrainMethod)
    data: Check("null or a path to a chat jsonl", lambda x: x is None or is_str(x))
    val_fraction: FRACTION
    max_seq_len: Int(8)
    packing: BOOL
    group_by_length: BOOL
    epochs: Int(1)
    max_steps: Check("-1 (use epochs) or an integer >= 1", lambda x: is_int(x) and (x == -1 or x >= 1))
    global_batch_size: Int(1)
    micro_batch_size: Int(1)
    optimizer: OptimizerCfg
    scheduler: SchedulerCfg
    gradient_clip: Null(Num(ge=0.0))
    seed: SEED
    resume: Check("false, true or 'auto'", lambda x: isinstance(x, bool) or x == "auto")
    checkpoint_every_n_steps: Check("null or an integer >= 0 (0: at epoch ends only)",
                                    lambda x: x is None or (is_int(x) and x >= 0)) = None
    kd: KD
    lora: Annotated[Optional[Lora], Allowed("null or a LoRA mapping (see train=lora)")]
    gradient_checkpointing: Check("true, false or 'auto'", lambda x: isinstance(x, bool) or x == "auto")
    attn_implementation: OneOf(C.AttnImplementation)
    loss_chunk_tokens: Null(Int(1))


class DeepSpeed(WholeSection):
    stage: OneOf(C.ZeroStage)
    offload_optimizer: BOOL
    offload_parameters: BOOL
    pin_memory: BOOL = None
    contiguous_gradients: BOOL
    overlap_comm: BOOL
    allgather_bucket_size: Int(1)
    reduce_bucket_size: Int(1)


class Trainer(Section):
    name: NONEMPTY
    accelerator: OneOf(C.Accelerator)
    devices: Check("an integer >= 1, -1 or 'auto'", lambda x: (is_int(x) and (x >= 1 or x == -1)) or x == "auto")
    num_nodes: Int(1)
    strategy: OneOf(C.Strategy)
    precision: OneOf(C.Precision)
    deepspeed: Annotated[Optional[DeepSpeed], Allowed("null or a DeepSpeed mapping (see trainer=deepspeed_stage_2)")]
    log_every_n_steps: Int(1)
    check_val_every_n_epoch: Int(1)
    enable_progress_bar: BOOL


class TrainStage(Section):
    train: Train
    trainer: Trainer


# ----- stages=[eval] -----------------------------------------------------------------------------------------------

def shots_ok(x: Any) -> bool:
    items = x if isinstance(x, list) else [x]
    return bool(items) and all(is_int(v) and v >= 0 for v in items)


def _regex_ok(x: Any) -> bool:
    try:
        return x is None or (isinstance(x, str) and re.compile(x).groups >= 1)
    except re.error:
        return False


class ExactMatch(WholeSection):  # lm-eval exact_match options a benchmark may set
    ignore_case: BOOL = None
    ignore_punctuation: BOOL = None
    ignore_numbers: BOOL = None
    regexes_to_ignore: StrList() = None


class Benchmark(Section):
    """One benchmark (eval.benchmarks.<name>, gap.benchmark); loader, files and answer: checks.benchmark_errors."""
    kind: OneOf(C.BenchmarkKind)
    loader: NONEMPTY  # shipped or file
    question_template: NONEMPTY
    answer_field: Null(NONEMPTY) = None
    target: Check("null, a template string or an integer >= 0", lambda x: x is None or is_str(x) or (
        is_int(x) and x >= 0)) = None
    choices: Check("a template or field name (a string) or a non-empty list of strings", lambda x: is_str(x) or (
        isinstance(x, list) and bool(x) and all(isinstance(c, str) for c in x))) = None
    description: Null(STR) = None
    filters: StrList() = None
    regex: Check("null or a regular expression with a group", _regex_ok) = None
    until: StrList() = None
    metrics: ListOf(C.McMetric) = None
    # generation scores: exact_match (lm-eval's) and/or math_equal, or what `process_results` returns
    metric: Check("a metric name or a non-empty list of them (exact_match, math_equal)", lambda x: is_str(x) or (
        isinstance(x, list) and bool(x) and all(isinstance(m, str) and m for m in x))) = None
    process_results: Null(Check("a 'py:module.function' reference",
                                lambda x: isinstance(x, str) and x.startswith("py:"))) = None
    exact_match: Annotated[ExactMatch, Allowed("a mapping of lm-eval exact_match options")] = None
    fewshot_target: Null(NONEMPTY) = None  # the exemplars' answer template (CoT), gold unchanged
    num_fewshot: Check("null, an integer >= 0 or a list of them", lambda x: x is None or shots_ok(x)) = None
    fewshot_sampler: OneOf(C.FewshotSampler) = None
    version: Num(ge=0.0) = None
    lm_eval: Annotated[dict, Field(strict=True), Allowed("a mapping of extra lm-eval task keys")] = None
    loader_options: Annotated[dict, Field(strict=True), Allowed("a mapping of the loader's options")] = None
    path: Null(STR) = None  # loader=file: existing files (checks.benchmark_errors)
    fewshot_path: Null(STR) = None


class EvalCallback(Section):
    every_n_epochs: Int(0)
    limit: Int(1)
    tasks: StrList()
    num_fewshot: Int(0)


class EvalVllm(Section):  # eval.engine=vllm: the arguments of lm-eval's VLLM model
    tensor_parallel_size: Int(1)
    data_parallel_size: Int(1)
    gpu_memory_utilization: TOP_P
    max_model_len: Null(Int(16))
    dtype: OneOf(C.VllmDtype)
    seed: Int(0)
    enforce_eager: BOOL
    batch_size: Check("'auto' or an integer >= 1", lambda x: x == "auto" or (is_int(x) and x >= 1))


class SelfConsistency(Section):  # maj@k rows next to greedy (eval.self_consistency.k samples per question)
    k: Int(0) = None
    temperature: POSITIVE = None


class Eval(Section):
    name: NONEMPTY
    tasks: Null(StrList(nonempty=True))  # names of eval.benchmarks: checks._eval_errors
    num_fewshot: Check("an integer >= 0 or a non-empty list of them", shots_ok)
    limit: Check("null, an integer >= 1, or a fraction in (0, 1]",
                 lambda x: x is None or (is_int(x) and x >= 1) or (isinstance(x, float) and 0 < x <= 1))
    batch_size: Int(1)
    apply_chat_template: BOOL
    chat_template_shots: Null(Check("an integer >= 0 or a non-empty list of them", shots_ok)) = None
    fewshot_as_multiturn: BOOL
    system_instruction: Null(STR)
    max_gen_toks: Int(1)
    max_length: Int(16)
    dtype: OneOf(C.Dtype)
    device: DEVICE
    generator: OneOf(C.EvalGenerator) = None
    fast_slots: Int(1) = None
    engine: OneOf(C.EvalEngine) = None
    vllm: Any = None  # checks._eval_vllm_errors
    models: ListOf(C.EvalModel)
    trained_path: Null(NONEMPTY)
    log_samples: BOOL
    bootstrap_iters: Int(0)
    self_consistency: SelfConsistency = None
    data_roots: StrList() = None  # folders benchmark files may read besides the launch dir (utils/paths.py)
    random_seed: SEED
    fewshot_random_seed: SEED
    callback: EvalCallback
    benchmarks: Annotated[dict[str, Any], Field(strict=True, min_length=1),
                          Allowed("a mapping of benchmark configs")]  # each: Benchmark (checks.benchmark_errors)


class EvalStage(Section):
    eval: Eval


# ----- verify, gap -------------------------------------------------------------------------------------------------

class _Judge(Section):
    name: NONEMPTY
    filter: OneOf(C.VerifyFilter)
    threshold: Num(ge=0.0, le=1.0)
    quantile: Num(ge=0.0, le=1.0)
    format: OneOf(C.VerifyFormat)
    chunk: Int(1)
    max_response_chars: Null(Int(16))


class JudgeSampling(Section):
    temperature: Num(ge=0.0)
    top_p: TOP_P
    max_new_tokens: Int(1)
    stop: StrList() = None


class McJudge(_Judge):
    prompt: Template("question", "response")
    positive: NONEMPTY
    negative: NONEMPTY
    batch_size: Int(1)
    max_length: Null(Int(16))
    dtype: OneOf(C.Dtype)
    device: Null(DEVICE)


class CotBinaryJudge(_Judge):
    prompt: Template("question", "response")
    sampling: JudgeSampling


class CotScoreJudge(CotBinaryJudge):
    score_min: Num(ge=0.0)
    score_max: Num(ge=0.0)


class TournamentJudge(_Judge):
    prompt: Template("question", "response_a", "response_b")
    sampling: JudgeSampling


class NoVerify(Section):
    name: Literal["none"]


class AllOfVerify(Section):  # each member: one of JUDGES (checks.verify_errors)
    name: Literal["all_of"]
    verifiers: Any = None


JUDGES = {"mc": McJudge, "cot_binary": CotBinaryJudge, "cot_score": CotScoreJudge, "tournament": TournamentJudge}


class Gap(Section):
    limit: Check("null (use eval.limit), an integer >= 1, or a fraction in (0, 1]",
                 lambda x: x is None or (is_int(x) and x >= 1) or (isinstance(x, float) and 0 < x <= 1))
    n_samples: Int(1)
    temperature: Num(ge=0.0)
    top_p: TOP_P
    max_new_tokens: Int(1)
    num_fewshot: Int(0)
    chat: BOOL
    chunk: Int(1)
    cache: BOOL
    question_field: Null(NONEMPTY)
    pass_k: Check("a non-empty list of integers >= 1",
                  lambda x: isinstance(x, list) and bool(x) and all(is_int(k) and k >= 1 for k in x))
    perfect_question_policy: OneOf(C.PerfectPolicy)
    empty_keep_policy: OneOf(C.EmptyPolicy)
    benchmark: Any = None  # checks.benchmark_errors
