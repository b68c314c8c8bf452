"""The vLLM stand-in's engine (tests only): `LLM`, `SamplingParams`, outputs, and a record of every call.

Reproduces what crescent and lm-eval's `vllm` model use of vLLM's offline API (V1 engine):
- `LLM(model=..., **engine_args)` keeps its engine args and a `llm_engine.model_config` (max_model_len from the
  argument or the folder's config.json), and records the construction in `CALLS`.
- `generate(prompts, sampling_params, use_tqdm=..., lora_request=...)`: prompts are strings or
  `TokensPrompt(prompt_token_ids=[...])`; one `SamplingParams` for all or one per prompt. Each request of n samples
  is split into n children with seed `seed + index` (V1 `_get_child_sampling_params`), and a sample's text is a
  function of (prompt, child seed) only: identical prompt + seed give identical text. temperature 0 is greedy:
  the text depends on the prompt alone. Without a request seed the engine's own generator advances per sample.
  Stop strings are cut off (not included), `max_tokens` caps the words. `prompt_logprobs` returns, per prompt
  position, {token: logprob} for the prompt token (what lm-eval's loglikelihood reads).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vllm.outputs import CompletionOutput, RequestOutput  # shared with the generation stand-in

CALLS: list[dict] = []  # every LLM construction and generate call, in order
WORDS = ("so", "the", "answer", "is", "we", "add", "then", "take", "away", "left", "total", "+", "=", "and", "each")


def reset() -> None:
    CALLS.clear()


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] | str | None = None
    seed: int | None = None
    prompt_logprobs: int | None = None
    logprobs: int | None = None
    detokenize: bool = True
    extra: dict = field(default_factory=dict)

    def __init__(self, n: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int | None = 16,
                 stop=None, seed: int | None = None, prompt_logprobs: int | None = None, logprobs: int | None = None,
                 detokenize: bool = True, **extra: Any):
        self.n, self.temperature, self.top_p, self.max_tokens = int(n), float(temperature), float(top_p), max_tokens
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.seed, self.prompt_logprobs, self.logprobs, self.detokenize = seed, prompt_logprobs, logprobs, detokenize
        self.extra = extra  # e.g. do_sample / until leftovers: kept, not interpreted


def _digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode()).digest()[:8], "big")


def _model_config(model: str, max_model_len: int | None, dtype: str) -> SimpleNamespace:
    config = Path(model) / "config.json"
    native = json.loads(config.read_text()).get("max_position_embeddings") if config.is_file() else None
    return SimpleNamespace(model=model, max_model_len=int(max_model_len or native or 2048), dtype=dtype)


class _EngineCore:
    """V1's engine-core client: shutdown() ends the engine process and frees its GPU memory (recorded here)."""

    def __init__(self, llm):
        self.llm_id, self.alive = id(llm), True

    def shutdown(self) -> None:
        self.alive = False
        CALLS.append({"method": "shutdown", "llm": self.llm_id})


class LLM:
    def __init__(self, model: str, **engine_args: Any):
        self.model = model
        self.engine_args = dict(engine_args)
        self.llm_engine = SimpleNamespace(
            model_config=_model_config(model, engine_args.get("max_model_len"), engine_args.get("dtype", "auto")),
            engine_core=_EngineCore(self))
        self._rng = random.Random(int(engine_args.get("seed") or 0))
        self._next_request = 0
        CALLS.append({"method": "LLM", "llm": id(self), "model": model, **self.engine_args})

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True, lora_request=None, **kwargs):
        single = isinstance(prompts, (str, dict))
        prompts = [prompts] if single else list(prompts)
        params = sampling_params if sampling_params is not None else SamplingParams()
        params = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"the number of sampling params ({len(params)}) must match the prompts ({len(prompts)})")
        outs = [self._request(p, sp) for p, sp in zip(prompts, params)]
        CALLS.append({"method": "generate", "llm": id(self), "prompts": prompts, "params": params,
                      "lora_request": lora_request, "outputs": outs})
        return outs

    def _request(self, prompt, sp: SamplingParams) -> RequestOutput:
        ids = list(prompt["prompt_token_ids"]) if isinstance(prompt, dict) else None
        text = None if isinstance(prompt, dict) else str(prompt)
        key = ids if ids is not None else text
        rid = str(self._next_request)
        self._next_request += 1
        outputs = []
        for index in range(sp.n):
            if sp.temperature == 0:
                stream = ("greedy",)
            elif sp.seed is not None:
                stream = ("seed", sp.seed + index)  # V1: child `index` samples with seed + index
            else:
                stream = ("engine", self._rng.getrandbits(63))
            outputs.append(self._sample(key, stream, sp, index))
        logprobs = None
        if sp.prompt_logprobs is not None and ids is not None:
            logprobs = [None] + [{tok: -0.01 - (_digest(ids[:i], tok) % 500) / 100} for i, tok in enumerate(ids)][1:]
        return RequestOutput(rid, text, ids, logprobs, outputs)

    @staticmethod
    def _sample(key, stream: tuple, sp: SamplingParams, index: int) -> CompletionOutput:
        rng = random.Random(_digest(key, stream, sp.top_p))
        limit = int(sp.max_tokens if sp.max_tokens is not None else 16)
        words = []
        for _ in range(limit):
            r = rng.random()
            words.append(str(rng.randint(0, 99)) if r < 0.25 else "\n\nQuestion:" if r < 0.3 else rng.choice(WORDS))
        text = " ".join(words)
        reason = "length"
        for stop in sp.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        tokens = [_digest(w) % 32000 for w in text.split()]
        return CompletionOutput(index, text if sp.detokenize else "", tokens, finish_reason=reason)
