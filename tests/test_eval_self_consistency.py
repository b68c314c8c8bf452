"""Self-consistency eval (eval.self_consistency.k): maj@k rows next to greedy ones, through lm-eval's repeats and
majority_vote filter."""
import re
from collections import Counter
from pathlib import Path

import pytest
from test_eval_vllm import standin  # noqa: F401  (the vLLM stand-in fixture)

from crescent.eval import stage as eval_stage
from crescent.eval.tasks import FLEXIBLE, build_task, decoding_of, self_consistency_task
from crescent.utils.io import read_json, read_jsonl

TINY = ["model@teacher=tiny_llama", "logger=none", "stages=[eval]", "eval=smoke", "eval.limit=3",
        "eval.max_gen_toks=8", "eval.dtype=float32"]


def test_self_consistency_task_is_lm_evals_repeats_and_majority_vote():
    from helpers import compose_cfg
    from omegaconf import OmegaConf

    specs = OmegaConf.to_container(compose_cfg(["eval=all", "+eval/benchmark@eval.benchmarks.math=math"]).eval.benchmarks, resolve=True)
    greedy = build_task("gsm8k", specs["gsm8k"], max_gen_toks=64)
    sc = self_consistency_task(greedy, 5, 0.7)
    assert sc["task"] == "gsm8k__maj5" and sc["repeats"] == 5 and greedy["repeats"] == 1
    assert sc["generation_kwargs"] == {**greedy["generation_kwargs"], "do_sample": True, "temperature": 0.7}
    assert [f["name"] for f in sc["filter_list"]] == ["strict-match-maj@5", "flexible-extract-maj@5"]
    assert [s["function"] for s in sc["filter_list"][1]["filter"]] == ["regex", "majority_vote", "take_first"]
    assert greedy["generation_kwargs"]["do_sample"] is False  # the greedy task is left as it was
    assert self_consistency_task(build_task("arc_challenge", specs["arc_challenge"], max_gen_toks=8), 5, 0.7) is None
    assert self_consistency_task(build_task("math", specs["math"], max_gen_toks=8), 5, 0.7) is None  # own scoring
    assert decoding_of("gsm8k__maj5") == ("gsm8k", "maj@5") and decoding_of("gsm8k") == ("gsm8k", "greedy")


@pytest.mark.parametrize("generator", ["fast", "hf"])  # crescent's CPU backend, lm-eval's HFLM.generate
def test_maj_at_5_rows_next_to_greedy_rows_on_the_tiny_model(make_cfg, generator):
    cfg = make_cfg(*TINY, "eval.self_consistency.k=5", f"eval.generator={generator}")
    out = eval_stage.run(cfg)
    run = Path(cfg.paths.output_dir) / "eval"
    result = read_json(run / "results.json")
    got = {(r["task"], r["filter"], r["decoding"]) for r in result["rows"] if r["task"] == "gsm8k"}
    assert got == {("gsm8k", "strict-match", "greedy"), ("gsm8k", "flexible-extract", "greedy"),
                   ("gsm8k", "strict-match-maj@5", "maj@5"), ("gsm8k", "flexible-extract-maj@5", "maj@5")}
    assert {r["decoding"] for r in result["rows"] if r["task"] == "arc_challenge"} == {"greedy"}  # no maj@k for MC
    maj = next(r for r in result["rows"] if r["filter"] == "flexible-extract-maj@5")
    assert maj["n"] == 3 and maj["stderr"] is not None and maj["metric"] == "exact_match"
    assert {"gsm8k/flexible-extract", "gsm8k/flexible-extract-maj@5"} <= set(out.metrics)
    summary = (run / "summary.md").read_text()
    assert "| gsm8k | 0 | flexible-extract | 3 |" in summary and "| gsm8k | 0 | flexible-extract-maj@5 | 3 |" in summary
    # each doc: 5 sampled responses, and the maj@5 answer is the most common flexible-extract answer among them
    samples = list(read_jsonl(run / "samples_base_gsm8k__maj5_0shot.jsonl"))
    assert len(samples) == 3
    for s in samples:
        assert len(s["responses"]) == 5
        answers = [(re.findall(FLEXIBLE, r) or [None])[-1] for r in s["responses"]]
        answers = ["[invalid]" if a is None else next(g for g in a if g).strip() for a in answers]
        assert s["filters"]["flexible-extract-maj@5"]["extracted"] == Counter(answers).most_common(1)[0][0]
    assert len({r for s in samples for r in s["responses"]}) > 3  # sampled, not five copies of one greedy answer
    assert read_json(run / "results.json")["settings"]["self_consistency"] == {"k": 5, "temperature": 0.7}


