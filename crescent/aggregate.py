"""Collect the jobs of a sweep (a multirun dir or a W&B group) into one paper-style table.

Rows are configurations (the overrides that vary across jobs, seeds left out), columns are
benchmark x shots; cells are mean ± std over seeds. Base-model scores get their own row per student.
Failed or unfinished jobs are listed with their error (experiments/rerun_failed.py relaunches them).
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SEED_KEYS = ("seed", "train.seed")
MC_METRICS = ("acc", "acc_norm")


@dataclass
class Job:
    dir: str
    overrides: list[str]
    status: str  # ok | failed | running | missing
    error: str | None = None
    rows: list[dict] = field(default_factory=list)  # eval/results.json rows
    counts: dict = field(default_factory=dict)  # synth manifest counts
    student: str | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides if "=" in o)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _overrides(job_dir: Path) -> list[str]:
    import yaml

    try:
        return [str(o) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


def _student(job_dir: Path) -> str | None:
    import yaml

    try:
        cfg = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (cfg.get("student") or {}).get("name")


def load_job(job_dir: Path) -> Job:
    status = _read(job_dir / "status.json")
    if status is None:
        state, error = "missing", "no status.json: the job never started its stages (killed, or crashed in Hydra)"
    else:
        state = status.get("status", "missing")
        error = status.get("error") or ("stopped while running (killed?)" if state == "running" else None)
    results = _read(job_dir / "eval" / "results.json") or {}
    manifest = _read(job_dir / "synth" / "manifest.json") or {}
    return Job(str(job_dir), _overrides(job_dir), state, error, results.get("rows", []),
               manifest.get("counts", {}), _student(job_dir))


def load_multirun(sweep_dir: str | Path) -> list[Job]:
    """Every job under a Hydra sweep dir (any folder holding .hydra/overrides.yaml), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory")
    dirs = sorted({p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}, key=_job_order)
    if not dirs:
        raise FileNotFoundError(f"no Hydra jobs (.hydra/overrides.yaml) under {sweep_dir}")
    return [load_job(d) for d in dirs]


def _job_order(path: Path) -> tuple:
    head = path.name.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (math.inf, path.name)


def rows_from_wandb_summary(summary: dict, default_shots: int = 0) -> list[dict]:
    """Eval rows rebuilt from W&B summary keys eval/<task>[_<k>shot]/<score> and eval/base/..."""
    rows = []
    for key, value in summary.items():
        parts = key.split("/")
        if parts[0] != "eval" or not isinstance(value, (int, float)) or len(parts) < 3 or parts[1] in ("delta", "samples"):
            continue
        model = "base" if parts[1] == "base" and len(parts) == 4 else "trained"
        task, score = parts[-2], parts[-1]
        shots = default_shots
        if "_" in task and task.endswith("shot") and task.rsplit("_", 1)[1][:-4].isdigit():
            task, shots = task.rsplit("_", 1)[0], int(task.rsplit("_", 1)[1][:-4])
        mc = score in MC_METRICS
        rows.append({"model": model, "task": task, "num_fewshot": shots, "filter": "none" if mc else score,
                     "metric": score if mc else "exact_match", "value": float(value), "stderr": None, "n": None})
    return rows


def load_wandb(path: str) -> list[Job]:
    """Jobs of a W&B group: 'entity/project/group' (needs network and a W&B login)."""
    import wandb

    entity, project, group = path.split("/", 2)
    jobs = []
    for run in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        cfg = dict(run.config)
        shots = (cfg.get("eval") or {}).get("num_fewshot", 0)
        shots = shots[0] if isinstance(shots, list) and len(shots) == 1 else shots if isinstance(shots, int) else 0
        status = {"finished": "ok", "running": "running"}.get(run.state, "failed")
        jobs.append(Job(run.url, list((cfg.get("crescent") or {}).get("overrides") or []), status,
                        None if status == "ok" else f"W&B state {run.state}",
                        rows_from_wandb_summary(dict(run.summary), shots),
                        {k.split("/", 1)[1]: v for k, v in run.summary.items() if k.startswith("generate/")},
                        (cfg.get("student") or {}).get("name")))
    if not jobs:
        raise LookupError(f"no W&B runs in group {group!r} of {entity}/{project}")
    return jobs


