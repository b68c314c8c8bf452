#!/usr/bin/env python
"""Re-launch exactly the failed or unfinished jobs of a sweep, each in its own job dir with its own
overrides (finished stages are reused: synthetic data from the cache, eval units already scored).

  python experiments/rerun_failed.py multirun/2026-11-22/10-00-00            # run them, one after another
  python experiments/rerun_failed.py multirun/... --dry-run                  # print the commands
  python experiments/rerun_failed.py multirun/... --resume                   # + train.resume=true
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from crescent.aggregate import load_multirun, rerun_command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_dir")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--resume", action="store_true", help="continue training from the job's last checkpoint")
    args = p.parse_args(argv)
    failed = [j for j in load_multirun(args.sweep_dir) if j.status != "ok"]
    if not failed:
        print("no failed jobs")
        return 0
    worst = 0
    for job in failed:
        cmd = rerun_command(job, resume=args.resume)
        print(f"[{job.status}] {job.error}\n  $ {shlex.join(cmd)}", flush=True)
        if not args.dry_run:
            worst = max(worst, subprocess.run(cmd).returncode)
    return worst


if __name__ == "__main__":
    sys.exit(main())
