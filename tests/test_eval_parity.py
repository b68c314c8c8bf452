"""Our benchmark configs reproduce lm-eval 0.4.13's own task YAMLs: same prompts, few-shot exemplars,
choices, filters and scores on the same documents (only the data source is swapped for the shipped file)."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crescent.eval import harness
from crescent.eval.benchmarks import load_docs
from crescent.eval.tasks import build_task

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
# (our benchmark, lm-eval's YAML, shot counts, docs compared)
PAIRS = [
    ("gsm8k", "gsm8k/gsm8k.yaml", [0, 5], 6),
    ("arc_challenge", "arc/arc_challenge.yaml", [0, 3], 6),
    ("arc_easy", "arc/arc_easy.yaml", [0], 6),
    ("piqa", "piqa/piqa.yaml", [0], 6),
    ("hellaswag", "hellaswag/hellaswag.yaml", [0], 6),
    ("winogrande", "winogrande/default.yaml", [0], 6),
    ("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", [0], 6),
    ("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", [0], 6),
    ("mmlu", "mmlu/default/mmlu_abstract_algebra.yaml", [0, 5], 1),  # our doc 0 is abstract_algebra's doc 0
    # LMSI / Mind the Gap benchmarks lm-eval ships (few-shot where both draw from the same pool)
    ("anli_r1", "anli/anli_r1.yaml", [0, 3], 6),  # exemplars: dev on both sides (lm-eval's train_r1 = our pool)
    ("anli_r2", "anli/anli_r2.yaml", [0, 3], 6),
    ("anli_r3", "anli/anli_r3.yaml", [0, 3], 6),
    ("rte", "super_glue/rte/default.yaml", [0], 6),
    ("rte", "glue/rte/default.yaml", [0], 6),
    ("openbookqa", "openbookqa/openbookqa.yaml", [0], 6),
    ("nq_open", "nq_open/nq_open.yaml", [0, 4], 6),
    ("mnli", "glue/mnli/default.yaml", [0], 3),  # hand-written GLUE tsv (tests/test_eval_benchmarks.py)
    ("mnli_mismatch", "glue/mnli/mismatch.yaml", [0], 3),
    ("drop", "drop/default.yaml", [0, 1], 2),  # hand-written drop_dataset_dev.json
]
USER_FILES = {"mnli": "dev_matched.tsv", "mnli_mismatch": "dev_mismatched.tsv", "drop": "drop_dataset_dev.json"}


@pytest.fixture
def make_cfg(make_cfg, tmp_path):
    """make_cfg that points the MNLI/DROP benchmarks at hand-written canonical files."""
    from test_eval_benchmarks import DROP_JSON, MNLI_TSV

    (tmp_path / "dev_matched.tsv").write_text(MNLI_TSV)
    (tmp_path / "dev_mismatched.tsv").write_text(MNLI_TSV)
    (tmp_path / "drop_dataset_dev.json").write_text(__import__("json").dumps(DROP_JSON))
    return make_cfg


def ours(make_cfg, name: str, max_gen_toks: int = 256) -> dict:
    extra = [] if name in ("gsm8k", "arc_challenge", "piqa", "hellaswag", "winogrande", "truthfulqa_mc1",
                           "truthfulqa_mc2", "mmlu") else [f"+eval/benchmark@eval.benchmarks.{name}={name}"]
    cfg = make_cfg("eval=all", *extra)
    spec = OmegaConf.to_container(cfg.eval.benchmarks[name], resolve=True)
    if name in USER_FILES:
        spec.setdefault("loader_options", {})["path"] = str(Path(cfg.paths.output_dir).parent / USER_FILES[name])
    return build_task(name, spec, max_gen_toks=max_gen_toks)


def reference(name: str, yaml_path: str, spec: dict) -> dict:
    """lm-eval's task config with its HF dataset replaced by the same shipped docs (split names as it asks)."""
    import datasets
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(LM_EVAL_TASKS / yaml_path)
    if yaml_path.endswith("mismatch.yaml"):  # include: default.yaml
        cfg = {**load_yaml(LM_EVAL_TASKS / "glue/mnli/default.yaml"), **{k: v for k, v in cfg.items() if k != "include"}}
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "tag", "process_docs"):
        if not (key == "process_docs" and name == "drop"):  # drop's builds the gold answers from the raw form
            cfg.pop(key, None)  # process_docs: hellaswag's builds query/choices, which the shipped form already has
    docs = load_docs(spec)
    test = datasets.Dataset.from_list(docs["test"])
    splits = {cfg.get("test_split") or cfg.get("validation_split"): test}
    fewshot = cfg.get("fewshot_split") or cfg.get("training_split")
    if fewshot:  # like ours: the test docs when no train split ships (used only at 0 shots here)
        splits[fewshot] = datasets.Dataset.from_list(docs["fewshot"]) if docs["fewshot"] else test
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict(splits)
    cfg["task"] = f"lm_eval_{name}"
    return cfg


