#!/usr/bin/env python
"""Aggregate a sweep into one paper-style table (markdown + CSV) and a plot.

  python experiments/aggregate.py multirun/2026-11-22/10-00-00            # a Hydra multirun dir
  python experiments/aggregate.py multirun/... --x voting.k               # plot score vs voting.k
  python experiments/aggregate.py wandb:my-entity/crescent/smoke/2026-11-22-10-00-00   # a W&B group

Writes aggregate.md, aggregate.csv and aggregate.png into the sweep dir (or --out) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crescent.aggregate import build_table, load_multirun, load_wandb, numeric_keys, plot, to_csv, to_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="multirun dir, or wandb:ENTITY/PROJECT/GROUP")
    p.add_argument("--score", default="flexible-extract",
                   help="filter reported for generation tasks (strict-match, flexible-extract, ...)")
    p.add_argument("--mc-metric", default="acc", choices=["acc", "acc_norm"], help="metric for multiple choice")
    p.add_argument("--x", help="numeric override to plot on the x axis (default: the only numeric swept key)")
    p.add_argument("--out", help="where to write aggregate.{md,csv,png} (default: the sweep dir, or . for W&B)")
    args = p.parse_args(argv)

    wandb_source = args.source.startswith("wandb:")
    jobs = load_wandb(args.source[len("wandb:"):]) if wandb_source else load_multirun(args.source)
    table = build_table(jobs, score=args.score, mc_metric=args.mc_metric)
    out = Path(args.out or ("." if wandb_source else args.source))
    out.mkdir(parents=True, exist_ok=True)
    text = to_markdown(table)
    (out / "aggregate.md").write_text(f"# {args.source}\n\n{text}")
    (out / "aggregate.csv").write_text(to_csv(table))
    xs = [args.x] if args.x else numeric_keys(jobs, table["keys"])
    png = plot(jobs, table, xs[0], out / "aggregate.png") if len(xs) == 1 else None
    print(text)
    print(f"wrote {out / 'aggregate.md'}, {out / 'aggregate.csv'}" + (f", {png}" if png else ""))
    return 1 if table["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
