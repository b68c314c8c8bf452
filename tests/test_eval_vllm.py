"""eval.engine=vllm: lm-eval's own `vllm` model type, against the vLLM stand-in (tests/fake_vllm) and a Ray
stand-in (tests/fake_ray) on sys.path. What is covered: the config composes and validates; lm-eval's VLLM model
builds vllm.LLM on the base model's folder and on hf_export/ with eval.vllm.* (TP, dtype, max_model_len, seed,
memory, eager), sends token prompts (generation and log-likelihood requests), and the engine is shut down after
each model; eval/results.json, the samples files and the summary have the same format as eval.engine=hf; with
data_parallel_size=2 lm-eval dispatches two Ray replicas (num_gpus = TP each, the model args, an interleaved share
of the requests each) and the rows equal data_parallel_size=1. Real vLLM/Ray behaviour on GPUs is not covered."""
import importlib.util
import sys
from pathlib import Path

import pytest

from crescent.config import ConfigError, validate
from crescent.eval import stage as eval_stage
from crescent.models.loading import load_model_and_tokenizer, resolve_model_dir
from crescent.utils.io import read_json, read_jsonl

HERE = Path(__file__).resolve().parent
TINY = ["model@teacher=tiny_llama", "logger=none", "stages=[eval]", "eval=smoke", "eval.limit=3",
        "eval.max_gen_toks=8", "eval.dtype=float32"]
VLLM = ["eval.engine=vllm", "eval.vllm.tensor_parallel_size=2", "eval.vllm.dtype=float32",
        "eval.vllm.max_model_len=1024", "eval.vllm.seed=7"]


_SAVED: dict = {}  # the stand-in modules between tests: lm-eval's vllm module, imported once, holds them


def _drop(prefixes) -> dict:
    gone = {m: sys.modules.pop(m) for m in [m for m in sys.modules if m.split(".")[0] in prefixes]}
    return gone


@pytest.fixture
def standin(monkeypatch):
    """The vLLM and Ray stand-ins importable for one test; afterwards `vllm`/`ray` are unimportable again.
    lm-eval's vllm module stays imported (its model registry takes a name once), so the same stand-in modules
    come back for the next test."""
    _drop({"vllm", "ray"})
    monkeypatch.setenv("FAKE_VLLM_FLAVOUR", "eval")  # tests/fake_vllm/vllm/__init__.py: lm-eval's engine surface
    sys.modules.update(_SAVED)
    monkeypatch.syspath_prepend(str(HERE / "fake_vllm"))
    monkeypatch.syspath_prepend(str(HERE / "fake_ray"))
    import lm_eval.models.vllm_causallms as lm_vllm

    calls = lm_vllm.LLM.__init__.__globals__["CALLS"]
    calls.clear()
    import ray

    ray.CALLS.clear()
    yield calls, ray.CALLS
    _SAVED.update(_drop({"vllm", "ray"}))


def _export(cfg) -> Path:
    tok, model = load_model_and_tokenizer(cfg.student, cfg.paths.cache_dir)
    with __import__("torch").no_grad():
        model.model.embed_tokens.weight.mul_(1.5)
    out = Path(cfg.paths.output_dir) / "hf_export"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _shape(run: Path) -> dict:
    """Everything of an eval output but the scores and responses: rows' identity and fields, samples' fields,
    doc ids, prompts and filters, and the summary's header."""
    result = read_json(run / "results.json")
    samples = {p.name: [(s["doc_id"], s["prompt"], sorted(s), sorted(s["filters"])) for s in read_jsonl(p)]
               for p in sorted(run.glob("samples_*.jsonl"))}
    return {"rows": sorted((r["model"], r["task"], r["num_fewshot"], r["filter"], r["metric"], r["n"], tuple(sorted(r)))
                           for r in result["rows"]),
            "keys": sorted(result), "samples": samples,
            "summary": (run / "summary.md").read_text().splitlines()[:3], "png": (run / "summary.png").is_file()}


def test_engine_vllm_builds_lm_evals_vllm_model_on_each_folder(make_cfg, standin):
    calls, _ = standin
    hf_cfg = make_cfg(*TINY, "eval.models=[base,trained]")
    export = _export(hf_cfg)
    eval_stage.run(hf_cfg)
    hf_shape = _shape(Path(hf_cfg.paths.output_dir) / "eval")
    for part in (Path(hf_cfg.paths.output_dir) / "eval").rglob("*.json*"):
        part.unlink()  # the same run folder, scored again by the other engine

    cfg = make_cfg(*TINY, "eval.models=[base,trained]", *VLLM)
    validate(cfg)
    eval_stage.run(cfg)
    run = Path(cfg.paths.output_dir) / "eval"
    assert _shape(run) == hf_shape  # same files, rows, fields, prompts as eval.engine=hf
    settings = read_json(run / "results.json")["settings"]
    assert settings["engine"] == "vllm" and settings["vllm"]["tensor_parallel_size"] == 2

    made = [c for c in calls if c["method"] == "LLM"]
    assert [c["model"] for c in made] == [resolve_model_dir(cfg.student, cfg.paths.cache_dir), str(export)]
    for c in made:
        assert (c["tensor_parallel_size"], c["dtype"], c["max_model_len"], c["seed"]) == (2, "float32", 1024, 7)
        assert (c["gpu_memory_utilization"], c["enforce_eager"]) == (0.9, False)
    # each engine is shut down after its model's units, before the next one is built
    order = [(c["method"], c["llm"]) for c in calls if c["method"] in ("LLM", "shutdown")]
    assert order == [("LLM", made[0]["llm"]), ("shutdown", made[0]["llm"]), ("LLM", made[1]["llm"]),
                     ("shutdown", made[1]["llm"])]

    gens = [c for c in calls if c["method"] == "generate"]
    greedy = [c for c in gens if c["params"][0].max_tokens == 8]  # gsm8k generate_until, one call per model
    loglik = [c for c in gens if c["params"][0].prompt_logprobs == 1]  # arc_challenge, prompt logprobs
    assert len(greedy) == 2 and len(loglik) >= 2 and len(greedy) + len(loglik) == len(gens)
    assert all(len(c["prompts"]) == 3 and all(p.temperature == 0 and "Question:" in p.stop for p in c["params"])
               for c in greedy)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export))
    samples = list(read_jsonl(run / "samples_trained_gsm8k_0shot.jsonl"))
    sent = {tuple(p["prompt_token_ids"]): o.outputs[0].text for p, o in zip(greedy[1]["prompts"], greedy[1]["outputs"])}
    for s in samples:  # each response is the engine's text for that prompt's tokens
        assert s["response"] == sent[tuple(tok(s["prompt"])["input_ids"])]