def requests(task_cfg: dict, shots: int, limit: int) -> list:
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_cfg], TaskManager(include_defaults=False))[task_cfg["task"]]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return sorted((i.doc_id, i.idx, i.request_type, i.arguments[0], i.arguments[1] if i.request_type != "generate_until"
                   else i.arguments[1]["until"]) for i in task.instances)


@pytest.mark.parametrize("name,yaml_path,shots,limit", PAIRS, ids=[p[1].split(".")[0] for p in PAIRS])
def test_requests_equal_lm_evals_own_task(make_cfg, name, yaml_path, shots, limit):
    mine = ours(make_cfg, name)
    ref = reference(name, yaml_path, mine["custom_dataset"].args[0])
    for k in shots:
        got, want = requests(mine, k, limit), requests(ref, k, limit)
        assert got == want, f"{name} {k}-shot"
        assert len(got) >= limit


def test_gsm8k_filters_and_metric_are_lm_evals(make_cfg):
    from lm_eval.tasks._yaml_loader import load_yaml

    ref = load_yaml(LM_EVAL_TASKS / "gsm8k/gsm8k.yaml")
    mine = ours(make_cfg, "gsm8k")
    assert mine["filter_list"] == ref["filter_list"]
    assert mine["metric_list"] == ref["metric_list"]
    assert mine["doc_to_text"] == ref["doc_to_text"] and mine["generation_kwargs"]["until"] == ref["generation_kwargs"]["until"]


@pytest.fixture(scope="module")
def tiny_lm():
    from helpers import compose_cfg
    from crescent.models.loading import load_model_and_tokenizer

    cfg = compose_cfg(["model@teacher=tiny_llama"])
    tok, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir, dtype="float32")
    return harness.make_lm(model, tok, batch_size=4, max_length=2048)


@pytest.mark.parametrize("shots", [0, 5])
def test_gsm8k_scores_equal_lm_evals_on_the_same_documents(make_cfg, tiny_lm, shots):
    mine = ours(make_cfg, "gsm8k", max_gen_toks=24)
    ref = reference("gsm8k", "gsm8k/gsm8k.yaml", mine["custom_dataset"].args[0])
    ref["generation_kwargs"]["max_gen_toks"] = 24
    a = harness.evaluate(tiny_lm, [mine], shots, {}, limit=4)
    b = harness.evaluate(tiny_lm, [ref], shots, {}, limit=4)
    rows_a = {(r["filter"], r["metric"]): (r["value"], r["n"]) for r in harness.result_rows(a, "x")}
    rows_b = {(r["filter"], r["metric"]): (r["value"], r["n"]) for r in harness.result_rows(b, "x")}
    assert rows_a == rows_b and set(rows_a) == {("strict-match", "exact_match"), ("flexible-extract", "exact_match")}
    sa = [(s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]) for s in a["samples"]["gsm8k"]]
    sb = [(s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]) for s in b["samples"]["lm_eval_gsm8k"]]
    assert sorted(sa) == sorted(sb) and len(sa) == 8


