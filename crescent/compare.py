"""Paired comparison of two runs: per task x shots x score, the difference B - A of the mean per-document score
over the documents both runs scored, with a paired bootstrap confidence interval (documents resampled with
replacement, the same draw for both runs). Reads eval/samples_<model>_<task>_<k>shot.jsonl of each run."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SAMPLES = re.compile(r"^samples_(?P<model>base|trained)_(?P<task>.+)_(?P<shots>\d+)shot\.jsonl$")
MC_METRICS = ("acc", "acc_norm")


def _samples_dir(run: str | Path) -> Path:
    run = Path(run)
    d = run / "eval" if (run / "eval").is_dir() else run
    if not any(SAMPLES.match(p.name) for p in d.glob("samples_*.jsonl")):
        raise FileNotFoundError(f"no eval/samples_<model>_<task>_<k>shot.jsonl under {run} "
                                "(run the eval stage with eval.log_samples=true)")
    return d


def load_scores(run: str | Path, model: str) -> dict[tuple[str, int, str], dict[int, float]]:
    """{(task, shots, score): {doc_id: value}} of one model's samples; score = '<filter>' for exact_match,
    '<filter>/<metric>' for another metric, the metric itself (acc, acc_norm) for multiple choice."""
    out: dict[tuple[str, int, str], dict[int, float]] = {}
    for path in sorted(_samples_dir(run).glob("samples_*.jsonl")):
        m = SAMPLES.match(path.name)
        if not m or m["model"] != model:
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            s = json.loads(line)
            for filt, scores in (s.get("filters") or {}).items():
                for metric, value in scores.items():
                    if metric == "extracted" or not isinstance(value, (int, float)) or isinstance(value, bool):
                        continue
                    name = metric if filt == "none" else filt if metric == "exact_match" else f"{filt}/{metric}"
                    out.setdefault((s["task"], int(s["num_fewshot"]), name), {})[int(s["doc_id"])] = float(value)
    return out


def models_in(run: str | Path) -> set[str]:
    return {m["model"] for p in _samples_dir(run).glob("samples_*.jsonl") if (m := SAMPLES.match(p.name))}


@dataclass
class Diff:
    task: str
    shots: int
    score: str
    n: int          # documents both runs scored
    a: float        # mean of run A over them
    b: float
    diff: float     # b - a
    lo: float       # paired bootstrap CI of diff
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(b) - mean(a), lo, hi): percentile interval over n_boot resamples of the paired differences."""
    import numpy as np

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size == 0:
        raise ValueError("no shared documents to compare")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), float(lo), float(hi)


def compare(run_a: str | Path, run_b: str | Path, model_a: str | None = None, model_b: str | None = None,
            n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95) -> list[Diff]:
    """One Diff per (task, shots, score) both runs scored, over their shared doc ids. model_*: which model's
    samples (base | trained); default the trained model where the run scored it, else the base model."""
    model_a = model_a or ("trained" if "trained" in models_in(run_a) else "base")
    model_b = model_b or ("trained" if "trained" in models_in(run_b) else "base")
    sa, sb = load_scores(run_a, model_a), load_scores(run_b, model_b)
    shared = sorted(set(sa) & set(sb))
    if not shared:
        raise LookupError(f"{run_a} ({model_a}) and {run_b} ({model_b}) share no task x shots x score: "
                          f"{sorted(sa)} vs {sorted(sb)}")
    out = []
    for key in shared:
        docs = sorted(set(sa[key]) & set(sb[key]))
        if not docs:
            continue
        a, b = [sa[key][d] for d in docs], [sb[key][d] for d in docs]
        diff, lo, hi = paired_bootstrap(a, b, n_boot=n_boot, seed=seed, confidence=confidence)
        out.append(Diff(key[0], key[1], key[2], len(docs), sum(a) / len(a), sum(b) / len(b), diff, lo, hi))
    return out


def to_markdown(diffs: list[Diff], label_a: str = "A", label_b: str = "B", confidence: float = 0.95) -> str:
    pct = f"{100 * confidence:g}%"
    lines = [f"| task | shots | score | docs | {label_a} (%) | {label_b} (%) | {label_b} − {label_a} (pts) | {pct} CI "
             "| excludes 0 |", "|---|---|---|---|---|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d.task} | {d.shots} | {d.score} | {d.n} | {100 * d.a:.1f} | {100 * d.b:.1f} | "
                     f"{100 * d.diff:+.1f} | [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}] | "
                     f"{'yes' if d.excludes_zero else 'no'} |")
    return "\n".join(lines) + "\n"
