"""A backend and a verifier crescent does not ship, named only by the YAMLs in tests/plugin_conf (their `_target_`):
tests/test_plugins.py runs them through the pipeline to show that adding one needs no edit of crescent."""
from __future__ import annotations

from crescent.backends.hf import HFBackend
from crescent.verify.verifiers import Judgement, Verifier

BUILT: list[dict] = []  # what each from_config call was given


class MarkedBackend:
    """The tiny model's own text (crescent's HF backend), then a final answer marker: for the robe question '3',
    for the others '18' in sample 0 and '5' after it (GSM8K's first two test questions: golds 18 and 3)."""

    def __init__(self, inner: HFBackend):
        self.inner = inner

    @classmethod
    def from_config(cls, backend_cfg, model_cfg, cache_dir, seed=0):
        BUILT.append({"backend": dict(backend_cfg), "model": model_cfg["name"], "seed": seed})
        return cls(HFBackend.from_config(backend_cfg, model_cfg, cache_dir))

    def generate(self, prompts, params, seed):
        texts = self.inner.generate(prompts, params, seed)
        return [[f"{t}\n#### {'3' if 'robe' in str(p).rsplit('Question:', 1)[-1] else (18 if j == 0 else 5)}"
                 for j, t in enumerate(row)] for p, row in zip(prompts, texts)]


class FirstSample(Verifier):
    """Judges sample 0 of every question correct (score 1.0) and the others not (`bonus` added to every score)."""

    def judgements(self, judge, items, seed):
        bonus = float(self.cfg.get("bonus", 0.0))
        return [[Judgement(min(1.0, (1.0 if s == 0 else 0.0) + bonus), True, extra={"seed": seed})
                 for s in range(len(it["responses"]))] for it in items]
