"""Generation with transformers `model.generate`: CPU or a single GPU, batched with left padding.

Out of memory in a batch halves the batch size for the rest of that call and retries (down to 1).
Greedy outputs do not depend on the batch size; sampled ones are seeded per batch, so they then
depend on where memory ran out.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, StopStringCriteria, StoppingCriteriaList

from crescent.backends.base import Prompt, SamplingParams

log = logging.getLogger(__name__)
_OOM_MESSAGES = ("out of memory", "DefaultCPUAllocator: can't allocate memory")


def is_oom(err: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA) or the RuntimeError a CPU allocation failure raises."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(err, oom_type) or (isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """text up to (not including) the earliest stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


class FastSampler(LogitsProcessor):
    """Temperature + top-p sampling inside a logits processor; greedy `generate` then picks the sample.

    The distribution of generate(do_sample=True, temperature, top_p), without its full-vocabulary sort and
    torch.multinomial, which on CPU cost more than a SmolLM2 forward step at batch 32. The nucleus is
    searched among the `candidates` most likely tokens first (all of them if those hold less than top_p).
    Returns scores that are 0 at the sampled token and -inf elsewhere.
    """

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator, candidates: int = 256):
        self.temperature, self.top_p, self.generator, self.candidates = temperature, top_p, generator, candidates

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        tokens = self._nucleus(probs) if self.top_p < 1.0 else self._full(probs)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)

    def _full(self, probs: torch.Tensor) -> torch.Tensor:
        cdf = probs.double().cumsum(dim=-1)
        u = torch.rand(probs.shape[0], 1, generator=self.generator, device=probs.device, dtype=cdf.dtype)
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=probs.shape[-1] - 1)

    def nucleus(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, token ids): the top-p nucleus of each row, most likely first, zero weight outside it."""
        top, index = probs.topk(min(self.candidates, probs.shape[-1]), dim=-1)  # sorted, most likely first
        if bool((top.sum(dim=-1) < self.top_p).any()):  # a flat row: its nucleus may be larger
            top, index = probs.sort(dim=-1, descending=True)
        # keep the smallest most-likely prefix holding >= top_p (as transformers' TopPLogitsWarper)
        return top.masked_fill(top.cumsum(dim=-1) - top >= self.top_p, 0.0), index

    def _nucleus(self, probs: torch.Tensor) -> torch.Tensor:
        weights, index = self.nucleus(probs)
        return index.gather(1, torch.multinomial(weights, 1, generator=self.generator))


class HFBackend:
    def __init__(self, model, tokenizer, batch_size: int = 32, device: str = "cpu", sort_by_length: bool = True):
        if batch_size < 1:
            raise ValueError(f"backend.batch_size={batch_size}; must be >= 1")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = int(batch_size)
        self.device = device
        self.sort_by_length = bool(sort_by_length)
        self._stop_cache: dict[tuple[str, ...], StopStringCriteria] = {}
        self.last_stats: dict[str, float] = {}  # sequences, new_tokens, seconds of the last generate call

    @classmethod
    def from_config(cls, backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], cache_dir: str | Path | None,
                    seed: int = 0):
        from crescent.models.loading import load_model_and_tokenizer

        device = backend_cfg.get("device") or "cpu"
        tokenizer, model = load_model_and_tokenizer(model_cfg, cache_dir, dtype=backend_cfg.get("dtype"), device=device)
        return cls(
            model,
            tokenizer,
            batch_size=backend_cfg.get("batch_size", 32),
            device=device,
            sort_by_length=backend_cfg.get("sort_by_length", True),
        )

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        # the chat template already holds the special tokens
        text = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _left_pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        width, pad = max(map(len, ids)), self.tokenizer.pad_token_id
        input_ids = [[pad] * (width - len(x)) + x for x in ids]
        mask = [[0] * (width - len(x)) + [1] * len(x) for x in ids]
        return {
            "input_ids": torch.tensor(input_ids, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
        }

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        # sampling happens in FastSampler (added per batch), so generate itself always runs greedy
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([self._stop_criteria(tuple(params.stop))])
        return kwargs

    def _stop_criteria(self, stop: tuple[str, ...]) -> StopStringCriteria:
        # What generate(stop_strings=..., tokenizer=...) builds, but built once: it scans the whole vocab
        # (~0.6 s for SmolLM2's), which generate would repeat for every batch.
        if stop not in self._stop_cache:
            self._stop_cache[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return self._stop_cache[stop]

    def _count_new_tokens(self, new_ids: torch.Tensor) -> int:
        """Tokens generated per row, up to and including the first eos/pad."""
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id} - {None}
        done = torch.zeros_like(new_ids, dtype=torch.bool)
        for token_id in stop_ids:
            done |= new_ids == token_id
        # a position counts if no stop token came strictly before it
        before = torch.cumsum(done.int(), dim=1) - done.int()
        return int((before == 0).sum())

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        if params.n < 1 or params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_new_tokens < 1:
            raise ValueError(
                f"bad sampling params {params}: need n >= 1, temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1"
            )
        greedy = params.temperature <= 0
        copies = 1 if greedy else params.n  # greedy copies are identical: generate once
        encoded = [self._encode(p) for p in prompts]
        rows = [i for i in range(len(prompts)) for _ in range(copies)]  # row -> prompt index
        order = list(range(len(rows)))
        if self.sort_by_length:  # longest first: less padding, and memory peaks show up early
            order.sort(key=lambda r: -len(encoded[rows[r]]))
        texts: list[str] = [""] * len(rows)
        kwargs = self._generate_kwargs(params)
        new_tokens, start = 0, time.perf_counter()
        bar = tqdm(total=len(rows), desc="generate", unit="seq", disable=None, leave=False)
        lo, batch_index, size = 0, 0, self.batch_size
        while lo < len(order):
            batch_rows = order[lo : lo + size]
            try:
                decoded, n_new = self._generate_batch([encoded[rows[r]] for r in batch_rows], params, kwargs,
                                                      seed + batch_index, greedy)
            except RuntimeError as err:
                if not is_oom(err) or size == 1:
                    raise
                size = max(1, len(batch_rows) // 2)
                log.warning("out of memory generating %d sequences; retrying with batch size %d for this call",
                            len(batch_rows), size)
                self._free_memory()
                continue
            for r, text in zip(batch_rows, decoded):
                texts[r] = cut_at_stop(text, params.stop)
            new_tokens += n_new
            lo, batch_index = lo + len(batch_rows), batch_index + 1
            bar.update(len(batch_rows))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.close()
        self.last_stats = dict(sequences=len(rows), new_tokens=new_tokens, seconds=time.perf_counter() - start)
        results: list[list[str]] = [[] for _ in prompts]
        for r, i in enumerate(rows):
            results[i].append(texts[r])
        return [res * params.n if greedy else res for res in results]

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams, kwargs: dict[str, Any], seed: int,
                        greedy: bool) -> tuple[list[str], int]:
        """(decoded new text per row, new tokens) of one left-padded batch, seeded by `seed`."""
        batch = self._left_pad(ids)
        sampler = [] if greedy else [self._sampler(params, seed)]
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seed)
            out = self.model.generate(**batch, **kwargs, logits_processor=LogitsProcessorList(sampler))
        new_ids = out[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_ids, skip_special_tokens=True), self._count_new_tokens(new_ids)

    def _free_memory(self) -> None:
        gc.collect()
        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sampler(self, params: SamplingParams, seed: int) -> FastSampler:
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return FastSampler(params.temperature, params.top_p, generator)

    def _rng_devices(self) -> list[int]:
        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            return [torch.device(self.device).index or torch.cuda.current_device()]
        return []
