"""Generation with vLLM on CUDA GPUs (the scale path). vllm is imported only here.

Seeds: `generate(prompts, params, seed)` takes one seed per prompt (a list; crescent.utils.seeding.request_seeds)
and sends each request its own seed; vLLM's V1 engine then seeds child j of a request with seed + j
(vllm/v1/engine/parallel_sampling.py), so disjoint per-request ranges give every sample its own stream. An int seed
gives prompt i the request seed seed + i * n (the same disjoint layout inside one call).

Trade-off: a request with a seed is sampled with its own torch.Generator (vLLM's sampler draws the seeded rows one
by one), a little slower per step than the unseeded batched path, which draws every row from the engine's global
generator. Unseeded rows, though, depend on which requests share each step (batch order, preemption, data-parallel
placement), so they are neither reproducible nor split-independent; Crescent pays the seeded path for rows that do
not depend on how the stage is split into calls, GPUs or nodes. The token cost is unchanged (same tokens decoded);
the measured cost on the stand-in is what is sent: one request per prompt with n children (not n requests).

Data parallel: vLLM refuses LLM(data_parallel_size > 1) inside one process (vllm PR #27282: "not supported for
single-process usage"); its documented offline pattern is one process per data-parallel rank. backend.
data_parallel_size=D therefore runs D engine processes (crescent.synth.workers), each seeing its own
tensor_parallel_size GPUs through CUDA_VISIBLE_DEVICES, on disjoint units of the stage.
"""
from __future__ import annotations

import gc
import logging
from contextlib import suppress
from pathlib import Path
from typing import Any, Mapping, Sequence

from crescent.backends.base import Prompt, SamplingParams

log = logging.getLogger(__name__)


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "backend=vllm needs the `vllm` package: on a CUDA machine run `pip install -e .[gpu]` "
            "(or use backend=hf)"
        ) from err
    return vllm


def engine_kwargs(backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], model_dir: str, seed: int) -> dict:
    """The keyword arguments of vllm.LLM for one engine (one data-parallel rank)."""
    revision = model_cfg.get("revision")
    extra = {"revision": revision} if revision and not Path(model_dir).is_dir() else {}
    return dict(
        model=model_dir,
        tensor_parallel_size=int(backend_cfg.get("tensor_parallel_size", 1)),
        seed=seed,
        dtype=backend_cfg.get("dtype") or "auto",
        gpu_memory_utilization=float(backend_cfg.get("gpu_memory_utilization", 0.9)),
        max_model_len=backend_cfg.get("max_model_len"),
        enforce_eager=bool(backend_cfg.get("enforce_eager", False)),
        trust_remote_code=bool(model_cfg.get("trust_remote_code") or False),
        **extra,
    )


class VLLMBackend:
    per_request_seeds = True  # crescent.backends.units: one call per stage, a seed per request

    def __init__(self, llm, chat_template: str | None = None):
        self.vllm = import_vllm()
        self.llm = llm
        self.chat_template = chat_template

    @classmethod
    def from_config(
        cls, backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], cache_dir: str | Path | None, seed: int = 0
    ):
        vllm = import_vllm()
        from crescent.models.loading import resolve_model_dir

        model_dir = resolve_model_dir(model_cfg, cache_dir)
        llm = vllm.LLM(**engine_kwargs(backend_cfg, model_cfg, str(model_dir), seed))
        return cls(llm, chat_template=model_cfg.get("chat_template"))

    def _sampling(self, params: SamplingParams, seed: int):
        return self.vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop),
            seed=seed,
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int | Sequence[int]) -> list[list[str]]:
        if self.llm is None:
            raise RuntimeError("VLLMBackend.generate after close(): the engine was shut down")
        if isinstance(seed, int):
            seeds = [seed + i * params.n for i in range(len(prompts))]  # disjoint [s, s + n) child ranges
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        results: list[list[str]] = [[] for _ in prompts]
        if chats:
            outs = self.llm.chat(
                [list(prompts[i]) for i in chats],
                [self._sampling(params, seeds[i]) for i in chats],
                chat_template=self.chat_template,
                add_generation_prompt=True,
                use_tqdm=True,
            )
            for i, out in zip(chats, outs):
                results[i] = [o.text for o in out.outputs]
        if texts:
            outs = self.llm.generate([prompts[i] for i in texts], [self._sampling(params, seeds[i]) for i in texts])
            for i, out in zip(texts, outs):
                results[i] = [o.text for o in out.outputs]
        return results

    def close(self) -> None:
        """Shut the engine down and give its GPU memory back (idempotent).

        LLM.shutdown() where this vLLM has it, else the V1 engine core client's shutdown() (stops the EngineCore
        process that holds the weights and KV cache); then the model-parallel groups, gc and the CUDA cache."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        else:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and callable(getattr(core, "shutdown", None)):
                core.shutdown()
        del llm
        with suppress(Exception):
            from vllm.distributed.parallel_state import destroy_model_parallel

            destroy_model_parallel()
        gc.collect()
        with suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("vLLM engine shut down")

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