@pytest.mark.slow
def test_gsm8k_on_the_embedded_model_equals_lm_evals_task(make_cfg):
    """The real SmolLM2-135M-Instruct, 5-shot, 6 documents: same answers and same scores."""
    from crescent.models.loading import load_model_and_tokenizer

    cfg = make_cfg()
    tok, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir, dtype="float32")
    lm = harness.make_lm(model, tok, batch_size=6, max_length=2048)
    mine = ours(make_cfg, "gsm8k", max_gen_toks=160)
    ref = reference("gsm8k", "gsm8k/gsm8k.yaml", mine["custom_dataset"].args[0])
    ref["generation_kwargs"]["max_gen_toks"] = 160
    a, b = (harness.evaluate(lm, [t], 5, {}, limit=6) for t in (mine, ref))
    assert [(r["filter"], r["value"]) for r in harness.result_rows(a, "x")] == \
        [(r["filter"], r["value"]) for r in harness.result_rows(b, "x")]
    assert [s["filtered_resps"] for s in a["samples"]["gsm8k"]] == [s["filtered_resps"] for s in b["samples"]["lm_eval_gsm8k"]]


@pytest.mark.parametrize("shots", [0, 5])
def test_fast_generator_answers_as_hflm_does(make_cfg, tiny_lm, shots):
    """eval.generator=fast (continuous batching) vs HFLM's own generate, one request per batch (no padding), fp32:
    the same responses, extracted answers and scores."""
    from crescent.eval.fast_lm import FastLM

    fast = harness.make_lm(tiny_lm.model, tiny_lm.tokenizer, batch_size=4, max_length=2048, generator="fast")
    assert isinstance(fast, FastLM)
    plain = harness.make_lm(tiny_lm.model, tiny_lm.tokenizer, batch_size=1, max_length=2048)
    task = ours(make_cfg, "gsm8k", max_gen_toks=24)
    a, b = (harness.evaluate(lm, [task], shots, {}, limit=4) for lm in (fast, plain))
    assert harness.result_rows(a, "x") == harness.result_rows(b, "x")
    key = [(s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]) for s in a["samples"]["gsm8k"]]
    assert key == [(s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]) for s in b["samples"]["gsm8k"]]
    assert fast.fast.last_stats["sequences"] == 4 and sum(fast.fast.last_stats["lengths"]) > 20  # real text


def test_unknown_generator_is_rejected(tiny_lm):
    with pytest.raises(ValueError, match="eval.generator='vllm'"):
        harness.make_lm(tiny_lm.model, tiny_lm.tokenizer, batch_size=1, max_length=64, generator="vllm")


# ---- MATH: lm-eval's minerva_math functions, loaded from its own source ------------------------------------

@pytest.fixture(scope="module")
def lm_eval_minerva():
    """lm-eval's minerva_math/utils.py, run from its source. Its import guard wants antlr4 4.11 (for sympy's
    parse_latex) while math-verify needs the installed 4.9.3: the guard is skipped and parse_latex reports
    'cannot parse', which is what sympy does here, so is_equiv compares the normalised strings (as ours)."""
    import types

    import sympy

    src = (LM_EVAL_TASKS / "minerva_math/utils.py").read_text()
    guard = 'assert version("antlr4-python3-runtime").startswith("4.11")'
    assert guard in src
    mod = types.ModuleType("lm_eval_minerva_utils")
    exec(compile(src.replace(guard, "pass"), str(LM_EVAL_TASKS / "minerva_math/utils.py"), "exec"), mod.__dict__)

    def parse_latex(_):
        raise sympy.parsing.latex.errors.LaTeXParsingError("antlr4 4.11 not installed")

    mod.parse_latex = parse_latex
    return mod


def test_math_gold_answers_are_lm_evals(lm_eval_minerva):
    import datasets

    for subset in ("full", "math500"):
        docs = load_docs({"loader": "math", "loader_options": {"subset": subset}})["test"]
        raw = datasets.Dataset.from_list([{"problem": d["problem"], "solution": d["solution"]} for d in docs])
        theirs = lm_eval_minerva.process_docs(raw)
        assert [d["answer"] for d in docs] == theirs["answer"], subset


