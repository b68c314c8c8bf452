"""vllm.entrypoints.chat_utils.resolve_hf_chat_template (vLLM 0.11 location): the given template, else the
tokenizer's own."""


def resolve_hf_chat_template(tokenizer, chat_template, tools, *, model_config=None, **kwargs):
    return chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