def test_data_parallel_runs_lm_evals_ray_replicas(make_cfg, standin):
    calls, ray_calls = standin
    one = make_cfg(*TINY, *VLLM)
    rows_dp1 = read_json(Path(eval_stage.run(one).artifacts["results"]))["rows"]
    calls.clear()
    cfg = make_cfg(*TINY, *VLLM, "eval.vllm.data_parallel_size=2")
    validate(cfg)
    rows = read_json(Path(eval_stage.run(cfg).artifacts["results"]))["rows"]
    assert rows == rows_dp1  # the same scores from two replicas as from one engine

    replicas = [c for c in ray_calls if c["method"] == "remote"]
    assert replicas and len(replicas) % 2 == 0 and all(c["num_gpus"] == 2 for c in replicas)
    assert {"method": "shutdown"} in ray_calls
    model_args = replicas[0]["args"][0]
    assert (model_args["model"], model_args["tensor_parallel_size"], model_args["dtype"], model_args["max_model_len"],
            model_args["seed"]) == (resolve_model_dir(cfg.student, cfg.paths.cache_dir), 2, "float32", 1024, 7)
    made = [c for c in calls if c["method"] == "LLM"]
    assert len(made) == len(replicas)  # one vllm.LLM per replica per dispatch, no driver engine
    assert [c["method"] for c in calls].count("EngineArgs") == 1  # lm-eval's model config for the chat template
    gsm = [(a, b) for a, b in zip(replicas[::2], replicas[1::2]) if b["args"][1][0].max_tokens == 8]
    assert len(gsm) == 1 and [len(r["args"][2]) for r in gsm[0]] == [2, 1]  # 3 requests interleaved over 2


def test_data_parallel_without_ray_names_the_key(make_cfg, monkeypatch):
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    _drop({"vllm"})
    monkeypatch.syspath_prepend(str(HERE / "fake_vllm"))
    try:
        with pytest.raises(ImportError, match=r"eval.vllm.data_parallel_size=2 needs `ray`"):
            eval_stage.run(make_cfg(*TINY, "eval.engine=vllm", "eval.vllm.data_parallel_size=2"))
    finally:
        _drop({"vllm"})


def test_engine_vllm_without_vllm_names_the_key(make_cfg):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match=r"eval.engine=vllm needs the `vllm` package"):
        eval_stage.run(make_cfg(*TINY, "eval.engine=vllm"))


@pytest.mark.parametrize("override,message", [
    ("eval.engine=tgi", "eval.engine='tgi' is invalid: expected one of ['hf', 'vllm']"),
    ("eval.vllm.data_parallel_size=0", "eval.vllm.data_parallel_size=0 is invalid: expected an integer >= 1"),
    ("eval.vllm.dtype=bf16", "eval.vllm.dtype='bf16' is invalid"),
    ("eval.vllm.batch_size=0", "eval.vllm.batch_size=0 is invalid: expected 'auto' or an integer >= 1"),
])
def test_engine_config_errors_name_the_key(make_cfg, override, message):
    extra = [] if override.startswith("eval.engine") else ["eval.engine=vllm"]
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*TINY, *extra, override))
    assert message in str(err.value)


def test_defaults_follow_the_backend(make_cfg):
    from omegaconf import OmegaConf

    hf = make_cfg(*TINY)
    assert hf.eval.engine == "hf"
    assert OmegaConf.to_container(hf.eval.vllm, resolve=True) == {
        "tensor_parallel_size": 1, "data_parallel_size": 1, "gpu_memory_utilization": 0.9, "max_model_len": 2048,
        "dtype": "auto", "seed": 0, "batch_size": "auto", "enforce_eager": False}
    v = make_cfg(*TINY, "backend=vllm", "backend.tensor_parallel_size=4", "backend.data_parallel_size=2",
                 "backend.gpu_memory_utilization=0.8", "eval.max_length=4096")
    assert OmegaConf.to_container(v.eval.vllm, resolve=True) | {} == {
        "tensor_parallel_size": 4, "data_parallel_size": 2, "gpu_memory_utilization": 0.8, "max_model_len": 4096,
        "dtype": "auto", "seed": 0, "batch_size": "auto", "enforce_eager": False}