def varying_keys(jobs: Iterable[Job]) -> list[str]:
    """Override keys whose value differs between jobs (or that only some jobs set), in first-seen order."""
    jobs = list(jobs)
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if len({j.params.get(k) for j in jobs}) > 1]


def label(job: Job, keys: list[str]) -> str:
    parts = [f"{k}={job.params.get(k, '-')}" for k in keys if k not in SEED_KEYS]
    return " ".join(parts) or "(all jobs)"


def _score_rows(job: Job, score: str, mc_metric: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(model, column): value} with column 'task k-shot', keeping one score per task."""
    out: dict[tuple[str, str], float] = {}
    for r in job.rows:
        wanted = r["metric"] == mc_metric if r["filter"] == "none" else r["filter"] == score
        if wanted:
            out[(r["model"], f"{r['task']} {r['num_fewshot']}-shot")] = r["value"]
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def build_table(jobs: list[Job], score: str = "flexible-extract", mc_metric: str = "acc") -> dict:
    """{columns, rows: [{label, n, cells: {column: (mean, std)}, questions, sft_rows}], failed: [Job]}."""
    ok = [j for j in jobs if j.status == "ok"]
    keys = varying_keys(jobs)
    groups: dict[str, list[Job]] = {}
    for j in ok:
        groups.setdefault(label(j, keys), []).append(j)
    columns: list[str] = []
    rows = []
    base: dict[str, dict[str, list[float]]] = {}
    for name, members in groups.items():
        cells: dict[str, list[float]] = {}
        for j in members:
            scores = _score_rows(j, score, mc_metric)
            final = "trained" if any(m == "trained" for m, _ in scores) else "base"
            for (model, col), v in scores.items():
                columns.append(col)
                if model == final:
                    cells.setdefault(col, []).append(v)
                if model == "base" and final == "trained":
                    base.setdefault(j.student or "student", {}).setdefault(col, []).append(v)
        rows.append({"label": name, "n": len(members), "cells": {c: mean_std(v) for c, v in cells.items()},
                     "questions": _mean([j.counts.get("accepted") for j in members]),
                     "sft_rows": _mean([j.counts.get("kept") for j in members])})
    base_rows = [{"label": f"base: {student}", "n": len(next(iter(c.values()), [])),
                  "cells": {col: mean_std(v) for col, v in c.items()}, "questions": None, "sft_rows": None}
                 for student, c in base.items()]
    return {"columns": sorted(set(columns), key=_column_order), "rows": base_rows + rows,
            "failed": [j for j in jobs if j.status != "ok"], "keys": keys, "score": score, "mc_metric": mc_metric}


def _mean(values: list) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(nums) if nums else None


def _column_order(col: str) -> tuple:
    task, shots = col.rsplit(" ", 1)
    return (task, int(shots.split("-")[0]))


def _fmt(cell: tuple[float, float | None] | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    header = ["configuration", "runs", "questions", "SFT rows"] + [f"{c} (%)" for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in table["rows"]:
        nums = ["–" if r[k] is None else f"{r[k]:.0f}" for k in ("questions", "sft_rows")]
        lines.append("| " + " | ".join([r["label"], str(r["n"]), *nums, *(_fmt(r["cells"].get(c)) for c in cols)]) + " |")
    text = "\n".join(lines)
    text += (f"\n\nScores: `{table['score']}` for generation tasks, `{table['mc_metric']}` for multiple choice; "
             "mean ± std over runs (seeds), in %. Rows `base:` are the untrained student.\n")
    if table["failed"]:
        text += "\nFailed or unfinished jobs (rerun with `python experiments/rerun_failed.py <sweep dir>`):\n\n"
        text += "\n".join(f"- `{Path(j.dir).name}` ({j.status}): {' '.join(j.overrides)} — {j.error}"
                          for j in table["failed"]) + "\n"
    return text


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["configuration", "runs", "questions", "sft_rows"] + [f"{c} {s}" for c in table["columns"] for s in ("mean", "std")])
    for r in table["rows"]:
        cells = [v for c in table["columns"] for v in (r["cells"].get(c) or (None, None))]
        w.writerow([r["label"], r["n"], r["questions"], r["sft_rows"], *cells])
    return buf.getvalue()


def plot(jobs: list[Job], table: dict, x: str, path: Path) -> Path | None:
    """Score vs the numeric override `x` (mean ± std over seeds), one line per benchmark column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, dict[float, list[float]]] = {}
    for j in jobs:
        if j.status != "ok" or x not in j.params:
            continue
        try:
            xv = float(j.params[x])
        except ValueError:
            return None
        scores = _score_rows(j, table["score"], table["mc_metric"])
        final = "trained" if any(m == "trained" for m, _ in scores) else "base"
        for (model, col), v in scores.items():
            if model == final:
                points.setdefault(col, {}).setdefault(xv, []).append(v)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for col, by_x in sorted(points.items()):
        xs = sorted(by_x)
        stats = [mean_std(by_x[v]) for v in xs]
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * (s or 0) for _, s in stats], marker="o", capsize=3,
                    label=col)
    ax.set_xlabel(x)
    ax.set_ylabel(f"score (%), {table['score']} / {table['mc_metric']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def numeric_keys(jobs: list[Job], keys: list[str]) -> list[str]:
    def numeric(v: str | None) -> bool:
        try:
            float(v)  # type: ignore[arg-type]
            return True
        except (TypeError, ValueError):
            return False

    return [k for k in keys if k not in SEED_KEYS and all(numeric(j.params.get(k)) for j in jobs if j.status == "ok")]


def rerun_command(job: Job, resume: bool = False) -> list[str]:
    """The single-run command that redoes one job in its own directory, with its own overrides."""
    extra = ["train.resume=true"] if resume else []
    quoted = "'" + job.dir.replace("\\", "\\\\").replace("'", "\\'") + "'"  # job dirs hold '=' and ','
    return ["crescent", *job.overrides, *extra, "hydra.mode=RUN", f"hydra.run.dir={quoted}"]


# ------------------------------------------------------------------------------------------ several sources
@dataclass
class Source:
    """One sweep to compare: a multirun dir or 'wandb:ENTITY/PROJECT/GROUP', with its label in the table."""
    label: str
    path: str
    jobs: list[Job]


def parse_source(spec: str) -> tuple[str, str]:
    """'label=path' or 'path' (label: the folder name, or the W&B group) -> (label, path)."""
    head, sep, tail = spec.partition("=")
    if sep and head and not Path(spec).exists() and "/" not in head and not head.startswith("wandb:"):
        return head, tail
    name = spec[len("wandb:"):].rstrip("/").rsplit("/", 1)[-1] if spec.startswith("wandb:") else Path(spec).name
    return name or spec, spec


def load_source(spec: str) -> Source:
    name, path = parse_source(spec)
    jobs = load_wandb(path[len("wandb:"):]) if path.startswith("wandb:") else load_multirun(path)
    return Source(name, path, jobs)


def load_sources(specs: list[str]) -> list[Source]:
    sources = [load_source(s) for s in specs]
    labels = [s.label for s in sources]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"two sources share the label(s) {dup}: name them, e.g. main={sources[0].path}")
    return sources


