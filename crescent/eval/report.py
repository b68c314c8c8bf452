"""Before/after tables (markdown), a bar chart, and the flat metric names logged to W&B."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

MODEL_ORDER = ("base", "trained")


def score_name(row: dict) -> str:
    """'strict-match' for a filtered generation score (exact_match), 'strict-match/math_equal' for its other
    metrics, the metric ('acc', 'acc_norm', 'solved') when nothing was filtered."""
    if row["filter"] == "none":
        return row["metric"]
    return row["filter"] if row["metric"] == "exact_match" else f"{row['filter']}/{row['metric']}"


def task_label(row: dict, several_shots: bool) -> str:
    return f"{row['task']}_{row['num_fewshot']}shot" if several_shots else row["task"]


def _several_shots(rows: list[dict]) -> bool:
    return len({r["num_fewshot"] for r in rows}) > 1


def metric_label_choices(shots_by_task: dict[str, list[int]]) -> dict[str, tuple[str, int]]:
    """{W&B task label: (task, shots)} that metric_dict will produce for these benchmarks and shot counts:
    '<task>' when every benchmark is scored at one shot count, '<task>_<k>shot' when several are in play."""
    several = len({k for ks in shots_by_task.values() for k in ks}) > 1
    return {task_label({"task": t, "num_fewshot": k}, several): (t, k) for t, ks in shots_by_task.items() for k in ks}


def resolve_metric_name(name: str, shots_by_task: dict[str, list[int]]) -> str:
    """An eval metric name '<task>[_<k>shot]/<score>' (optionally 'base/' or 'delta/' first) as metric_dict names it
    for this shot plan: '<task>_<k>shot/...' is accepted when k is the only shot count (then named '<task>/...');
    '<task>/...' with several shot counts, an unknown task or shot count raise ValueError naming the choices."""
    prefix, rest = "", name
    for p in ("base/", "delta/"):
        if rest.startswith(p):
            prefix, rest = p, rest[len(p):]
    label, _, score = rest.partition("/")
    choices = metric_label_choices(shots_by_task)
    if not score:
        raise ValueError(f"{name!r} has no score: expected '<task>/<score>', e.g. "
                         f"'{next(iter(choices), 'gsm8k')}/flexible-extract'")
    if label in choices:
        return name
    task, shots = label, None
    head, _, tail = label.rpartition("_")
    if head and tail.endswith("shot") and tail[:-4].isdigit():
        task, shots = head, int(tail[:-4])
    ks = shots_by_task.get(task)
    if ks is not None and shots in ks:  # '<task>_<k>shot' where k is the only shot count
        return prefix + task + "/" + score
    if ks is None:
        raise ValueError(f"{name!r}: no benchmark {task!r} is scored (eval.tasks / eval.benchmarks: "
                         f"{sorted(shots_by_task)})")
    options = sorted(prefix + c + "/" + score for c, (t, _) in choices.items() if t == task)
    raise ValueError(f"{name!r}: {task} is scored at {ks} shots, so its metrics are named {options}")


def metric_dict(rows: list[dict]) -> dict[str, float]:
    """W&B names: '<task>/<filter or metric>' for the final model (trained if scored, else base), and
    'base/<task>/<...>' and 'delta/<task>/<...>' when both were scored."""
    several = _several_shots(rows)
    by_model: dict[str, dict[str, float]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[f"{task_label(r, several)}/{score_name(r)}"] = r["value"]
    if "trained" not in by_model or "base" not in by_model:
        return {k: v for scores in by_model.values() for k, v in scores.items()}
    out = dict(by_model["trained"])
    for key, value in by_model["base"].items():
        out[f"base/{key}"] = value
        if key in by_model["trained"]:
            out[f"delta/{key}"] = by_model["trained"][key] - value
    return out


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    err = f" ± {100 * row['stderr']:.1f}" if row.get("stderr") is not None else ""
    return f"{100 * row['value']:.1f}{err}"


def summary_rows(rows: Iterable[dict]) -> tuple[list[str], list[list[str]]]:
    """(models, table rows): one row per benchmark x shots x score, one column per model, then delta."""
    rows = list(rows)
    models = [m for m in MODEL_ORDER if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models))
    index = {(r["task"], r["num_fewshot"], score_name(r), r["model"]): r for r in rows}
    keys = sorted({k[:3] for k in index}, key=lambda k: (k[0], k[1], k[2]))
    table = []
    for task, shots, score in keys:
        cells = [index.get((task, shots, score, m)) for m in models]
        n = next((c["n"] for c in cells if c), "")
        line = [task, str(shots), score, str(n)] + [_cell(c) for c in cells]
        if len(models) >= 2 and cells[0] and cells[1]:
            line.append(f"{100 * (cells[1]['value'] - cells[0]['value']):+.1f}")
        table.append(line)
    return models, table


def markdown(result: dict) -> str:
    models, table = summary_rows(result["rows"])
    header = ["benchmark", "shots", "score", "n"] + [f"{m} (%)" for m in models] + (["Δ (pts)"] if len(models) >= 2 else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    s = result["settings"]
    names = ", ".join(f"{tag} = {m['name']}" for tag, m in result["models"].items())
    notes = (f"\n\nModels: {names}. lm-eval {result['lm_eval_version']}; limit={s.get('limit')}, "
             f"chat template={s.get('apply_chat_template')}, max_gen_toks={s.get('max_gen_toks')}, "
             f"dtype={s.get('dtype')}. Scores in %, ± one standard error.\n")
    return "\n".join(lines) + notes


def bar_chart(result: dict, path: Path) -> Path | None:
    """Grouped bars: one group per benchmark/shots/score, one bar per model, with stderr whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, table = summary_rows(result["rows"])
    if not table:
        return None
    index = {(r["task"], str(r["num_fewshot"]), score_name(r), r["model"]): r for r in result["rows"]}
    labels = [f"{t}\n{k}-shot {s}" for t, k, s, *_ in table]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(table) + 1), 3.8))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        cells = [index.get((t, k, s, m)) for t, k, s, *_ in table]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(table))]
        ys = [100 * c["value"] if c else 0 for c in cells]
        errs = [100 * (c.get("stderr") or 0) if c else 0 for c in cells]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=m)
    ax.set_xticks(range(len(table)), labels, fontsize=8)
    ax.set_ylabel("score (%)")
    names = " vs ".join(result["models"][m]["name"] for m in models if m in result["models"])
    ax.set_title(f"{names} (limit={result['settings'].get('limit')})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(result: dict, out_dir: Path) -> str:
    text = markdown(result)
    (Path(out_dir) / "summary.md").write_text("# crescent eval\n\n" + text, encoding="utf-8")
    bar_chart(result, Path(out_dir) / "summary.png")
    return text
