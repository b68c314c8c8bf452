"""Crash-safety harness: SIGKILL `python -m crescent` at random points of generate, train and eval, rerun
the same command until it finishes, and compare everything with an uninterrupted run.

    python experiments/perf/chaos.py                  # 12 kills, seed 0, in a temp folder
    python experiments/perf/chaos.py --kills 20 --seed 3 --workdir /tmp/chaos --train-resume false

The run: the random tiny Llama (debug=default) with many small generation units (bait rounds of one
call, answer chunks of one question) and stages=[generate,train,eval]. That model writes no numbers,
so voting keeps no SFT rows; train.data therefore points at tests/data/sft_tiny.jsonl (16 arithmetic
chats) so that training and evaluation (eval=smoke: gsm8k + arc_challenge, 2 documents) do real work.
Training runs with train.resume=auto and a checkpoint every CKPT_EVERY optimizer steps.

Kill points: a seeded plan of target stages (startup, generate, train, eval); each attempt starts the
command, waits until its target stage runs (status.json lists the stages done), then for generate
waits for a random number of its units (bait rounds + answer chunks in the synth cache) and kills
within the next one; for train it waits for a random number (>= 1) of new checkpoints and kills
within the next checkpoint interval; for the others it sleeps a seeded random part of what the
reference run needed for (the rest of) that stage. SIGKILL. After the plan the command is rerun until
it exits 0. Each run's output goes to <workdir>/<name>.log; from it, how its training began (resumed
from the checkpoint of step N, from scratch, or the finished result reused).

Checks against the reference: byte-identical synth rows (questions/sft/answers/rejections.jsonl),
equal manifest counts, the synth cache complete and every JSONL whole, training finished
(train_result.json, hf_export/) with the reference's steps, loss and weights, every train kill that left a
checkpoint followed by a run that resumed from exactly that checkpoint (at least one), equal
eval/results.json rows, status ok.
Prints the kill table and the checks; exit status 0 iff every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from crescent.utils.io import read_json, read_jsonl  # noqa: E402

STAGES = ("generate", "train", "eval")
SYNTH_FILES = ("questions.jsonl", "sft.jsonl", "answers.jsonl", "rejections.jsonl")
TRAIN_DATA = ROOT / "tests" / "data" / "sft_tiny.jsonl"
CKPT_EVERY = 2  # train.checkpoint_every_n_steps: a kill in training loses at most this many steps


def overrides(work: Path, name: str, small: bool = False, train_resume: str = "auto") -> list[str]:
    calls = 6 if small else 16
    return [
        "debug=default", "stages=[generate,train,eval]", "print_config=false",
        # generation: many small units, so kills land between and inside them
        f"sampling.num_questions={4 if small else 8}", "sampling.question.n=4", "questions.calls_per_round=1",
        f"questions.max_calls={calls}", "sampling.answer_chunk=1", "voting.k=2",
        "sampling.question.max_new_tokens=16", "sampling.answer.max_new_tokens=16",
        # training on the fixture chats (the random model keeps no SFT rows of its own)
        f"train.data={TRAIN_DATA}", "train.max_seq_len=96", "train.global_batch_size=4", "train.micro_batch_size=2",
        f"train.epochs={2 if small else 3}", "train.val_fraction=0", "trainer.precision=32-true",
        "trainer.enable_progress_bar=false", f"train.resume={str(train_resume).lower()}",
        f"train.checkpoint_every_n_steps={CKPT_EVERY}",
        "eval=smoke", "eval.limit=2", "eval.max_gen_toks=8", "eval.dtype=float32",
        f"paths.synth_cache={work / name / 'cache'}", f"hydra.run.dir={work / name / 'run'}",
    ]


@dataclass
class Attempt:
    target: str
    stage: str = "-"  # where the process was when killed
    seconds: float = 0.0  # since the attempt started
    progress: str = ""
    outcome: str = ""
    ckpt_step: int = 0  # the step of checkpoints/last.ckpt right after the kill
    train_start: str = ""  # how this run's training began: "step N", "scratch", "reused" ("" = not reached)


def ckpt_step(run_dir: Path) -> int:
    """The optimizer step of the checkpoint last.ckpt links to; 0 when there is none (or it dangles)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    match = re.search(r"step=(\d+)\.ckpt$", os.path.realpath(last))
    return int(match.group(1)) if match and last.exists() else 0