def combined_table(sources: list[Source], score: str = "flexible-extract", mc_metric: str = "acc"):
    """One pandas DataFrame over every source: a row per (source, configuration) and one row per base model
    (a base model scored the same in several sweeps is listed once, its `source` naming them all); columns
    'source', 'configuration', 'runs', 'questions', 'sft_rows', then '<task> <k>-shot' and '<...> std'.
    Also returns the failed jobs as (source label, Job)."""
    import pandas as pd

    records, base, failed = [], {}, []
    for src in sources:
        table = build_table(src.jobs, score=score, mc_metric=mc_metric)
        failed += [(src.label, j) for j in table["failed"]]
        for r in table["rows"]:
            rec = {"source": src.label, "configuration": r["label"], "runs": r["n"], "questions": r["questions"],
                   "sft_rows": r["sft_rows"]}
            for col, (mean, std) in r["cells"].items():
                rec[col], rec[f"{col} std"] = mean, std
            if r["label"].startswith("base: "):
                # the same base model with the same scores (to 1e-9) is one row, whichever sweeps scored it
                key = (r["label"], tuple(sorted((c, round(m, 9)) for c, (m, _) in r["cells"].items())))
                if key in base:
                    base[key]["source"] += f", {src.label}"
                    base[key]["runs"] += r["n"]
                    continue
                base[key] = rec
            records.append(rec)
    columns = sorted({c for rec in records for c in rec if c not in _META and not c.endswith(" std")},
                     key=_column_order)
    ordered = ["source", "configuration", "runs", "questions", "sft_rows"] + [x for c in columns for x in (c, f"{c} std")]
    df = pd.DataFrame.from_records(records, columns=ordered)
    is_base = df["configuration"].str.startswith("base: ")
    df = pd.concat([df[is_base], df[~is_base]], ignore_index=True)
    return df, failed