@pytest.mark.parametrize("name,limit", [("math", 5), ("math500", 5)])
def test_math_requests_equal_lm_evals_minerva(make_cfg, lm_eval_minerva, name, limit):
    import datasets

    mine = ours(make_cfg, name)
    docs = load_docs(mine["custom_dataset"].args[0])["test"]
    ref = {  # lm-eval's minerva_math_algebra.yaml / minerva_math500.yaml with their functions
        "task": f"lm_eval_{name}", "custom_dataset": lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}),
        "output_type": "generate_until", "test_split": "test", "doc_to_text": lm_eval_minerva.doc_to_text,
        "process_results": lm_eval_minerva.process_results,
        "doc_to_target": "{{answer if few_shot is undefined else solution}}",
        "generation_kwargs": {"until": ["Problem:"], "do_sample": False, "temperature": 0},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "math_verify", "aggregation": "mean", "higher_is_better": True}],
        "fewshot_config": {"sampler": "first_n", "samples": lm_eval_minerva.list_fewshot_samples},
        "metadata": {"version": 3.1},
    }
    for k in (0, 4):
        assert requests(mine, k, limit) == requests(ref, k, limit), f"{name} {k}-shot"


MATH_RESPONSES = [
    "The asymptotes are at x=2 and x=-3.\nFinal Answer: The final answer is $2$. I hope it is correct.",
    "Final Answer: The final answer is $3$. I hope it is correct.",
    "So there are $\\boxed{\\frac{4}{2}}$.\nFinal Answer: The final answer is $\\frac{4}{2}$. I hope it is correct.",
    "Final Answer: The final answer is 2 units. I hope it is correct.",
    "The answer is \\boxed{2}.",
    "I do not know.",
    "",
]


def test_math_scores_equal_lm_evals_per_response(lm_eval_minerva):
    from crescent.eval.scoring import minerva_process_results

    docs = load_docs({"loader": "math", "loader_options": {"subset": "math500"}})["test"][:3]
    docs += load_docs({"loader": "math", "loader_options": {"subset": "full"}})["test"][:1]
    for doc in docs:
        for response in MATH_RESPONSES + [f"Final Answer: The final answer is ${doc['answer']}$. I hope it is correct."]:
            theirs = lm_eval_minerva.process_results(doc, [response])
            mine = minerva_process_results(doc, [response])
            assert mine == {"exact_match": theirs["exact_match"], "math_equal": theirs["math_verify"]}, (doc["answer"], response)
    assert minerva_process_results(docs[-1], [MATH_RESPONSES[0]]) == {"exact_match": 1, "math_equal": 1}


@pytest.mark.parametrize("name,yaml_path,shots", [("nq_open", "nq_open/nq_open.yaml", 0), ("drop", "drop/default.yaml", 1),
                                                  ("anli_r1", "anli/anli_r1.yaml", 0), ("openbookqa", "openbookqa/openbookqa.yaml", 0)])
def test_scores_equal_lm_evals_per_sample(make_cfg, tiny_lm, name, yaml_path, shots):
    """The same model, documents and responses: crescent's and lm-eval's task give every sample the same score."""
    mine = ours(make_cfg, name, max_gen_toks=12)
    ref = reference(name, yaml_path, mine["custom_dataset"].args[0])
    ref.setdefault("generation_kwargs", {})
    if mine["output_type"] == "generate_until":
        ref["generation_kwargs"]["max_gen_toks"] = 12
    a, b = (harness.evaluate(tiny_lm, [t], shots, {}, limit=2) for t in (mine, ref))
    rows_a = {(r["filter"], r["metric"]): r["value"] for r in harness.result_rows(a, "x")}
    rows_b = {(r["filter"], r["metric"]): r["value"] for r in harness.result_rows(b, "x")}
    assert rows_a == rows_b and rows_a
    per = lambda raw, task: sorted((s["doc_id"], s["filter"], str(s["resps"]), *(s[m] for m in s["metrics"]))  # noqa: E731
                                   for s in raw["samples"][task])
    assert per(a, name) == per(b, f"lm_eval_{name}") and len(per(a, name)) == 2
