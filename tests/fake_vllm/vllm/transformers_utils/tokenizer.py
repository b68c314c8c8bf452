"""vllm.transformers_utils.tokenizer.get_tokenizer (vLLM 0.11 location): transformers' AutoTokenizer."""


def get_tokenizer(tokenizer_name, *args, tokenizer_mode: str = "auto", trust_remote_code: bool = False,
                  revision=None, download_dir=None, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_name, *args, use_fast=tokenizer_mode != "slow",
                                         trust_remote_code=trust_remote_code, revision=revision, **kwargs)