_META = ("source", "configuration", "runs", "questions", "sft_rows")


def combined_markdown(df, failed: list[tuple[str, Job]], score: str, mc_metric: str) -> str:
    """The DataFrame as a markdown table: each score 'mean ± std' in %, counts as integers."""
    shown = df[["source", "configuration", "runs"]].copy()
    for k in ("questions", "sft_rows"):
        shown[k.replace("_", " ")] = [("–" if v is None or v != v else f"{v:.0f}") for v in df[k]]
    for col in [c for c in df.columns if c not in _META and not c.endswith(" std")]:
        shown[f"{col} (%)"] = [_fmt(None if m is None or m != m else (m, None if s is None or s != s else s))
                               for m, s in zip(df[col], df[f"{col} std"])]
    cols = [str(c) for c in shown.columns]
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    text = "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|", *body])
    text += (f"\n\nScores: `{score}` for generation tasks, `{mc_metric}` for multiple choice; mean ± std over runs "
             "(seeds), in %. Rows `base:` are the untrained student, listed once for every sweep that scored it "
             "the same.\n")
    if failed:
        text += "\nFailed or unfinished jobs (rerun with `python experiments/rerun_failed.py <sweep dir>`):\n\n"
        text += "\n".join(f"- {label}: `{Path(j.dir).name}` ({j.status}): {' '.join(j.overrides)} — {j.error}"
                          for label, j in failed) + "\n"
    return text


def plot_sources(sources: list[Source], x: str | None, path: Path, score: str = "flexible-extract",
                 mc_metric: str = "acc") -> Path | None:
    """Score vs the swept numeric override (x, or each source's only numeric swept key), one line per source and
    benchmark column; None when no source has a numeric swept key (or matplotlib is not installed)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, dict[float, list[float]]] = {}
    xlabels = []
    for src in sources:
        keys = [x] if x else numeric_keys(src.jobs, varying_keys(src.jobs))
        if len(keys) != 1:
            continue
        key = keys[0]
        for j in src.jobs:
            if j.status != "ok" or key not in j.params:
                continue
            try:
                xv = float(j.params[key])
            except ValueError:
                continue
            scores = _score_rows(j, score, mc_metric)
            final = "trained" if any(m == "trained" for m, _ in scores) else "base"
            for (model, col), v in scores.items():
                if model == final:
                    lines.setdefault(f"{src.label}: {col}", {}).setdefault(xv, []).append(v)
                    xlabels.append(key)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, by_x in sorted(lines.items()):
        xs = sorted(by_x)
        stats = [mean_std(by_x[v]) for v in xs]
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * (s or 0) for _, s in stats], marker="o", capsize=3,
                    label=name)
    ax.set_xlabel(" / ".join(dict.fromkeys(xlabels)))
    ax.set_ylabel(f"score (%), {score} / {mc_metric}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
