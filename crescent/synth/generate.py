"""The generate stage: questions -> answers -> vote -> synth/{questions,sft}.jsonl + manifest.json.

Work happens in a cache folder keyed by the generation-config hash, in units (rounds, answer
chunks) that are written atomically; a killed run resumes from the last finished unit and ends
with the same rows as an uninterrupted one. A finished folder is reused by any run with the same
generation config.
"""
from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig

from crescent.config import config_hash, synth_config
from crescent.synth.answers import answer_questions
from crescent.synth.questions import generate_questions
from crescent.synth.sft import build_sft_rows
from crescent.utils.io import read_json, write_json, write_jsonl

log = logging.getLogger(__name__)
OUTPUT_FILES = ("manifest.json", "questions.jsonl", "sft.jsonl", "rejections.jsonl", "answers.jsonl")


def synth_workdir(cfg: DictConfig) -> Path:
    if cfg.get("cache_synth", True):
        return Path(cfg.paths.synth_cache) / config_hash(cfg)
    return Path(cfg.paths.output_dir) / "synth" / ".work"


class _Lazy:
    """Build the backend / embedder only when some unit of work is actually missing."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self._backend, self._embed = cfg, None, None

    def backend(self):
        if self._backend is None:
            from crescent.backends import build_backend
            log.info("loading teacher %s on backend %s", self.cfg.teacher.name, self.cfg.backend.name)
            self._backend = build_backend(self.cfg.backend, self.cfg.teacher, self.cfg.paths.cache_dir)
        return self._backend

    def embed(self):
        if self._embed is None:
            from crescent.synth.embed import get_embedder
            self._embed = get_embedder(batch_size=int(self.cfg.dedup.batch_size)).encode
        return self._embed


def _manifest(cfg: DictConfig, records: list[dict], questions: list[dict], answered: list[dict],
              vote_counts: dict, t_questions: float, t_answers: float) -> dict:
    rejected = Counter(f"{r['stage']}/{r['reason']}" for rec in records for r in rec["rejections"])
    return {
        "config_hash": config_hash(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": cfg.teacher.name,
        "counts": {
            "bait_rounds": len(records),
            "bait_calls": sum(r["calls"] for r in records),
            "raw": sum(len(r["raw"]) for r in records),
            "rejected": dict(sorted(rejected.items())),
            "rewrites": sum(r["rewrites"] for r in records),
            "accepted_total": sum(len(r["accepted"]) for r in records),
            "accepted": len(questions),
            "answered": len(answered),
            **vote_counts,
        },
        "timings_s": {"questions": round(t_questions, 2), "answers": round(t_answers, 2)},
        "synth_config": synth_config(cfg),
    }


def _generate_into(cfg: DictConfig, workdir: Path) -> dict:
    lazy = _Lazy(cfg)
    questions, records = generate_questions(cfg, workdir, lazy.backend, lazy.embed)
    write_jsonl(workdir / "questions.jsonl", questions)
    answered = answer_questions(cfg, workdir, questions, lazy.backend)
    reflect_counts = {}
    if cfg.voting.get("reflect", False):
        from crescent.synth.reflect import reflect

        answered, reflect_counts = reflect(cfg, workdir, answered, lazy.backend)
    write_jsonl(workdir / "answers.jsonl", answered)
    rows, vote_counts = build_sft_rows(
        answered, tie=cfg.voting.tie, min_agreement=float(cfg.voting.min_agreement), seed=int(cfg.seed),
        keep=cfg.voting.get("keep", "first"), formats=list(cfg.questions.get("formats") or ["chat"]),
        exemplars=[dict(e) for e in cfg.questions.get("exemplars") or []])
    write_jsonl(workdir / "sft.jsonl", rows)
    write_jsonl(workdir / "rejections.jsonl", [r for rec in records for r in rec["rejections"]])
    t_q = sum(r["seconds"] for r in records)
    t_a = sum(read_json(p)["seconds"] for p in sorted((workdir / "answers").glob("chunk_*.json")))
    manifest = _manifest(cfg, records, questions, answered, {**vote_counts, **reflect_counts}, t_q, t_a)
    write_json(workdir / "manifest.json", manifest)  # last: marks the folder complete
    return manifest


def run(cfg: DictConfig) -> dict:
    """Generate (or reuse) the synthetic data and copy it to <run dir>/synth. Returns the manifest."""
    t0 = time.perf_counter()
    workdir = synth_workdir(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(workdir) + ".lock"):
        if (workdir / "manifest.json").exists():
            log.info("reusing synthetic data from %s", workdir)
            manifest = read_json(workdir / "manifest.json")
            manifest["cache_hit"] = True
        else:
            write_json(workdir / "config.json", synth_config(cfg))
            manifest = _generate_into(cfg, workdir)
            manifest["cache_hit"] = False
    out = Path(cfg.paths.output_dir) / "synth"
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        shutil.copyfile(workdir / name, out / name)
    manifest["cache_dir"] = str(workdir)
    manifest["wall_s"] = round(time.perf_counter() - t0, 2)
    write_json(out / "manifest.json", manifest)
    return manifest