class Job:
    """One `python -m crescent` invocation of the configured run `name` and what it has done so far."""

    def __init__(self, work: Path, name: str, args: list[str]):
        self.run_dir, self.cache = work / name / "run", work / name / "cache"
        self.log_path = work / f"{name}.log"  # stdout (the log lines) and stderr of every run of `name`
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.log = open(self.log_path, "a")
        self.t0 = time.time()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "PYTHONUNBUFFERED": "1"}  # a killed run's log lines are on disk
        self.proc = subprocess.Popen([sys.executable, "-m", "crescent", *args], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def stage(self) -> str:
        """startup (no status of this attempt yet), a stage name, or finished/failed."""
        try:
            status = read_json(self.run_dir / "status.json")
        except (OSError, ValueError):
            return "startup"
        if status.get("started", 0) < self.t0 - 1:
            return "startup"  # an earlier attempt's status
        if status["status"] != "running":
            return "finished" if status["status"] == "ok" else "failed"
        return next((s for s in STAGES if s not in status["done"]), "finished")

    def units(self) -> dict[str, int]:
        count = lambda pattern: len(list(self.cache.glob(pattern)))  # noqa: E731
        return {"rounds": count("*/rounds/*.json"), "chunks": count("*/answers/*.json"),
                "synth_done": count("*/manifest.json"), "eval_parts": len(list(self.run_dir.glob("eval/parts/*.json"))),
                "ckpt_step": ckpt_step(self.run_dir)}

    def progress(self) -> str:
        u = self.units()
        return {"generate": f"rounds {u['rounds']}, chunks {u['chunks']}", "train": f"checkpoint step {u['ckpt_step']}",
                "eval": f"eval parts {u['eval_parts']}"}.get(self.stage(), "")

    def train_start(self) -> str:
        """How this run's training began, from its log lines (see crescent.train.trainer.resume_checkpoint)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            text = f.read().decode(errors="replace")
        if match := re.search(r"continuing from \S*step=(\d+)\.ckpt", text):
            return f"step {match.group(1)}"
        if "training starts from scratch" in text:
            return "scratch"
        return "reused" if "already holds this training config's result" in text else ""

    def wait(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()


def reference(work: Path, args: list[str]) -> dict:
    """The uninterrupted run: its exit code, how long each part took and how many units it had."""
    job = Job(work, "reference", args)
    seen, marks, first_unit, ckpt_times = "startup", {"startup": 0.0}, None, {}
    while job.proc.poll() is None:
        stage = job.stage()
        if stage != seen:
            marks[stage], seen = job.elapsed(), stage
        if first_unit is None and stage == "generate" and job.units()["rounds"]:
            first_unit = job.elapsed() - marks["generate"]  # imports and model load before the first unit
        if stage == "train":
            ckpt_times.setdefault(ckpt_step(job.run_dir), job.elapsed())
        time.sleep(0.02)
    marks["finished"] = job.elapsed()
    rc = job.wait()
    order = ["startup", *STAGES, "finished"]
    starts = [marks.get(s) for s in order]
    durations = {s: (next(t for t in starts[i + 1:] if t is not None) - starts[i]) if starts[i] is not None else 0.0
                 for i, s in enumerate(order[:-1])}
    times = [t for step, t in sorted(ckpt_times.items()) if step]
    per_ckpt = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else durations["train"]
    steps = read_json(job.run_dir / "train_result.json")["global_step"] if rc == 0 else 0
    return {"rc": rc, "durations": durations, "units": job.units(), "wall": marks["finished"],
            "generate_fixed": first_unit or 0.0, "train_steps": steps, "per_ckpt": per_ckpt}


def kill_plan(n: int) -> list[str]:
    """n target stages: one at startup, the rest spread over the stages in order (generate gets most)."""
    rest = n - 1
    counts = {"generate": rest - 2 * (rest // 3), "train": rest // 3, "eval": rest // 3}
    return ["startup"] + [s for s in STAGES for _ in range(counts[s])]


def _generate_units(job: Job) -> int:
    u = job.units()
    return u["rounds"] + u["chunks"]


def _delay(ref: dict, stage: str, job: Job, rng: random.Random, kills_left: int) -> float:
    """Seconds to wait before the kill, once `stage` runs. Generation is aimed by its units: wait for a
    random number of them to finish (at most its share of those left, given the `kills_left` aimed at
    this stage), then kill within the next one; training likewise by its checkpoints (>= 1 new one, none
    past the last but one, so that the kill lands in training with a checkpoint to resume from); eval
    by time: a random part of what the reference needed for (the rest of) the stage."""
    total, ref_units = ref["durations"][stage], ref["units"]
    if stage == "generate":
        units = ref_units["rounds"] + ref_units["chunks"]
        fixed = ref["generate_fixed"]  # imports and model load before the first unit
        per_unit = (total - fixed) / max(1, units)
        done = _generate_units(job)
        goal = done + rng.randrange(0, max(1, (units - done) // kills_left)) if done < units else done
        if goal == done:
            return rng.uniform(0.05, 0.9) * (fixed + per_unit)
        while job.proc.poll() is None and job.stage() == "generate" and _generate_units(job) < goal:
            time.sleep(0.01)
        return rng.uniform(0.05, 0.8) * per_unit
    if stage == "train":
        done, last = ckpt_step(job.run_dir), ref["train_steps"] - CKPT_EVERY
        share = max(1, (last - done) // CKPT_EVERY // kills_left)
        goal = min(done + CKPT_EVERY * rng.randint(1, share), max(last, CKPT_EVERY))
        while job.proc.poll() is None and job.stage() == "train" and ckpt_step(job.run_dir) < goal:
            time.sleep(0.005)
        return rng.uniform(0.05, 0.8) * ref["per_ckpt"]
    if stage == "eval":
        left = max(0.2, 1 - job.units()["eval_parts"] / max(1, ref_units["eval_parts"]))
        return rng.uniform(0.05, 0.9) * total * left
    return rng.uniform(0.05, 0.9) * total


def attack(work: Path, args: list[str], ref: dict, target: str, rng: random.Random, kills_left: int) -> Attempt:
    job, attempt = Job(work, "chaos", args), Attempt(target)
    order = ["startup", *STAGES, "finished", "failed"]
    while job.proc.poll() is None and order.index(job.stage()) < order.index(target):
        time.sleep(0.02)
    delay = _delay(ref, target, job, rng, kills_left)
    start = time.time()
    while job.proc.poll() is None and time.time() - start < delay:
        time.sleep(0.01)
    if job.proc.poll() is not None:
        attempt.outcome = f"finished before the kill (exit {job.wait()})"
        attempt.train_start = job.train_start()
        return attempt
    attempt.stage, attempt.seconds, attempt.progress = job.stage(), job.elapsed(), job.progress()
    job.kill()
    attempt.ckpt_step, attempt.train_start = ckpt_step(job.run_dir), job.train_start()
    attempt.outcome = "killed; " + ("cache ok" if synth_cache_consistent(job.cache) else "CACHE INCONSISTENT")
    return attempt


def synth_cache_consistent(cache: Path) -> bool:
    """A cache folder with manifest.json (complete) has every output, whole; without it nothing counts."""
    for folder in (p for p in cache.glob("*") if p.is_dir()):
        if (folder / "manifest.json").exists():
            try:
                for name in SYNTH_FILES:
                    list(read_jsonl(folder / name))
            except (OSError, ValueError):
                return False
    return True


def compare(work: Path) -> list[tuple[str, bool, str]]:
    ref, got = work / "reference" / "run", work / "chaos" / "run"
    checks = []
    for name in SYNTH_FILES:
        same = (ref / "synth" / name).read_bytes() == (got / "synth" / name).read_bytes()
        checks.append((f"synth/{name} byte-identical", same, f"{(got / 'synth' / name).stat().st_size} bytes"))
    ref_counts, counts = (read_json(d / "synth" / "manifest.json")["counts"] for d in (ref, got))
    checks.append(("manifest counts equal", ref_counts == counts, f"kept {counts.get('kept')}, "
                   f"accepted {counts['accepted']}, answers {counts.get('answers')}"))
    whole = True
    for path in [*got.rglob("*.jsonl"), *(work / "chaos" / "cache").rglob("*.jsonl")]:
        try:
            list(read_jsonl(path))
        except ValueError:
            whole = False
    checks.append(("every JSONL whole (run dir and cache)", whole and synth_cache_consistent(work / "chaos" / "cache"),
                   ""))
    ref_train, train = read_json(ref / "train_result.json"), read_json(got / "train_result.json")
    exported = (got / "hf_export" / "config.json").exists() and any((got / "hf_export").glob("*.safetensors"))
    checks.append(("training finished (train_result.json, hf_export/)", exported and
                   train["global_step"] == ref_train["global_step"],
                   f"steps {train['global_step']}, resumed_from {Path(train['resumed_from'] or '-').name}"))
    ref_loss, loss = ref_train["metrics"].get("train/loss"), train["metrics"].get("train/loss")
    checks.append(("train loss equal to the reference", ref_loss == loss, f"{loss} vs {ref_loss}"))
    weights = sorted((got / "hf_export").glob("*.safetensors"))
    same = bool(weights) and all(p.read_bytes() == (ref / "hf_export" / p.name).read_bytes() for p in weights)
    checks.append(("hf_export weights byte-identical", same, f"{sum(p.stat().st_size for p in weights)} bytes"))
    ref_rows, rows = (read_json(d / "eval" / "results.json")["rows"] for d in (ref, got))
    checks.append(("eval/results.json rows equal", ref_rows == rows, f"{len(rows)} rows"))
    status = read_json(got / "status.json")["status"]
    checks.append(("status.json ok", status == "ok", status))
    return checks


def train_resumes(attempts: list[Attempt], reruns: list[dict]) -> list[tuple[int, int, str]]:
    """(attempt number, checkpoint step left, how the next run that reached training began) per train kill."""
    starts = [a.train_start for a in attempts] + [r["train_start"] for r in reruns]
    return [(i + 1, a.ckpt_step, next((s for s in starts[i + 1:] if s), "-"))
            for i, a in enumerate(attempts) if a.stage == "train" and a.outcome.startswith("killed")]


def resume_check(resumes: list[tuple[int, int, str]], steps: int) -> tuple[str, bool, str]:
    """Every train kill that left a checkpoint was followed by a resume from exactly it (at least one)."""
    with_ckpt = [(i, step, start) for i, step, start in resumes if step]
    ok = bool(with_ckpt) and all(start == f"step {step}" or (step == steps and start == "reused")
                                 for _, step, start in with_ckpt)
    detail = "; ".join(f"#{i}: step {step} -> {start}" for i, step, start in resumes) or "no train kill"
    return "training resumed from its last checkpoint", ok, detail


def run(work: Path, kills: int = 12, seed: int = 0, small: bool = False, train_resume: str = "auto") -> dict:
    rng = random.Random(seed)
    ref = reference(work, overrides(work, "reference", small, train_resume))
    if ref["rc"] != 0:
        raise RuntimeError(f"the uninterrupted run failed (exit {ref['rc']}); see {work / 'reference.log'}")
    args = overrides(work, "chaos", small, train_resume)
    plan = kill_plan(kills)
    attempts = [attack(work, args, ref, target, rng, plan[i:].count(target)) for i, target in enumerate(plan)]
    reruns = []
    for _ in range(3):
        job = Job(work, "chaos", args)
        rc = job.wait()
        reruns.append({"rc": rc, "seconds": round(job.elapsed(), 1), "train_start": job.train_start()})
        if rc == 0:
            break
    checks = compare(work) if reruns[-1]["rc"] == 0 else [("final rerun exits 0", False, str(reruns))]
    resumes = train_resumes(attempts, reruns)
    checks.append(resume_check(resumes, ref["train_steps"]))
    leftovers = [str(p.relative_to(work)) for p in (work / "chaos").rglob("*.tmp")]
    return {"reference": ref, "attempts": attempts, "reruns": reruns, "resumes": resumes, "checks": checks,
            "leftover_tmp": leftovers}


def print_report(report: dict) -> None:
    ref = report["reference"]
    print(f"reference run: {ref['wall']:.1f} s; " + ", ".join(f"{s} {d:.1f} s" for s, d in ref["durations"].items())
          + f"; {ref['train_steps']} optimizer steps, a checkpoint every {CKPT_EVERY} ({ref['per_ckpt']:.2f} s apart)")
    print(f"\n{'#':>2}  {'target':8}  {'killed in':10}  {'at (s)':>7}  {'progress':24}  {'train began':11}  outcome")
    for i, a in enumerate(report["attempts"], 1):
        print(f"{i:>2}  {a.target:8}  {a.stage:10}  {a.seconds:7.1f}  {a.progress:24}  {a.train_start or '-':11}  "
              f"{a.outcome}")
    reruns = ", ".join(f"exit {r['rc']} in {r['seconds']} s (train began: {r['train_start'] or '-'})"
                       for r in report["reruns"])
    print(f"\nreruns until exit 0: {reruns}")
    print("train kills (checkpoint left -> how the next run's training began): "
          + ("; ".join(f"#{i}: step {step} -> {start}" for i, step, start in report["resumes"]) or "none"))
    print(f"temp files left by kills mid-write (harmless, never read): {report['leftover_tmp'] or 'none'}\n")
    for name, ok, detail in report["checks"]:
        print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="kill points (>= 4: startup + each stage)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill plan and the delays")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    p.add_argument("--small", action="store_true", help="fewer generation units and epochs (the slow test)")
    p.add_argument("--train-resume", choices=("auto", "true", "false"), default="auto",
                   help="train.resume (false: every rerun retrains from scratch)")
    p.add_argument("--json", type=Path, default=None, help="also write the report (and the kill plan) to this file")
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="crescent-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}")
    report = run(work, a.kills, a.seed, a.small, a.train_resume)
    print_report(report)
    if a.json:
        plain = {**report, "kill_plan": kill_plan(a.kills), "attempts": [asdict(x) for x in report["attempts"]]}
        a.json.write_text(json.dumps(plain, indent=1, default=str) + "\n")
    return 0 if all(ok for _, ok, _ in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
