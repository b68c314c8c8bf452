"""The generate stage: questions -> answers -> vote -> synth/{questions,sft}.jsonl + manifest.json.

Work happens in per-stage cache folders (crescent.synth.keys: questions, answers, verify, each keyed
only by what changes it, and the finished data under the generation-config hash), in units (rounds,
answer chunks) that are written atomically; a killed run resumes from the last finished unit and
ends with the same rows as an uninterrupted one. A finished folder is reused by any run with the
same generation config; a stage folder by any run whose config agrees on that stage's key (a
voting sweep samples and deduplicates its questions once).
"""
from __future__ import annotations

import logging
import platform
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent.config import config_hash, synth_config
from crescent.utils.locks import UnitLock
from crescent.synth.answers import answer_questions, answer_seconds, answer_units, sample_answers
from crescent.synth.keys import cache_root, final_dir, stage_dirs, stage_keys, stage_payloads
from crescent.synth.questions import generate_questions, sample_raw_rounds
from crescent.synth.sft import build_sft_rows
from crescent.synth.verified import verify_answers
from crescent.utils import artifacts
from crescent.utils.io import DamagedFileError, copy_file, read_json, read_jsonl, write_json, write_jsonl
from crescent.utils.stage import StageContext, StageResult

log = logging.getLogger(__name__)
OUTPUT_FILES = ("manifest.json", "questions.jsonl", "sft.jsonl", "rejections.jsonl", "answers.jsonl")
DATA_FILES = OUTPUT_FILES[1:]  # what the manifest vouches for: size and sha256 in manifest["artifacts"]
UNITS_FILE = "units.json"  # size and sha256 of every unit record (raw/, rounds/, answers/, reflect/, verify/)
UNIT_SUFFIXES = (".json", ".npy")
PACKAGES = ("crescent", "torch", "transformers", "lm_eval", "numpy", "sentence-transformers", "vllm")


def synth_workdir(cfg: DictConfig) -> Path:
    """The folder of this config's finished data (crescent.synth.keys.final_dir)."""
    return final_dir(cfg)


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

    def close(self) -> None:
        """Shut the generation engine down (vLLM gives its GPU memory back) before the next stage."""
        backend, self._backend = self._backend, None
        if backend is not None and callable(getattr(backend, "close", None)):
            backend.close()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _model_dir(model_cfg: DictConfig, cache_dir: str) -> Path | None:
    """The folder the weights load from: local/embedded/tiny, or a hub id's cached snapshot (None if neither)."""
    from crescent.models.loading import resolve_model_dir

    resolved = Path(resolve_model_dir(model_cfg, cache_dir))
    if resolved.is_dir():
        return resolved
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(resolved), revision=model_cfg.get("revision"), local_files_only=True))
    except Exception:  # not in the local hub cache (a vLLM-only or remote model): recorded as unknown
        return None


def _weights(model_cfg: DictConfig, cache_dir: str) -> dict:
    """sha256 of each safetensors file of the model (memoised by path, size and mtime: cheap after the first)."""
    from crescent.models.embedded import file_sha256

    folder = _model_dir(model_cfg, cache_dir)
    files = sorted(folder.glob("*.safetensors")) if folder else []
    return {"name": model_cfg.name, "dir": str(folder) if folder else None,
            "sha256": {f.relative_to(folder).as_posix(): file_sha256(f, cache_dir) for f in files}}


