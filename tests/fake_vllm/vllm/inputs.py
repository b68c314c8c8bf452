"""vllm.inputs.TokensPrompt: a typed dict of pre-tokenized prompt ids (what lm-eval's vllm model sends)."""
from typing import TypedDict


class TokensPrompt(TypedDict, total=False):
    prompt_token_ids: list[int]