@pytest.mark.slow
def test_smollm2_maj_at_k_on_30_asdiv_docs_reports_stderr(make_cfg):
    cfg = make_cfg("stages=[eval]", "logger=none", "eval=math", "eval.tasks=[asdiv]", "eval.num_fewshot=0",
                   "eval.limit=30", "eval.models=[base]", "eval.max_gen_toks=48", "eval.self_consistency.k=3")
    eval_stage.run(cfg)
    rows = read_json(Path(cfg.paths.output_dir) / "eval" / "results.json")["rows"]
    by = {(r["filter"], r["decoding"]): r for r in rows}
    greedy, maj = by["flexible-extract", "greedy"], by["flexible-extract-maj@3", "maj@3"]
    assert greedy["n"] == maj["n"] == 30
    for r in (greedy, maj):  # lm-eval's closed-form stderr of a mean over 30 documents
        assert r["stderr"] == pytest.approx((r["value"] * (1 - r["value"]) / 29) ** 0.5)
    print(f"asdiv 0-shot SmolLM2-135M, 30 docs: greedy {greedy['value']:.3f} ± {greedy['stderr']:.3f}, "
          f"maj@3 {maj['value']:.3f} ± {maj['stderr']:.3f}")


def test_maj_at_k_through_lm_evals_vllm_model(make_cfg, standin):
    """eval.engine=vllm: the same repeats reach lm-eval's VLLM (here the stand-in engine) as sampled requests."""
    from test_eval_vllm import VLLM

    cfg = make_cfg(*TINY, *VLLM, "eval.self_consistency.k=3", "eval.tasks=[gsm8k]")
    eval_stage.run(cfg)
    run = Path(cfg.paths.output_dir) / "eval"
    rows = read_json(run / "results.json")["rows"]
    assert {(r["filter"], r["decoding"]) for r in rows} == {
        ("strict-match", "greedy"), ("flexible-extract", "greedy"),
        ("strict-match-maj@3", "maj@3"), ("flexible-extract-maj@3", "maj@3")}
    samples = list(read_jsonl(run / "samples_base_gsm8k__maj3_0shot.jsonl"))
    assert all(len(s["responses"]) == 3 and len(set(s["responses"])) > 1 for s in samples)


def test_aggregate_table_shows_greedy_and_maj_at_k_side_by_side():
    from crescent.aggregate import Job, build_table, to_markdown

    def row(model, filt, value):
        return {"model": model, "task": "gsm8k", "num_fewshot": 0, "filter": filt, "metric": "exact_match",
                "value": value, "stderr": 0.01, "n": 30}

    jobs = [Job(dir=f"j{k}", overrides=[f"voting.k={k}"], status="ok",
                rows=[row("base", "flexible-extract", 0.1), row("base", "flexible-extract-maj@5", 0.2),
                      row("trained", "flexible-extract", 0.3 + k / 100), row("trained", "strict-match", 0.0),
                      row("trained", "flexible-extract-maj@5", 0.4 + k / 100)]) for k in (1, 3)]
    table = build_table(jobs)
    assert table["columns"] == ["gsm8k 0-shot", "gsm8k 0-shot maj@5"]
    cells = {r["label"]: r["cells"] for r in table["rows"]}
    assert cells["voting.k=3"]["gsm8k 0-shot"][0] == pytest.approx(0.33)
    assert cells["voting.k=3"]["gsm8k 0-shot maj@5"][0] == pytest.approx(0.43)
    assert cells["base: student"]["gsm8k 0-shot maj@5"][0] == pytest.approx(0.2)
    assert "gsm8k 0-shot maj@5" in to_markdown(table)
