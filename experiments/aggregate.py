#!/usr/bin/env python
"""Aggregate one or several sweeps into one paper-style table (markdown + CSV) and a plot.

  python experiments/aggregate.py multirun/2026-11-22/10-00-00            # a Hydra multirun dir
  python experiments/aggregate.py multirun/... --x voting.k               # plot score vs voting.k
  python experiments/aggregate.py wandb:my-entity/crescent/smoke/2026-11-22-10-00-00   # a W&B group
  python experiments/aggregate.py main=multirun/A ablation=multirun/B wandb:ent/crescent/grp --out cmp/

One source: aggregate.{md,csv,png} go into the sweep dir (or --out). Several sources (each `label=path`, or a
path whose folder name is its label): one table with a `source` column, the base model's row once (for every
sweep that scored it the same), and one plot with a line per source; written to --out (default: .).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crescent.aggregate import (build_table, combined_markdown, combined_table, load_sources, numeric_keys, plot,
                                plot_sources, to_csv, to_markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="[LABEL=]SOURCE",
                   help="multirun dir, or wandb:ENTITY/PROJECT/GROUP; optionally labelled LABEL=SOURCE")
    p.add_argument("--score", default="flexible-extract",
                   help="filter reported for generation tasks (strict-match, flexible-extract, ...)")
    p.add_argument("--mc-metric", default="acc", choices=["acc", "acc_norm"], help="metric for multiple choice")
    p.add_argument("--x", help="numeric override to plot on the x axis (default: each source's only numeric swept key)")
    p.add_argument("--out", help="where to write aggregate.{md,csv,png} (default: the sweep dir for one multirun "
                                 "dir, else .)")
    args = p.parse_args(argv)

    sources = load_sources(args.sources)
    if len(sources) == 1 and "=" not in args.sources[0].split("/", 1)[0]:
        return _one(sources[0], args)
    df, failed = combined_table(sources, score=args.score, mc_metric=args.mc_metric)
    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    text = combined_markdown(df, failed, args.score, args.mc_metric)
    names = ", ".join(f"{s.label} = {s.path}" for s in sources)
    (out / "aggregate.md").write_text(f"# {names}\n\n{text}")
    df.to_csv(out / "aggregate.csv", index=False)
    png = plot_sources(sources, args.x, out / "aggregate.png", args.score, args.mc_metric)
    print(text)
    print(f"wrote {out / 'aggregate.md'}, {out / 'aggregate.csv'}" + (f", {png}" if png else ""))
    return 1 if failed else 0


def _one(source, args) -> int:
    jobs = source.jobs
    table = build_table(jobs, score=args.score, mc_metric=args.mc_metric)
    wandb_source = source.path.startswith("wandb:")
    out = Path(args.out or ("." if wandb_source else source.path))
    out.mkdir(parents=True, exist_ok=True)
    text = to_markdown(table)
    (out / "aggregate.md").write_text(f"# {source.path}\n\n{text}")
    (out / "aggregate.csv").write_text(to_csv(table))
    xs = [args.x] if args.x else numeric_keys(jobs, table["keys"])
    png = plot(jobs, table, xs[0], out / "aggregate.png") if len(xs) == 1 else None
    print(text)
    print(f"wrote {out / 'aggregate.md'}, {out / 'aggregate.csv'}" + (f", {png}" if png else ""))
    return 1 if table["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
