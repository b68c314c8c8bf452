"""Self-verification inside the generate stage (verify=<name>, default none): the model judges its own k
answers and only the kept ones go to the vote. The result is written once (verify/result.json) so a rerun
resumes after it; rejected samples are recorded in rejections.jsonl with their scores (stage "verify")."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from crescent.utils.io import DamagedFileError, read_json, write_json
from crescent.utils.seeding import derive_seed

log = logging.getLogger(__name__)


def apply_kept(answered: list[dict], kept: list[list[bool]], scores: list[list[float | None]]) -> list[dict]:
    """Each item with only its kept responses/answers (verify_scores alongside; all dropped -> empty lists)."""
    out = []
    for item, keep, score in zip(answered, kept, scores):
        pick = [i for i, k in enumerate(keep) if k]
        out.append({**item, "responses": [item["responses"][i] for i in pick],
                    "answers": [item["answers"][i] for i in pick], "verify_scores": [score[i] for i in pick],
                    "verified_from": len(keep)})
    return out


def verify_answers(cfg: DictConfig, workdir: Path, answered: list[dict], get_backend: Callable,
                   verifier=None) -> tuple[list[dict], list[dict], dict]:
    """(answered with rejected samples removed, rejection rows, counts); a no-op for verify=none.
    verifier: the crescent.verify Verifier of cfg.verify, which the pipeline builds (StageContext.verifier)."""
    vcfg = cfg.get("verify")
    if vcfg is None or vcfg.get("name", "none") == "none":
        return answered, [], {}
    path = workdir / "verify" / "result.json"
    record = None
    if path.exists():
        try:
            record = read_json(path, expect=dict, fix="verifying again")
        except DamagedFileError as err:
            log.warning("%s", err)
    if record is None or record.get("ids") != [a["id"] for a in answered]:
        if verifier is None:
            raise RuntimeError(f"verify={vcfg.name}: the generate stage needs the verifier the pipeline builds from "
                               "cfg.verify (StageContext.verifier); run it through crescent.pipeline")
        log.info("self-verifying %d questions' answers with verify=%s", len(answered), vcfg.name)
        items = [{"id": a["id"], "question": a["question"], "responses": a["responses"], "answers": a["answers"]}
                 for a in answered]
        result = verifier.verify(verifier.make_judge(get_backend, cfg), items, derive_seed(int(cfg.seed), "synth_verify"))
        record = {"ids": [a["id"] for a in answered], "kept": result.kept, "scores": result.scores,
                  "rejections": [{**r, "stage": "verify", "reason": ",".join(r["reasons"]) or "rejected"}
                                 for r in result.rejections],
                  "counts": result.counts}
        write_json(path, record)
    counts = {f"verify_{k}": v for k, v in record["counts"].items() if isinstance(v, (int, float, str))}
    return apply_kept(answered, record["kept"], record["scores"]), record["rejections"], counts
