"""Stage `gap`: the generation-verification gap on a labeled benchmark.

Samples gap.n_samples responses per question (few-shot, temperature/top_p from cfg.gap), extracts
answers, self-verifies them with cfg.verify (the model that sampled judges), and measures accuracy
before/after filtering against the gold answers (used only here, to measure). Writes gap/results.json,
gap/samples.jsonl, gap/rejections.jsonl, gap/summary.md. Samples are cached per chunk under
paths.cache_dir/gap/<hash> (gap.cache=true): a sweep over verifiers judges the same samples, and a
killed run resumes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from crescent.backends.base import SamplingParams
from crescent.config import ConfigError
from crescent.eval.benchmarks import load_docs
from crescent.gap import metrics as gm
from crescent.gap import prompts as gp
from crescent.gap.checks import stage_errors
from crescent.gap.report import markdown, print_table
from crescent.synth.voting import answers_equal, extract_answer
from crescent.utils.io import read_json, write_json, write_jsonl
from crescent.utils.seeding import derive_seed

log = logging.getLogger(__name__)

GAP_CODE_VERSION = 1  # bump when sampling prompts or their rendering change
_SAMPLING_KEYS = ("benchmark", "n_samples", "temperature", "top_p", "max_new_tokens", "num_fewshot", "chat", "chunk")
_NON_DATA = ("device", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _launch_dir() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.cwd
    except ValueError:
        return str(Path.cwd())


def sample_key(cfg: DictConfig, limit: Any) -> str:
    """Hash of everything that determines the sampled responses."""
    gap = _plain(cfg.gap)
    blob = {"teacher": _plain(cfg.teacher), "limit": limit, "seed": cfg.seed, "version": GAP_CODE_VERSION,
            "backend": {k: v for k, v in _plain(cfg.backend).items() if k not in _NON_DATA},
            **{k: gap.get(k) for k in _SAMPLING_KEYS}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sample(cfg: DictConfig, prompts: list, ids: list, workdir: Path, get_backend) -> list[list[str]]:
    gap = cfg.gap
    params = SamplingParams(n=int(gap.n_samples), temperature=float(gap.temperature), top_p=float(gap.top_p),
                            max_new_tokens=int(gap.max_new_tokens), stop=tuple(gap.benchmark.get("until") or ()))
    size, responses = int(gap.chunk), []
    with tqdm(total=len(prompts), desc=f"gap samples (n={gap.n_samples})", unit="q") as bar:
        for c, lo in enumerate(range(0, len(prompts), size)):
            path = workdir / f"chunk_{c:05d}.json"
            record = read_json(path) if path.is_file() else None
            if record is None or record["ids"] != ids[lo: lo + size]:
                outs = get_backend().generate(prompts[lo: lo + size], params, derive_seed(cfg.seed, "gap_samples", c))
                record = {"ids": ids[lo: lo + size], "responses": outs}
                write_json(path, record)
            responses += record["responses"]
            bar.update(len(record["ids"]))
    return responses


def describe_filter(vcfg: dict) -> str | None:
    """'threshold 0.5', 'quantile 0.75', or 'mc: threshold 0.5 AND cot_score: ...' for all_of; None for none."""
    name = vcfg.get("name", "none")
    if name == "none":
        return None
    if name == "all_of":
        return " AND ".join(f"{m}: {describe_filter(c)}" for m, c in (vcfg.get("verifiers") or {}).items())
    kind = vcfg.get("filter", "threshold")
    return f"{kind} {vcfg.get(kind)}"


def _notes(gc: dict, vname: str, ks_skipped: list[int]) -> list[str]:
    perfect = "excluded" if gc["perfect_question_policy"] == "exclude" else "count as 0"
    notes = [f"relative gap: questions with J(x)=1 {perfect}"
             f" (gap.perfect_question_policy={gc['perfect_question_policy']}); questions with nothing kept "
             f"{'count as J_f(x)=J(x)' if gc['empty_keep_policy'] == 'unchanged' else 'excluded'} "
             f"(gap.empty_keep_policy={gc['empty_keep_policy']})",
             "maj@k: majority vote over the first k samples, ties go to the answer seen first; "
             "pass@k: unbiased estimator 1 - C(n-c,k)/C(n,k)"]
    if vname == "none":
        notes.insert(0, "verify=none: only sample metrics; the generation-verification gap needs a verifier "
                        "(verify=mc|cot_binary|cot_score|tournament|all_of)")
    if ks_skipped:
        notes.append(f"pass@k for k={ks_skipped} not reported: k > n_samples")
    return notes


def _questions(cfg: DictConfig, gc: dict) -> dict:
    """The benchmark questions with a numeric gold answer, their prompts and ids (index in the limited list)."""
    bench = gc["benchmark"]
    limit = gc["limit"] if gc.get("limit") is not None else (cfg.get("eval") or {}).get("limit")
    docs = load_docs(bench, _launch_dir(), list((cfg.get("eval") or {}).get("data_roots") or []))
    test = gp.limit_docs(docs["test"], limit)
    pool = docs["fewshot"] or docs["test"]
    golds = [gp.gold_answer(d, bench) for d in test]
    ids = [i for i, g in enumerate(golds) if g is not None]  # a gold that is not a number cannot be scored
    return {
        "limit": limit, "ids": ids, "no_gold": len(test) - len(ids), "golds": [golds[i] for i in ids],
        "questions": [gp.question_text(test[i], bench, gc.get("question_field")) for i in ids],
        "prompts": [gp.build_prompt(test[i], gp.exemplars(pool, int(gc["num_fewshot"]), cfg.seed, i, exclude=test[i]),
                                    bench, bool(gc["chat"])) for i in ids],
    }


def _verify(cfg: DictConfig, vcfg: dict, items: list[dict], backend, get_backend):
    from crescent.verify import build_judge, verify_samples

    if vcfg.get("name", "none") == "none":
        return verify_samples(None, items, vcfg)
    judge = build_judge(backend if backend is not None else get_backend, cfg)  # lazy: mc on cached samples starts no engine
    return verify_samples(judge, items, vcfg, derive_seed(cfg.seed, "gap_verify"))


def _write(out: Path, result: dict, rows: list[dict], rejections: list[dict], tracker) -> str:
    write_jsonl(out / "samples.jsonl", rows)
    write_jsonl(out / "rejections.jsonl", rejections)
    write_json(out / "results.json", result)
    table = markdown(result)
    (out / "summary.md").write_text(table, encoding="utf-8")
    print_table(result)
    if tracker is not None:
        cols = ["id", "question", "gold", "response", "extracted", "correct", "score", "kept"]
        flat = [{"id": r["id"], "question": r["question"], "gold": r["gold"], "response": resp, "extracted": a,
                 "correct": c, "score": sc, "kept": k}
                for r in rows[:50]
                for resp, a, c, sc, k in zip(r["responses"], r["extracted"], r["correct"], r["scores"], r["kept"])]
        tracker.log_table("gap/samples", flat, cols)
    return table


def run(cfg: DictConfig, tracker=None) -> dict:
    """Run the gap measurement; returns {"metrics": {name: float}, "results": path, "summary": markdown, "wall_s"}
    (the pipeline logs the metrics as gap/<name>)."""
    errors = stage_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))
    t0 = time.perf_counter()
    gc = _plain(cfg.gap)
    vcfg = _plain(cfg.get("verify")) or {"name": "none"}
    vname = vcfg.get("name", "none")
    out = Path(cfg.paths.output_dir) / "gap"
    q = _questions(cfg, gc)

    backend = None

    def get_backend():
        nonlocal backend
        if backend is None:
            from crescent.backends import build_backend

            backend = build_backend(cfg.backend, cfg.teacher, cfg.paths.cache_dir, seed=cfg.seed)
        return backend

    workdir = Path(cfg.paths.cache_dir) / "gap" / sample_key(cfg, q["limit"]) if gc["cache"] else out / "chunks"
    workdir.mkdir(parents=True, exist_ok=True)
    t_sample = time.perf_counter()
    responses = _sample(cfg, q["prompts"], q["ids"], workdir, get_backend)
    t_sample = time.perf_counter() - t_sample
    answers = [[extract_answer(r) for r in rs] for rs in responses]
    correct = [[answers_equal(a, g) for a in row] for row, g in zip(answers, q["golds"])]
    items = [{"id": i, "question": text, "responses": rs, "answers": a}
             for i, text, rs, a in zip(q["ids"], q["questions"], responses, answers)]
    t_verify = time.perf_counter()
    vres = _verify(cfg, vcfg, items, backend, get_backend)
    t_verify = time.perf_counter() - t_verify

    ks = [int(k) for k in gc["pass_k"]]
    metrics = gm.sample_metrics(correct, answers, q["golds"], ks)
    gap = gm.gap_metrics(correct, vres.kept, gc["perfect_question_policy"], gc["empty_keep_policy"])
    per_q = gap.pop("per_question")
    if vname != "none":
        metrics.update({k: v for k, v in gap.items() if k != "acc_all"})
        metrics["invalid_judgements"] = vres.counts.get("invalid", 0)
    metrics = {k: v for k, v in metrics.items() if v is not None}
    bench = gc["benchmark"]
    result = {
        "model": cfg.teacher.name,
        "benchmark": bench.get("path") if bench.get("loader") == "file" else bench.get("loader"),
        "questions": len(items),
        "questions_without_gold": q["no_gold"],
        "verifier": {"name": vname, "filter": describe_filter(vcfg)},
        "settings": {**{k: gc[k] for k in ("n_samples", "temperature", "top_p", "max_new_tokens", "num_fewshot", "chat",
                                           "pass_k", "perfect_question_policy", "empty_keep_policy")},
                     "limit": q["limit"]},
        "metrics": metrics,
        "verify_counts": vres.counts,
        "notes": _notes(gc, vname, [k for k in ks if k > int(gc["n_samples"])]),
        "timings_s": {"sample": round(t_sample, 2), "verify": round(t_verify, 2),
                      "total": round(time.perf_counter() - t0, 2)},
        "samples_cache": str(workdir),
        "verify_config": vcfg,
    }
    rows = [{"id": it["id"], "question": it["question"], "gold": g, "responses": it["responses"],
             "extracted": it["answers"], "correct": c, "scores": sc, "kept": k, "J": t["J"], "J_f": t["J_f"],
             "relative_gap": t["relative"], "verifier": d}
            for it, g, c, sc, k, t, d in zip(items, q["golds"], correct, vres.scores, vres.kept, per_q, vres.details)]
    table = _write(out, result, rows, vres.rejections, tracker)
    return {"metrics": metrics, "results": str(out / "results.json"), "summary": table,
            "wall_s": result["timings_s"]["total"]}
