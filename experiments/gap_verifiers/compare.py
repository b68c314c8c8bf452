#!/usr/bin/env python
"""Tabulate a stages=[gap] sweep: one row per job (model x verifier x filter), Mind the Gap's columns.

  python experiments/gap_verifiers/compare.py multirun/gap_verifiers

Reads every <job>/gap/results.json under the directory (jobs without one are listed with their
status.json error), prints a markdown table sorted by model then relative gap, and writes
gap_compare.md and gap_compare.csv into the directory (or --out).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

COLUMNS = ["job", "model", "verifier", "filter", "questions", "n", "J", "J_f", "gap", "relative_gap",
           "kept", "invalid", "pass@1", "maj@n"]


def row(job: str, result: dict) -> dict:
    m, n = result["metrics"], result["settings"]["n_samples"]
    return {"job": job, "model": result["model"], "verifier": result["verifier"]["name"],
            "filter": result["verifier"].get("filter") or "", "questions": result["questions"], "n": n,
            "J": m.get("acc_all"), "J_f": m.get("acc_filtered"), "gap": m.get("gap"),
            "relative_gap": m.get("relative_gap"), "kept": m.get("kept_fraction"),
            "invalid": m.get("invalid_judgements"), "pass@1": m.get("pass@1"), "maj@n": m.get(f"maj@{n}")}


def collect(root: Path) -> tuple[list[dict], list[str]]:
    rows, failed = [], []
    for path in sorted(root.rglob("gap/results.json")):
        rows.append(row(str(path.parent.parent.relative_to(root)), json.loads(path.read_text())))
    for status in sorted(root.rglob("status.json")):
        job = status.parent
        if not (job / "gap" / "results.json").is_file():
            s = json.loads(status.read_text())
            failed.append(f"{job.relative_to(root)}: {s.get('status')} {s.get('error') or ''}".strip())
    rows.sort(key=lambda r: (r["model"], -(r["relative_gap"] if r["relative_gap"] is not None else float("-inf"))))
    return rows, failed


def _cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir", help="a Hydra multirun dir (or any dir holding */gap/results.json)")
    p.add_argument("--out", help="where to write gap_compare.{md,csv} (default: sweep_dir)")
    args = p.parse_args(argv)
    root = Path(args.sweep_dir)
    rows, failed = collect(root)
    if not rows and not failed:
        print(f"no gap/results.json under {root}", file=sys.stderr)
        return 1
    text = to_markdown(rows)
    if failed:
        text += "\n\nfailed or unfinished jobs:\n" + "\n".join(f"- {f}" for f in failed)
    out = Path(args.out or root)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gap_compare.md").write_text(f"# {root}\n\n{text}\n")
    (out / "gap_compare.csv").write_text(to_csv(rows))
    print(text)
    print(f"wrote {out / 'gap_compare.md'}, {out / 'gap_compare.csv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
