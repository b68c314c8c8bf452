"""Per-stage cache keys of the generate stage, so a sweep reuses every stage its swept keys do not touch.

Each key hashes only what changes that stage's output (a key that is too wide loses reuse, never correctness):

    questions   teacher, backend (data keys), questions (minus the answer-only keys), sampling.{num_questions,
                question, rewrite} (and any sampling key not named below), dedup, seed, code version
    answers     the questions key + questions' answer-only keys + sampling.{answer, answer_chunk, nested_k}
                + voting.k (left out when sampling.nested_k=true: sample j of a question is the same for every k)
    verify      the answers key + voting.k + reflection (voting.reflect, its prompt and tie policy) + verify
    final       crescent.config.config_hash(cfg): the whole generation config (sft rows, manifest)

Layout under paths.synth_cache (or <run>/synth/.work with cache_synth=false):

    questions/<questions key>/   raw/round_*.json, rounds/round_*.{json,npy}, questions.jsonl, key.json
    answers/<answers key>/       answers/chunk_*.json (nested: answers/chunk_*_s*.json, one per sample), key.json
    verify/<verify key>/         reflect/chunk_*.json, verify/result.json, key.json
    <config hash>/               config.json, questions.jsonl, answers.jsonl, sft.jsonl, rejections.jsonl,
                                 manifest.json (written last: the folder is complete)

A `voting.k` sweep (`crescent -m voting.k=1,3,5`) therefore samples and deduplicates its questions once; with
sampling.nested_k=true the answers of a smaller k are the first k samples of a larger k's, read from the same units.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from crescent.config import config_hash, synth_config
from crescent.utils.hashing import stable_hash

KEYS_VERSION = 1  # bump when a stage's output changes for the same key
# questions.* keys read only by the answer prompt and the sft rows (crescent.synth.sources.answer_prompt, sft.py)
ANSWER_ONLY_QUESTION_KEYS = ("answer_prompt", "answer_format", "answer_stop", "formats", "exemplars")
QUESTION_SAMPLING_KEYS = ("num_questions", "question", "rewrite")
ANSWER_SAMPLING_KEYS = ("answer", "answer_chunk", "nested_k")
NON_DATA_SAMPLING_KEYS = ("name",)


def nested_k(cfg: DictConfig) -> bool:
    """sampling.nested_k: sample j of every question has its own stream, independent of voting.k."""
    return bool(cfg.sampling.get("nested_k", False))


def question_payload(cfg: DictConfig) -> dict:
    sc = synth_config(cfg)
    questions = {k: v for k, v in (sc.get("questions") or {}).items() if k not in ANSWER_ONLY_QUESTION_KEYS}
    sampling = {k: v for k, v in (sc.get("sampling") or {}).items()
                if k not in ANSWER_SAMPLING_KEYS + NON_DATA_SAMPLING_KEYS}
    return {"stage": "questions", "teacher": sc.get("teacher"), "backend": sc.get("backend"), "questions": questions,
            "sampling": sampling, "dedup": sc.get("dedup"), "seed": sc.get("seed"),
            "synth_code_version": sc.get("synth_code_version"), "keys_version": KEYS_VERSION}


def question_key(cfg: DictConfig) -> str:
    return stable_hash(question_payload(cfg))


def answer_payload(cfg: DictConfig) -> dict:
    sc = synth_config(cfg)
    questions = sc.get("questions") or {}
    sampling = sc.get("sampling") or {}
    return {"stage": "answers", "questions_key": question_key(cfg),
            "questions": {k: questions.get(k) for k in ANSWER_ONLY_QUESTION_KEYS if k in questions},
            "sampling": {k: sampling.get(k) for k in ANSWER_SAMPLING_KEYS if k in sampling},
            "k": None if nested_k(cfg) else int(cfg.voting.k)}


def answer_key(cfg: DictConfig) -> str:
    return stable_hash(answer_payload(cfg))


def verify_payload(cfg: DictConfig) -> dict:
    sc = synth_config(cfg)
    voting = sc.get("voting") or {}
    reflect = bool(voting.get("reflect", False))
    return {"stage": "verify", "answers_key": answer_key(cfg), "k": int(cfg.voting.k),
            "reflect": {"on": reflect, "prompt": voting.get("reflect_prompt"), "tie": voting.get("tie")}
            if reflect else False,
            "verify": sc.get("verify")}


def verify_key(cfg: DictConfig) -> str:
    return stable_hash(verify_payload(cfg))


def cache_root(cfg: DictConfig) -> Path:
    """paths.synth_cache, or this run's synth/.work when cache_synth=false."""
    if cfg.get("cache_synth", True):
        return Path(cfg.paths.synth_cache)
    return Path(cfg.paths.output_dir) / "synth" / ".work"


def final_dir(cfg: DictConfig) -> Path:
    """The folder of the finished data (sft.jsonl, manifest.json) of this generation config."""
    if cfg.get("cache_synth", True):
        return Path(cfg.paths.synth_cache) / config_hash(cfg)
    return cache_root(cfg)


def sft_path(cfg: DictConfig) -> Path:
    """Where the generate stage leaves (or left) the sft rows of this config in the cache."""
    return final_dir(cfg) / "sft.jsonl"


def stage_dirs(cfg: DictConfig) -> dict[str, Path]:
    """{"questions", "answers", "verify", "final"} folders of this config (see the module docstring)."""
    root = cache_root(cfg)
    return {"questions": root / "questions" / question_key(cfg), "answers": root / "answers" / answer_key(cfg),
            "verify": root / "verify" / verify_key(cfg), "final": final_dir(cfg)}


def stage_keys(cfg: DictConfig) -> dict[str, str]:
    """The keys recorded in the manifest."""
    return {"questions": question_key(cfg), "answers": answer_key(cfg), "verify": verify_key(cfg),
            "final": config_hash(cfg)}


def stage_payloads(cfg: DictConfig) -> dict[str, dict]:
    return {"questions": question_payload(cfg), "answers": answer_payload(cfg), "verify": verify_payload(cfg)}
