"""lm-eval model for eval.generator=fast: HFLM whose generate_until runs on crescent's fast backend
(continuous batching over all requests of a task at once); log-likelihoods stay HFLM's plain forward.

Prompts are encoded and left-truncated exactly as HFLM does; the output is decoded and cut at the stop
strings (plus EOS) exactly as HFLM does. Greedy requests (lm-eval's math tasks) are seed-independent."""
from __future__ import annotations

import json
from collections import defaultdict

from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm.auto import tqdm

from crescent.backends.base import SamplingParams


class FastLM(HFLM):
    def __init__(self, backend, batch_size: int, max_length: int, seed: int = 0):
        super().__init__(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=int(batch_size),
                         max_length=int(max_length))
        self.fast, self.seed = backend, int(seed)

    def _params(self, gen_kwargs: dict) -> tuple[SamplingParams, int]:
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None),
                                      eos=self.tok_decode(self.eot_token_id, skip_special_tokens=False))
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        params = SamplingParams(n=1, temperature=temperature, top_p=float(kwargs.get("top_p") or 1.0),
                                max_new_tokens=max_gen_toks, stop=tuple(until))
        return params, self.max_length - max_gen_toks

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)  # same gen_kwargs -> one backend call
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until (fast)", disable=disable_tqdm or self.rank != 0)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            params, max_ctx_len = self._params(gen_kwargs)
            prompts = [self.tok_batch_encode([requests[i].args[0]], left_truncate_len=max_ctx_len,
                                             truncation=self.truncation)[0][0].tolist() for i in indices]
            tokens = self.fast.generate_tokens(prompts, params, self.seed)
            for i, toks in zip(indices, tokens):
                text = postprocess_generated_text(self.tok_decode(toks), list(params.stop), None)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(indices))
        bar.close()
        return out
