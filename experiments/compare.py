#!/usr/bin/env python
"""Difference between two runs with a paired bootstrap CI over the documents both scored.

  python experiments/compare.py outputs/A outputs/B                       # trained model of each (else base)
  python experiments/compare.py outputs/A outputs/B --model-a base        # A's base model vs B's trained model
  python experiments/compare.py multirun/X/0_... multirun/X/3_... --n-boot 2000 --seed 1 --confidence 0.9

Per task x shots x score: the mean per-document score of each run over the shared doc ids, B − A, and the
percentile CI of B − A from --n-boot resamples of the documents (the same draw for both runs: paired; seeded).
Reads each run's eval/samples_<model>_<task>_<k>shot.jsonl (written when eval.log_samples=true).
"""
from __future__ import annotations

import argparse
import sys

from crescent.compare import compare, to_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", help="run dir (or its eval/ dir) of the reference run")
    p.add_argument("run_b", help="run dir of the run compared with it")
    p.add_argument("--model-a", choices=["base", "trained"], help="model of run A (default: trained, else base)")
    p.add_argument("--model-b", choices=["base", "trained"], help="model of run B (default: trained, else base)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the interval")
    args = p.parse_args(argv)
    if args.n_boot < 1 or not 0 < args.confidence < 1:
        p.error("--n-boot must be >= 1 and --confidence in (0, 1)")
    diffs = compare(args.run_a, args.run_b, args.model_a, args.model_b, n_boot=args.n_boot, seed=args.seed,
                    confidence=args.confidence)
    print(f"A = {args.run_a}\nB = {args.run_b}\n")
    print(to_markdown(diffs, confidence=args.confidence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
