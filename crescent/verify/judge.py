"""The model as its own judge: generation (CoT verifiers, tournament) and continuation log-likelihoods (MC).

`Judge` is the interface `verify_samples` uses; `HFJudge` implements it with a generation backend plus
a plain forward of the HF model (the backend's own `.model` when it has one, e.g. backend=hf; else
the same model loaded once more with transformers, e.g. for backend=vllm|fast).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from crescent.backends.base import Backend, Prompt, SamplingParams


class Judge(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        """As Backend.generate."""
        ...

    def loglik(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        """Sum of log p(continuation tokens | context) for each (context, continuation)."""
        ...


Requests = list[tuple[int, list[int]]]  # (request index, continuation tokens)


def _plan(groups: dict[tuple[int, ...], Requests]) -> list[tuple[list[int], list[tuple[int, int, list[int]]]]]:
    """Forward passes for requests grouped by context: [(sequence, [(request, start, continuation)])].

    One pass over context + d scores every continuation c of that context whose tokens but the last
    are a prefix of d (a one-token continuation is read at the context's last position), so
    " Correct" and " Incorrect" (two tokens in SmolLM2's vocabulary) need one pass, not two."""
    passes = []
    for ctx, reqs in groups.items():
        todo = sorted(reqs, key=lambda r: -len(r[1]))
        while todo:
            longest = todo[0][1]
            covered = [r for r in todo if r[1][:-1] == longest[: len(r[1]) - 1]]
            passes.append((list(ctx) + longest, [(i, len(ctx), cont) for i, cont in covered]))
            todo = [r for r in todo if r not in covered]
    return passes


class HFJudge:
    """Generation through `backend`; log-likelihoods from the backend's `.model`/`.tokenizer` when it has
    them, else from `load() -> (tokenizer, model)`.

    `backend` may be a zero-argument factory: it is then built on the first generation only, so an MC
    judgement of cached samples never starts a generation engine (e.g. vLLM next to a second HF copy)."""

    def __init__(self, backend: Backend | Callable[[], Backend], load: Callable[[], tuple[Any, Any]] | None = None,
                 batch_size: int = 8, max_length: int | None = None):
        lazy = callable(backend) and not hasattr(backend, "generate")
        self._factory = backend if lazy else None
        self._backend = None if lazy else backend
        self._load = load
        self._model = self._tokenizer = None
        self.batch_size = int(batch_size)
        self.max_length = max_length

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        return self.backend.generate(prompts, params, seed)

    def _lm(self):
        if self._model is None:
            b = self._backend if self._load is not None else self.backend  # build a lazy backend only without a loader
            if getattr(b, "model", None) is not None and getattr(b, "tokenizer", None) is not None:
                self._model, self._tokenizer = b.model, b.tokenizer
            elif self._load is not None:
                self._tokenizer, self._model = self._load()
                self._model.eval()
            else:
                raise RuntimeError("log-likelihood verification needs an HF model: the backend has none "
                                   "and no loader was given")
        return self._model, self._tokenizer

    def _context_ids(self, prompt: Prompt) -> list[int]:
        _, tok = self._lm()
        if isinstance(prompt, str):
            return tok(prompt).input_ids
        text = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False).input_ids

    def loglik(self, requests: Sequence[tuple[Prompt, str]]) -> list[float]:
        import torch

        model, tok = self._lm()
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (ctx, cont) in enumerate(requests):
            cont_ids = tok(cont, add_special_tokens=False).input_ids
            if not cont_ids:
                raise ValueError(f"continuation {cont!r} has no tokens")
            groups.setdefault(tuple(self._context_ids(ctx)), []).append((i, cont_ids))
        passes = sorted(_plan(groups), key=lambda p: -len(p[0]))
        limit = self.max_length or int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        out = [0.0] * len(requests)
        device = next(model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with torch.inference_mode():
            for lo in range(0, len(passes), self.batch_size):
                batch = passes[lo: lo + self.batch_size]
                cut = [max(0, len(seq) - limit) if limit else 0 for seq, _ in batch]  # drop the oldest tokens
                seqs = [seq[c:] for (seq, _), c in zip(batch, cut)]
                width = max(map(len, seqs))
                ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
                mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
                for b, ((_, reqs), c) in enumerate(zip(batch, cut)):
                    for i, start, cont in reqs:
                        pos = torch.arange(start - c - 1, start - c - 1 + len(cont), device=device)
                        out[i] = float(logp[b, pos, torch.tensor(cont, device=device)].sum())
        return out


def build_judge(backend: Backend | Callable[[], Backend], cfg: Mapping[str, Any]) -> HFJudge:
    """The judge for run config `cfg`: `backend` (or a factory for it) generates; log-likelihoods come from
    the backend's HF model when it is already built, else from cfg.teacher loaded with transformers on
    verify.device (only if MC needs it; for all_of the mc member's device/dtype/batch_size apply)."""
    verify = cfg.get("verify") or {}
    if verify.get("name") == "all_of":
        verify = (verify.get("verifiers") or {}).get("mc") or {}

    def load():
        from crescent.models.loading import load_model_and_tokenizer

        device = verify.get("device") or cfg.backend.get("device") or "cpu"
        if cfg.backend.get("name") == "vllm" and not verify.get("device"):
            device = "cuda"
        return load_model_and_tokenizer(cfg.teacher, cfg.paths.cache_dir, dtype=verify.get("dtype"), device=device)

    return HFJudge(backend, load, batch_size=int(verify.get("batch_size") or 8), max_length=verify.get("max_length"))
