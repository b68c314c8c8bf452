"""The gap table: markdown (gap/summary.md) and a rich table on the console."""
from __future__ import annotations

from typing import Any, Mapping

LABELS = {
    "acc_all": "J: accuracy of all samples",
    "acc_filtered": "J_f: accuracy of kept samples",
    "gap": "gap = J_f - J",
    "relative_gap": "relative gap (mean over questions)",
    "kept_fraction": "kept fraction",
    "questions_nothing_kept": "questions with nothing kept",
    "acc_filtered_pooled": "kept samples correct (pooled)",
    "invalid_judgements": "invalid judgements",
    "majority_gain": "majority-vote gain (maj@n - J)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def summary_rows(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    m = result["metrics"]
    rows = [(LABELS["acc_all"], _fmt(m.get("acc_all")))]
    if result["verifier"]["name"] != "none":
        rel_n = m.get("relative_gap_questions")
        for key in ("acc_filtered", "gap", "relative_gap", "kept_fraction", "questions_nothing_kept",
                    "acc_filtered_pooled", "invalid_judgements"):
            label = LABELS[key] + (f" ({rel_n} questions)" if key == "relative_gap" else "")
            rows.append((label, _fmt(m.get(key))))
    rows += [(k, _fmt(v)) for k, v in m.items() if k.startswith(("pass@", "maj@"))]
    rows.append((LABELS["majority_gain"], _fmt(m.get("majority_gain"))))
    return rows


def title(result: Mapping[str, Any]) -> str:
    v, s = result["verifier"], result["settings"]
    filt = "" if v["name"] == "none" else f" ({v['filter']})"
    return (f"gap: {result['model']} on {result['benchmark']}, {result['questions']} questions x "
            f"{s['n_samples']} samples, verifier {v['name']}{filt}")


def markdown(result: Mapping[str, Any]) -> str:
    lines = [f"# {title(result)}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(result)]
    lines += ["", *[f"- {n}" for n in result.get("notes", [])], ""]
    return "\n".join(lines)


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title(result))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary_rows(result):
        t.add_row(k, v)
    console = Console()
    console.print(t)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
