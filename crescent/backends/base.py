"""The generation interface every backend implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, Union

Message = dict  # {"role": "user" | "assistant" | "system", "content": str}
Prompt = Union[str, Sequence[Message]]  # a raw completion prompt, or a chat


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)  # the output is cut before the first stop string


class Backend(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        """n completions for each prompt, in prompt order: result[i] has params.n strings.

        A chat prompt is rendered with the tokenizer's chat template (generation prompt added);
        a str prompt is used as is. The same (prompts, params, seed) gives the same output.
        """
        ...