def _resolved(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs a running Hydra app (paths.output_dir): keep it as written
        return OmegaConf.to_container(cfg, resolve=False)


def provenance(cfg: DictConfig) -> dict:
    """What produced the data: package versions, git commit, teacher weight hashes, the resolved config."""
    from crescent.utils.tracking import git_commit

    return {"versions": _versions(), "git_commit": git_commit(),
            "teacher_weights": _weights(cfg.teacher, str(cfg.paths.cache_dir)), "config": _resolved(cfg)}


def _manifest(cfg: DictConfig, records: list[dict], questions: list[dict], answered: list[dict],
              vote_counts: dict, t_questions: float, t_answers: float) -> dict:
    rejected = Counter(f"{r['stage']}/{r['reason']}" for rec in records for r in rec["rejections"])
    return {
        "config_hash": config_hash(cfg),
        "stage_keys": stage_keys(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": cfg.teacher.name,
        "counts": {
            "bait_rounds": sum(len(r.get("rounds", [r["round"]])) for r in records),
            "bait_passes": len(records),
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
        "provenance": provenance(cfg),
    }


def _cfg_payload(cfg: DictConfig) -> str:
    """The config for a worker process (YAML; resolved where it resolves outside the Hydra app)."""
    return OmegaConf.to_yaml(OmegaConf.create(_resolved(cfg)))


def worker_stage(cfg_yaml: str, workdir: str, stage: str, args: list, shard: tuple[int, int]) -> None:
    """One data-parallel worker (crescent.backends.workers): its share of a stage's units, then its engine closed."""
    cfg = OmegaConf.create(cfg_yaml)
    lazy = _Lazy(cfg)
    try:
        if stage == "bait":
            sample_raw_rounds(cfg, Path(workdir), args, lazy.backend, shard)
        elif stage == "answers":
            sample_answers(cfg, Path(workdir), args, lazy.backend, shard)
        else:
            raise ValueError(f"unknown worker stage {stage!r}")
    finally:
        lazy.close()


def _in_workers(cfg: DictConfig, workdir: Path, stage: str, args: list, done: list[Path], d: int,
                shard: tuple[int, int] | None) -> None:
    """Run a stage's missing units in d worker processes (shard i/N of an array job: worker j takes i + N*j of N*d)."""
    from crescent.backends.units import unit_done

    if all([unit_done(p) for p in done]):  # a damaged record is removed: its unit is done again
        return
    from crescent.backends.workers import run_workers, worker_devices

    i, n = shard or (0, 1)
    payload = _cfg_payload(cfg)
    log.info("%s: %d worker processes (backend.data_parallel_size=%d)", stage, d, d)
    run_workers("crescent.synth.generate:worker_stage",
                [(payload, str(workdir), stage, args, (i + n * j, n * d)) for j in range(d)],
                worker_devices(cfg.backend, d))


def _mark(folder: Path, payload: dict) -> None:
    """Create a stage folder with its key's payload (key.json: what the folder's name hashes)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").exists():
        write_json(folder / "key.json", payload)


def _generate_into(cfg: DictConfig, workdir: Path, lazy: _Lazy, shard: tuple[int, int] | None = None,
                   verifier=None) -> dict:
    from crescent.backends.workers import data_parallel_size

    dirs, payloads = stage_dirs(cfg), stage_payloads(cfg)
    qdir, adir, vdir = dirs["questions"], dirs["answers"], dirs["verify"]
    for name in ("questions", "answers", "verify"):
        _mark(dirs[name], payloads[name])
    d = data_parallel_size(cfg.backend)
    sample_bait = sample_ans = None
    if d > 1:
        sample_bait = lambda rounds: _in_workers(  # noqa: E731
            cfg, qdir, "bait", rounds, [qdir / "raw" / f"round_{r:05d}.json" for r in rounds], d, shard)
    questions, records = generate_questions(cfg, qdir, lazy.backend, lazy.embed, shard, sample=sample_bait)
    write_jsonl(qdir / "questions.jsonl", questions)
    write_jsonl(workdir / "questions.jsonl", questions)
    if d > 1:
        sample_ans = lambda: _in_workers(  # noqa: E731
            cfg, adir, "answers", questions, [u.path for u in answer_units(cfg, adir, questions)], d, shard)
    answered = answer_questions(cfg, adir, questions, lazy.backend, shard, sample=sample_ans)
    reflect_counts = {}
    if cfg.voting.get("reflect", False):
        from crescent.synth.reflect import reflect

        answered, reflect_counts = reflect(cfg, vdir, answered, lazy.backend, shard)
    write_jsonl(workdir / "answers.jsonl", answered)
    with UnitLock(vdir / "verify"):  # one process verifies; the others read its result
        answered, verify_rejections, verify_counts = verify_answers(cfg, vdir, answered, lazy.backend, verifier)
    lazy.close()  # generation is over: free the engine before voting / writing
    rows, vote_counts = build_sft_rows(
        answered, tie=cfg.voting.tie, min_agreement=float(cfg.voting.min_agreement), seed=int(cfg.seed),
        keep=cfg.voting.get("keep", "first"), formats=list(cfg.questions.get("formats") or ["chat"]),
        exemplars=[dict(e) for e in cfg.questions.get("exemplars") or []])
    with UnitLock(workdir / "manifest.json"):
        if (workdir / "manifest.json").exists():  # another shard finished first: identical rows, keep its files
            return read_json(workdir / "manifest.json")
        write_jsonl(workdir / "sft.jsonl", rows)
        write_jsonl(workdir / "rejections.jsonl",
                    [r for rec in records for r in rec["rejections"]] + verify_rejections)
        t_q = sum(r["seconds"] for r in records)
        t_a = answer_seconds(cfg, adir, questions)
        manifest = _manifest(cfg, records, questions, answered, {**vote_counts, **reflect_counts, **verify_counts},
                             t_q, t_a)
        write_json(workdir / UNITS_FILE, artifacts.record(_unit_files(cfg), cache_root(cfg)))
        manifest["artifacts"] = artifacts.record([workdir / name for name in DATA_FILES], workdir)
        write_json(workdir / "manifest.json", manifest)  # last: marks the folder complete
    return manifest


def _decontaminate(cfg: DictConfig, workdir: Path, out: Path, test_sets) -> dict:
    """The decontam step on the final questions (crescent.synth.decontam): the report is cached in the generation
    folder under a key of its own (decontam settings + the test texts), so the generation cache key ignores it.
    policy=drop removes the flagged questions from this run's synth/ copy (questions, answers, sft rows)."""
    from crescent.synth import decontam
    from crescent.utils.hashing import stable_hash
    from crescent.utils.io import read_jsonl

    dc = OmegaConf.to_container(cfg.decontam, resolve=True)
    tests = {b: [(str(i), t) for i, t in rows] for b, rows in (test_sets or {}).items()}
    if not tests:
        from crescent.config import ConfigError

        raise ConfigError(f"decontam.policy={dc['policy']} needs test questions, but no test document of "
                          f"decontam.benchmarks={dc.get('benchmarks')} (null: the generation benchmarks of eval.benchmarks) "
                          f"has a field in decontam.text_fields={dc.get('text_fields')}: name the field, or decontam=none")
    part = workdir / "decontam" / f"{stable_hash([decontam.settings(dc), tests])}.json"
    questions = list(read_jsonl(workdir / "questions.jsonl"))
    if part.is_file():
        report = read_json(part)
    else:
        embed = None
        if dc.get("embedding", True):
            from crescent.synth.embed import get_embedder

            embed = get_embedder(batch_size=int(dc.get("batch_size") or 128)).encode
        pairs, counts = decontam.measure(
            questions, tests, n=int(dc["ngram"]), embed=embed, threshold=float(dc["threshold"]),
            match_numbers=bool(dc.get("match_numbers", True)), index=str(dc.get("index") or "auto"),
            cache_dir=cfg.paths.synth_cache, top=int(dc.get("top", 20)))
        report = {"pairs": pairs, "counts": counts}
        write_json(part, report)
    pairs, counts = report["pairs"], dict(report["counts"])
    bad = decontam.flagged_ids(pairs)
    counts.update(policy=dc["policy"], dropped=0, dropped_rows=0)
    if dc["policy"] == "drop" and bad:
        texts = {q["text"] for q in questions if q["id"] in bad}
        for name, keep in (("questions.jsonl", lambda r: r["id"] not in bad),
                           ("answers.jsonl", lambda r: r["id"] not in bad),
                           ("sft.jsonl", lambda r: r["question"] not in texts)):
            rows = list(read_jsonl(out / name))
            kept = [r for r in rows if keep(r)]
            write_jsonl(out / name, kept)
            if name == "questions.jsonl":
                counts["dropped"] = len(rows) - len(kept)
            if name == "sft.jsonl":
                counts["dropped_rows"] = len(rows) - len(kept)
    write_jsonl(out / "contamination.jsonl", pairs)
    return counts


def _unit_files(cfg: DictConfig) -> list[Path]:
    """The unit records of this config's stage folders (questions: raw/, rounds/; answers: answers/; verify:
    reflect/, verify/), not their locks or temp files."""
    dirs = stage_dirs(cfg)
    return sorted(p for stage in ("questions", "answers", "verify") for p in dirs[stage].glob("*/*")
                  if p.suffix in UNIT_SUFFIXES and p.is_file() and not p.name.startswith("."))


def _damage(workdir: Path) -> tuple[dict | None, list[str]]:
    """(manifest, problems) of a finished cache folder: its data files against the manifest's size and sha256
    (a manifest written before those were recorded: the JSONL files must read back whole). (None, []): not
    finished."""
    path = workdir / "manifest.json"
    if not path.exists():
        return None, []
    try:
        manifest = read_json(path, expect=dict)
    except DamagedFileError as err:
        return None, [str(err).split("; ")[0]]
    recorded = manifest.get("artifacts")
    if recorded is not None:
        return manifest, artifacts.verify(workdir, recorded)
    problems = []
    for name in DATA_FILES:
        try:
            for _ in read_jsonl(workdir / name):
                pass
        except (OSError, ValueError) as err:  # missing, torn (TornFileError), garbled
            problems.append(str(err))
    return manifest, problems


def _discard_damaged(cfg: DictConfig, workdir: Path, problems: list[str]) -> None:
    """Before regenerating a damaged folder: the manifest goes first (nobody reuses the folder meanwhile), then
    every unit record whose size or sha256 is not the recorded one in units.json (names relative to the cache
    root: the units live in the per-stage folders, see crescent.synth.keys); each is done again, the others are
    replayed: no engine call for them. The data files are rewritten from the units."""
    log.warning("synthetic data in %s is damaged: %s. Regenerating it from its units (only damaged units are "
                "sampled again)", workdir, "; ".join(problems))
    with UnitLock(workdir / "manifest.json"):
        manifest, problems = _damage(workdir)
        if manifest is not None and not problems:
            return  # another process sharing the cache repaired it meanwhile
        (workdir / "manifest.json").unlink(missing_ok=True)
        try:
            recorded = read_json(workdir / UNITS_FILE, expect=dict) if (workdir / UNITS_FILE).exists() else {}
        except DamagedFileError:
            recorded = {}  # unreadable units are still caught when read (crescent.backends.units.unit_done)
        root = cache_root(cfg)
        for name, problem in artifacts.verify_files(root, recorded).items():
            log.warning("%s: doing its unit again", problem)
            unit = root / name
            unit.unlink(missing_ok=True)
            if unit.parent.name == "rounds":  # a dedup pass is its record and its embeddings
                unit.with_suffix(".json").unlink(missing_ok=True)
                unit.with_suffix(".npy").unlink(missing_ok=True)
        (workdir / UNITS_FILE).unlink(missing_ok=True)


def run(cfg: DictConfig, ctx: StageContext | None = None) -> StageResult:
    """Generate (or reuse) the synthetic data and copy it to <run dir>/synth. The result's counts are the
    manifest's, its artifacts the SFT rows (sft), the manifest and the cache folder, its record the manifest.

    ctx.test_sets ({benchmark: [(test id, question text), ...]}, handed over by the pipeline) feed the decontam
    step when decontam.policy is report or drop.

    No lock is held for the whole stage: each unit of work has its own (crescent.utils.locks), so jobs sharing
    the config hash (a sweep, array tasks with backend.shard=i/N, backend.data_parallel_size workers) split the
    units, and every one of them ends with the same files. The generation engine is shut down before returning,
    so a stage after this one in the same process (train) gets the GPU memory."""
    from crescent.backends.units import parse_shard
    from crescent.backends.workers import data_parallel_size

    t0 = time.perf_counter()
    shard = parse_shard(cfg.backend.get("shard"))
    data_parallel_size(cfg.backend)  # a bad value fails before any work
    workdir = synth_workdir(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    manifest, problems = _damage(workdir)
    if manifest is not None and not problems:
        log.info("reusing synthetic data from %s", workdir)
        manifest["cache_hit"] = True
    else:
        if problems:
            _discard_damaged(cfg, workdir, problems)
        write_json(workdir / "config.json", synth_config(cfg))
        lazy = _Lazy(cfg)
        try:
            manifest = _generate_into(cfg, workdir, lazy, shard, ctx.verifier if ctx is not None else None)
        finally:
            lazy.close()
        manifest["cache_hit"] = False
        if problems:
            manifest["repaired"] = problems
    out = Path(cfg.paths.output_dir) / "synth"
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        copy_file(workdir / name, out / name)
    copied = artifacts.verify(out, manifest.get("artifacts") or {})
    if copied:  # changed between the check and the copy (another process repairing it, or a failing disk)
        raise DamagedFileError(f"the copy of {workdir} in {out} does not match its manifest: {'; '.join(copied)}; "
                               "rerun the generate stage")
    policy = cfg.get("decontam", {}).get("policy", "off")
    if policy != "off":
        manifest["decontam"] = _decontaminate(cfg, workdir, out, ctx.test_sets if ctx is not None else None)
        for key in ("checked", "flagged_ngram", "flagged_embedding", "dropped"):
            manifest["counts"][f"decontam_{key}"] = manifest["decontam"][key]
        if manifest["decontam"]["dropped"] or manifest["decontam"]["dropped_rows"]:  # this run's copy changed
            manifest["artifacts"] = artifacts.record([out / name for name in DATA_FILES], out)
    manifest["cache_dir"] = str(workdir)
    manifest["stage_dirs"] = {name: str(path) for name, path in stage_dirs(cfg).items()}
    manifest["sft_path"] = str(workdir / "sft.jsonl")
    manifest["wall_s"] = round(time.perf_counter() - t0, 2)
    write_json(out / "manifest.json", manifest)
    return StageResult(counts=manifest["counts"], record=manifest,
                       artifacts={"sft": str(out / "sft.jsonl"), "questions": str(out / "questions.jsonl"),
                                  "manifest": str(out / "manifest.json"), "cache_dir": str(workdir)})
