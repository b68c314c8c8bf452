"""`verify_samples`: score, filter and account for one batch of sampled responses with a `verify` config."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from crescent.utils.hashing import plain
from crescent.utils.seeding import derive_seed
from crescent.verify.filters import keep_mask
from crescent.verify.verifiers import AllOf, Judgement, NoVerifier, Verifier

_RAW_CHARS = 1000  # judge text kept per rejection row


@dataclass
class VerifyResult:
    """Per item, per sample (same nesting as items[i]["responses"])."""

    scores: list[list[float | None]]  # in [0, 1]; all_of: the minimum over members; verify=none: None
    kept: list[list[bool]]
    rejections: list[dict]  # one row per rejected sample: id, sample, answer, score, reasons, verifier, judge
    counts: dict  # samples, kept, rejected, invalid, kept_fraction, by reason (and per member for all_of)
    details: list[list[dict]]  # score, valid, reason, kept, raw judge text, extra (all_of: members)


def build_verifier(verify_cfg: Mapping[str, Any] | DictConfig | Verifier | None) -> Verifier:
    """The Verifier of a verify config (conf/verify/<name>.yaml), built by hydra.utils.instantiate from its
    `_target_` (members of all_of too); None or a bare {name: none} is verify=none."""
    if isinstance(verify_cfg, Verifier):
        return verify_cfg
    vcfg = {"name": "none"} if verify_cfg is None else dict(plain(verify_cfg))
    if "_target_" not in vcfg:
        if vcfg.get("name", "none") == "none":
            return NoVerifier("none")
        raise ValueError(f"verify config {vcfg.get('name')!r} has no _target_: name the Verifier class that builds it "
                         "(e.g. _target_: crescent.verify.verifiers.MC; see conf/verify/*.yaml)")
    from hydra.utils import instantiate

    verifier = instantiate(vcfg, _convert_="all")
    if not isinstance(verifier, Verifier):
        raise TypeError(f"verify._target_={vcfg['_target_']!r} built a {type(verifier).__name__}, not a "
                        "crescent.verify.verifiers.Verifier")
    return verifier


def _single(judge, items, verifier: Verifier, seed: int) -> tuple[list[list[Judgement]], list[list[bool]], list[list[str | None]]]:
    vcfg = verifier.cfg
    judgements = verifier.judgements(judge, items, derive_seed(seed, verifier.name))
    kept, reasons = [], []
    for js in judgements:
        k, why, _ = keep_mask([j.score for j in js], [j.valid for j in js], vcfg.get("filter", "threshold"),
                              float(vcfg.get("threshold", 0.5)), float(vcfg.get("quantile", 0.5)))
        kept.append(k)
        reasons.append([f"invalid:{j.reason}" if r == "invalid" else r for j, r in zip(js, why)])
    return judgements, kept, reasons


def _counts(kept: list[list[bool]], reasons: list[list[Any]], judgements=None) -> dict:
    flat_kept = [k for row in kept for k in row]
    flat_reasons = [r for row in reasons for rs in row for r in (rs if isinstance(rs, list) else [rs]) if r]
    n = len(flat_kept)
    out = {"samples": n, "kept": sum(flat_kept), "rejected": n - sum(flat_kept),
           "kept_fraction": sum(flat_kept) / n if n else 0.0,
           "rejected_by_reason": dict(sorted(Counter(flat_reasons).items()))}
    if judgements is not None:
        flat = [j for row in judgements for j in row]
        out["invalid"] = sum(not j.valid for j in flat)
        out["mean_score"] = sum(j.score for j in flat) / len(flat) if flat else 0.0
    return out


def _detail(j: Judgement, kept: bool, reason: str | None) -> dict:
    return {**asdict(j), "kept": kept, "reason": reason}


def verify_samples(judge, items: Sequence[Mapping[str, Any]], verify_cfg: Mapping[str, Any] | DictConfig | None,
                   seed: int = 0) -> VerifyResult:
    """Self-verify every response of every item and filter them.

    items: [{"id", "question", "responses": [str, ...], "answers": [str | None, ...]}] ("answers" is
    only copied into rejection rows). judge: a `crescent.verify.judge.Judge` (generation for the CoT
    verifiers and the tournament, log-likelihoods for mc). verify_cfg: a Verifier or a conf/verify/*.yaml config
    (name none | mc | cot_binary | cot_score | tournament | all_of). The same inputs and seed give the
    same result. Gold answers are never seen here.
    """
    verifier = build_verifier(verify_cfg)
    name = verifier.name
    if isinstance(verifier, NoVerifier):
        kept = [[True] * len(it["responses"]) for it in items]
        details = [[{"score": None, "kept": True} for _ in row] for row in kept]
        none = [[None] * len(row) for row in kept]
        return VerifyResult(none, kept, [], {"verifier": "none", **_counts(kept, none)}, details)
    if isinstance(verifier, AllOf):
        members = {m: _single(judge, items, v, derive_seed(seed, "all_of", m)) for m, v in verifier.members.items()}
        if not members:
            raise ValueError("verify=all_of needs at least one verifier under verify.verifiers")
        scores, kept, reasons, details = [], [], [], []
        for i, it in enumerate(items):
            n = len(it["responses"])
            scores.append([min(js[i][s].score for js, _, _ in members.values()) for s in range(n)])
            kept.append([all(k[i][s] for _, k, _ in members.values()) for s in range(n)])
            reasons.append([[f"{m}:{r[i][s]}" for m, (_, _, r) in members.items() if r[i][s]] for s in range(n)])
            details.append([{"score": scores[i][s], "kept": kept[i][s],
                              "members": {m: _detail(js[i][s], k[i][s], r[i][s]) for m, (js, k, r) in members.items()}}
                             for s in range(n)])
        counts = {"verifier": "all_of", **_counts(kept, reasons),
                  "invalid": sum(any(not js[i][s].valid for js, _, _ in members.values())
                                 for i, it in enumerate(items) for s in range(len(it["responses"]))),
                  "per_verifier": {m: _counts(k, r, js) for m, (js, k, r) in members.items()}}
    else:
        js, kept, why = _single(judge, items, verifier, seed)
        scores = [[j.score for j in row] for row in js]
        reasons = [[[r] if r else [] for r in row] for row in why]
        details = [[_detail(j, k, r) for j, k, r in zip(*rows)] for rows in zip(js, kept, why)]
        counts = {"verifier": name, **_counts(kept, why, js)}
    rejections = []
    for i, it in enumerate(items):
        answers = it.get("answers") or [None] * len(it["responses"])
        for s, ok in enumerate(kept[i]):
            if not ok:
                raw = details[i][s].get("raw")
                rejections.append({"id": it.get("id", i), "sample": s, "answer": answers[s], "score": scores[i][s],
                                   "reasons": reasons[i][s], "verifier": name,
                                   "judge": raw[:_RAW_CHARS] if isinstance(raw, str) else None})
    return VerifyResult(scores, kept, rejections, counts, details)
