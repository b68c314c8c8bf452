"""What the stand-in reproduces of vLLM (V1 engine), read against vLLM's sources:

- LLM(model, tensor_parallel_size, dtype, seed, gpu_memory_utilization, max_model_len, data_parallel_size, ...):
  every keyword is recorded. data_parallel_size > 1 in one process raises as vLLM does since PR #27282
  (vllm/entrypoints/llm.py: "LLM(data_parallel_size=...) is not supported for single-process usage"; use one
  process per rank) unless distributed_executor_backend="external_launcher".
- generate(prompts, sampling_params) / chat(messages, sampling_params, chat_template=..., add_generation_prompt=...):
  one SamplingParams or one per prompt; returns one RequestOutput per prompt, in order, with .outputs[j].text.
- Seeds (vllm/v1/engine/parallel_sampling.py, ParentRequest._get_child_sampling_params): child j of a request with
  seed s samples with seed s + j; a request with seed None draws from the engine's global RNG (LLM(seed=...)).
  A sample's text is a deterministic function of (rendered prompt, stream seed), so identical prompt + seed gives
  identical text, and the number of distinct streams can be counted. temperature 0 is greedy (seed ignored).
- llm.llm_engine.engine_core.shutdown() (V1's EngineCoreClient.shutdown) is recorded.

Every call is appended to CALLS (and, when the environment variable FAKE_VLLM_LOG names a file, to that JSONL file,
so worker processes' calls can be read by the test).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict

from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

CALLS: list[dict] = []

_WORDS = ("apples", "trains", "pencils", "marbles", "cookies", "books", "coins", "tickets", "bottles", "flowers")
_NAMES = ("Ann", "Ben", "Carla", "Dev", "Eli", "Fatima", "Gus", "Hana")
# a small pool the bait sampling draws from now and then, so exact duplicates reach the dedup
_COMMON = [f"A shop sells {k} {w} each day. How many {w} does it sell in a week?" for k in range(3, 8) for w in _WORDS[:4]]


def reset() -> None:
    CALLS.clear()


def _log(record: dict) -> None:
    CALLS.append(record)
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _digest(prompt: str, stream) -> bytes:
    return hashlib.sha256(f"{prompt}\x00{stream}".encode()).digest()


def complete(prompt: str, stream, params: SamplingParams) -> str:
    """The text of one sample: a function of (prompt, stream) only."""
    h = _digest(prompt, "greedy" if params.temperature == 0 else stream)
    a, b, who, what = h[1] % 90 + 2, h[2] % 90 + 2, _NAMES[h[3] % len(_NAMES)], _WORDS[h[4] % len(_WORDS)]
    tag = h[5:9].hex()
    if "Verdict" in prompt or "verdict" in prompt:
        text = f"The steps check out ({tag}). Verdict: {'correct' if h[6] % 2 else 'incorrect'}"
    elif "#### Answer" in prompt or "step by step" in prompt:
        text = f"{who} has {a} {what} and gets {b} more ({tag}), so {a} + {b} = {a + b}.\n#### Answer: {a + b}"
    elif h[0] < 26:
        text = _COMMON[h[7] % len(_COMMON)]
    else:
        text = f"{who} has {a} {what} and buys {b} more at the {tag} market. How many {what} does {who} have now?"
    words = text.split(" ")
    if params.max_tokens is not None:
        text = " ".join(words[: params.max_tokens])
    for s in [params.stop] if isinstance(params.stop, str) else (params.stop or []):
        if s and s in text:
            text = text[: text.index(s)]
    return text


def render(messages: list[dict], chat_template: str | None, add_generation_prompt: bool) -> str:
    text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


class _EngineCore:
    def __init__(self):
        self.alive = True

    def shutdown(self) -> None:
        self.alive = False
        _log({"method": "shutdown", "pid": os.getpid()})


class _LLMEngine:
    def __init__(self):
        self.engine_core = _EngineCore()


class LLM:
    def __init__(self, model: str, *, tensor_parallel_size: int = 1, dtype: str = "auto", seed: int | None = 0,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, data_parallel_size: int = 1,
                 enforce_eager: bool = False, trust_remote_code: bool = False, revision: str | None = None,
                 distributed_executor_backend: str | None = None, **kwargs):
        if data_parallel_size > 1 and distributed_executor_backend != "external_launcher":
            raise ValueError(f"LLM(data_parallel_size={data_parallel_size}) is not supported for single-process "
                             "usage and may hang. Please use the explicit multi-process data-parallel example.")
        self.kwargs = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                           gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                           data_parallel_size=data_parallel_size, enforce_eager=enforce_eager,
                           trust_remote_code=trust_remote_code, revision=revision, **kwargs)
        self._rng = random.Random(seed)
        self.llm_engine = _LLMEngine()
        _log({"method": "LLM", "kwargs": self.kwargs, "pid": os.getpid(),
              "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})

    def _run(self, method: str, prompts: list[str], sampling_params, extra: dict) -> list[RequestOutput]:
        if not self.llm_engine.engine_core.alive:
            raise RuntimeError("the engine was shut down")
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        outs, streams = [], []
        for i, (prompt, sp) in enumerate(zip(prompts, params)):
            children = []
            for j in range(sp.n):
                stream = ("global", self._rng.getrandbits(64)) if sp.seed is None else sp.seed + j
                streams.append([prompt, stream])
                children.append(CompletionOutput(index=j, text=complete(prompt, stream, sp)))
            outs.append(RequestOutput(str(i), prompt, None, None, children))
        _log({"method": method, "pid": os.getpid(), "prompts": prompts, "params": [asdict(p) for p in params],
              "streams": streams, **extra})
        return outs

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None, **kwargs) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self._run("generate", prompts, sampling_params, {})

    def chat(self, messages, sampling_params=None, use_tqdm=True, lora_request=None, chat_template=None,
             add_generation_prompt=True, **kwargs) -> list[RequestOutput]:
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        rendered = [render(list(c), chat_template, add_generation_prompt) for c in convs]
        return self._run("chat", rendered, sampling_params, {"chat_template": chat_template,
                                                           "add_generation_prompt": add_generation_prompt})
