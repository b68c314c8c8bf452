"""The verifiers: each scores every sample of every item in [0, 1] with the model as its own judge.

Each is `fn(judge, items, vcfg, seed) -> [[Judgement per sample] per item]`, wrapped by a `Verifier` class that
conf/verify/<name>.yaml names in its `_target_` (MC, CotBinary, CotScore, Tournament; AllOf, NoVerifier).
- mc: p(positive) / (p(positive) + p(negative)) of the continuations after the prompt (default
  " Correct" / " Incorrect"), from log-likelihoods (the full continuation, so multi-token words work).
- cot_binary: the judge reasons, then "Verdict: correct|incorrect" -> 1.0 / 0.0.
- cot_score: the judge reasons, then "Score: N" with N in [score_min, score_max] -> (N - min) / (max - min).
- tournament: single-elimination knockout among one item's samples (pairs in sample order, an odd
  one out gets a bye and opens the next round); score = rounds survived / ceil(log2 n) (champion 1.0, first-round losers 0.0;
  one sample: 1.0). A/B order is swapped by a seeded coin per match against position bias; an
  unparseable verdict is decided by a seeded coin and recorded (match invalid, sample still valid).
Unparseable CoT verdicts give valid=False, score 0.0 and the parser's reason.
"""
from __future__ import annotations

import math
import random
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from crescent.backends.base import Prompt, SamplingParams
from crescent.utils.seeding import derive_seed, request_seeds
from crescent.verify.parse import parse_binary, parse_choice, parse_score


@dataclass
class Judgement:
    score: float  # in [0, 1]; 0.0 when invalid
    valid: bool
    reason: str | None = None  # why invalid (parser reason)
    raw: str | None = None  # the judge's text (CoT verifiers)
    extra: dict = field(default_factory=dict)  # verifier-specific detail (mc log-probs, tournament matches)


