"""Generation with vLLM on CUDA GPUs (the scale path). vllm is imported only here."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from crescent.backends.base import Prompt, SamplingParams


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "backend=vllm needs the `vllm` package: on a CUDA machine run `pip install -e .[gpu]` "
            "(or use backend=hf)"
        ) from err
    return vllm


class VLLMBackend:
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
        revision = model_cfg.get("revision")
        extra = {"revision": revision} if revision and not Path(model_dir).is_dir() else {}
        llm = vllm.LLM(
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

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        # one seed per prompt: deterministic, and prompts don't share a random stream
        results: list[list[str]] = [[] for _ in prompts]
        if chats:
            outs = self.llm.chat(
                [list(prompts[i]) for i in chats],
                [self._sampling(params, seed + i) for i in chats],
                chat_template=self.chat_template,
                add_generation_prompt=True,
                use_tqdm=True,
            )
            for i, out in zip(chats, outs):
                results[i] = [o.text for o in out.outputs]
        if texts:
            outs = self.llm.generate([prompts[i] for i in texts], [self._sampling(params, seed + i) for i in texts])
            for i, out in zip(texts, outs):
                results[i] = [o.text for o in out.outputs]
        return results