def fill(template: str, **fields: str) -> str:
    """template with each literal '{name}' replaced in one pass (no str.format: other braces stay as
    written, and a placeholder inside a filled-in value is not replaced again)."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, fields)) + r")\}")
    return pattern.sub(lambda m: fields[m.group(1)], template)


def clip(text: str, max_chars: int | None) -> str:
    """text, with its middle dropped when longer than max_chars (the start and the final answer stay)."""
    text = (text or "").strip()
    if not max_chars or len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + " ... " + text[-half:]


def as_prompt(text: str, vcfg: Mapping[str, Any]) -> Prompt:
    return [{"role": "user", "content": text}] if vcfg.get("format", "text") == "chat" else text


def _params(vcfg: Mapping[str, Any]) -> SamplingParams:
    s = vcfg.get("sampling") or {}
    return SamplingParams(n=1, temperature=float(s.get("temperature", 0.0)), top_p=float(s.get("top_p", 1.0)),
                          max_new_tokens=int(s.get("max_new_tokens", 128)), stop=tuple(s.get("stop") or ()))


def _sample_prompts(items: Sequence[Mapping], vcfg: Mapping[str, Any]) -> list[Prompt]:
    cap = vcfg.get("max_response_chars")
    return [as_prompt(fill(vcfg["prompt"], question=str(it["question"]).strip(), response=clip(r, cap)), vcfg)
            for it in items for r in it["responses"]]


def _unflatten(flat: list, items: Sequence[Mapping]) -> list[list]:
    out, i = [], 0
    for it in items:
        out.append(flat[i: i + len(it["responses"])])
        i += len(it["responses"])
    return out


def _generate(judge, prompts: list[Prompt], vcfg: Mapping[str, Any], seed: int, desc: str, bar=None) -> list[str]:
    """One greedy/sampled judgement per prompt: in ONE call with a seed per prompt where the judge's backend takes
    per-request seeds (vLLM: prompt i gets its own stream, crescent.utils.seeding.request_seeds), else in chunks of
    vcfg.chunk, each seeded by its chunk index (progress on `bar`, or a new one)."""
    params, size = _params(vcfg), int(vcfg.get("chunk") or 64)
    texts: list[str] = []
    with (tqdm(total=len(prompts), desc=desc, unit="judgement") if bar is None else nullcontext(bar)) as bar:
        if prompts and getattr(getattr(judge, "backend", judge), "per_request_seeds", False):
            outs = judge.generate(prompts, params, request_seeds(seed, (desc,), 0, len(prompts), 1))
            bar.update(len(outs))
            return [o[0] for o in outs]
        for c, lo in enumerate(range(0, len(prompts), size)):
            outs = judge.generate(prompts[lo: lo + size], params, derive_seed(seed, desc, c))
            texts += [o[0] for o in outs]
            bar.update(len(outs))
    return texts


def mc(judge, items: Sequence[Mapping], vcfg: Mapping[str, Any], seed: int) -> list[list[Judgement]]:
    prompts = _sample_prompts(items, vcfg)
    pos, neg = str(vcfg.get("positive", " Correct")), str(vcfg.get("negative", " Incorrect"))
    size = int(vcfg.get("chunk") or 64)
    out: list[Judgement] = []
    with tqdm(total=len(prompts), desc="verify mc", unit="sample") as bar:
        for lo in range(0, len(prompts), size):
            chunk = prompts[lo: lo + size]
            lls = judge.loglik([r for p in chunk for r in ((p, pos), (p, neg))])
            for lp, ln in zip(lls[::2], lls[1::2]):
                score = 1.0 / (1.0 + math.exp(min(ln - lp, 700.0)))  # sigmoid(lp - ln), overflow-safe
                out.append(Judgement(score, True, extra={"logp_positive": lp, "logp_negative": ln}))
            bar.update(len(chunk))
    return _unflatten(out, items)


def cot_binary(judge, items: Sequence[Mapping], vcfg: Mapping[str, Any], seed: int) -> list[list[Judgement]]:
    texts = _generate(judge, _sample_prompts(items, vcfg), vcfg, seed, "verify cot_binary")
    out = []
    for t in texts:
        verdict, reason = parse_binary(t)
        out.append(Judgement(float(bool(verdict)), verdict is not None, reason, t))
    return _unflatten(out, items)


def cot_score(judge, items: Sequence[Mapping], vcfg: Mapping[str, Any], seed: int) -> list[list[Judgement]]:
    lo, hi = float(vcfg.get("score_min", 1)), float(vcfg.get("score_max", 10))
    texts = _generate(judge, _sample_prompts(items, vcfg), vcfg, seed, "verify cot_score")
    out = []
    for t in texts:
        value, reason = parse_score(t, lo, hi)
        score = 0.0 if value is None else (value - lo) / (hi - lo)
        out.append(Judgement(score, value is not None, reason, t, {"raw_score": value}))
    return _unflatten(out, items)


def tournament(judge, items: Sequence[Mapping], vcfg: Mapping[str, Any], seed: int) -> list[list[Judgement]]:
    cap = vcfg.get("max_response_chars")
    rngs = [random.Random(derive_seed(seed, "tournament", i)) for i in range(len(items))]
    alive = [list(range(len(it["responses"]))) for it in items]
    survived = [[0] * len(it["responses"]) for it in items]
    matches: list[list[list[dict]]] = [[[] for _ in it["responses"]] for it in items]
    total = sum(max(len(a) - 1, 0) for a in alive)
    with tqdm(total=total, desc="verify tournament", unit="match") as bar:
        rnd = 0
        while any(len(a) > 1 for a in alive):
            rnd += 1
            games = []  # (item, first, second, swapped)
            for i, a in enumerate(alive):
                for k in range(0, len(a) - 1, 2):
                    games.append((i, a[k], a[k + 1], rngs[i].random() < 0.5))
            prompts = []
            for i, x, y, swap in games:
                ra, rb = (y, x) if swap else (x, y)
                text = fill(vcfg["prompt"], question=str(items[i]["question"]).strip(),
                            response_a=clip(items[i]["responses"][ra], cap), response_b=clip(items[i]["responses"][rb], cap))
                prompts.append(as_prompt(text, vcfg))
            texts = _generate(judge, prompts, vcfg, derive_seed(seed, "round", rnd), "verify tournament", bar)
            winners: dict[int, set[int]] = {i: set() for i in range(len(items))}
            for (i, x, y, swap), t in zip(games, texts):
                choice, reason = parse_choice(t)
                pick = choice if choice is not None else ("A" if rngs[i].random() < 0.5 else "B")
                first_won = (pick == "A") != swap
                win, lose = (x, y) if first_won else (y, x)
                winners[i].add(win)
                for s, won in ((win, True), (lose, False)):
                    matches[i][s].append({"round": rnd, "vs": lose if won else win, "won": won,
                                          "invalid": reason, "raw": t})
            for i, a in enumerate(alive):
                if len(a) > 1:
                    bye = [a[-1]] if len(a) % 2 else []  # first next round, so byes rotate
                    alive[i] = bye + [s for s in a if s in winners[i]]
                    for s in alive[i]:
                        survived[i][s] += 1
    out = []
    for i, it in enumerate(items):
        n = len(it["responses"])
        rounds = math.ceil(math.log2(n)) if n > 1 else 0
        out.append([Judgement(survived[i][s] / rounds if rounds else 1.0, True, None, None,
                              {"rounds_survived": survived[i][s], "rounds": rounds, "matches": matches[i][s]})
                    for s in range(n)])
    return out


class Verifier:
    """A self-verifier, built from its conf/verify/<name>.yaml by `build_verifier` (hydra.utils.instantiate of the
    YAML's `_target_`), the YAML's keys (name, filter, threshold, quantile, prompt, sampling...) as its settings.

    `judgements(judge, items, seed)` scores every response of every item ([[Judgement per response] per item]);
    `verify` then keeps or rejects them by the settings' filter (crescent.verify.core.verify_samples). A new
    verifier is a subclass with its own `judgements` and a YAML whose `_target_` names it."""

    def __init__(self, name: str, **settings: Any):
        self.name = str(name)
        self.cfg: dict[str, Any] = {"name": self.name, **settings}

    def judgements(self, judge, items: Sequence[Mapping], seed: int) -> list[list[Judgement]]:
        raise NotImplementedError(f"{type(self).__name__} (verify.name={self.name!r}) does not define judgements()")

    def make_judge(self, backend, run_cfg: Mapping[str, Any]):
        """The judge for this run: `backend` (or a factory for it) generates, log-likelihoods from the model."""
        from crescent.verify.judge import build_judge

        return build_judge(backend, run_cfg)

    def verify(self, judge, items: Sequence[Mapping], seed: int = 0):
        """crescent.verify.core.VerifyResult: scores, kept, rejections, counts of every response."""
        from crescent.verify.core import verify_samples

        return verify_samples(judge, items, self, seed)


class MC(Verifier):
    def judgements(self, judge, items, seed):
        return mc(judge, items, self.cfg, seed)


class CotBinary(Verifier):
    def judgements(self, judge, items, seed):
        return cot_binary(judge, items, self.cfg, seed)


class CotScore(Verifier):
    def judgements(self, judge, items, seed):
        return cot_score(judge, items, self.cfg, seed)


class Tournament(Verifier):
    def judgements(self, judge, items, seed):
        return tournament(judge, items, self.cfg, seed)


class NoVerifier(Verifier):
    """verify=none: every response is kept."""


class AllOf(Verifier):
    """AND of the verifiers under `verifiers` (each built from its own _target_): kept when every member keeps it."""

    @property
    def members(self) -> dict[str, Verifier]:
        return dict(self.cfg.get("verifiers") or {})
