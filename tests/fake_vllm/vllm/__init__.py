"""A stand-in for the `vllm` package, used only by tests (tests/conftest.py: the `fake_vllm` fixture puts
tests/fake_vllm first on sys.path). It loads no weights.

Two engines live here: _standin.py (generation: V1 seed semantics, data parallel, shutdown; the default) and
_standin_eval.py (what lm-eval's `vllm` model type calls: token prompts, prompt logprobs, its tokenizer helpers),
chosen by FAKE_VLLM_FLAVOUR=eval (tests/test_eval_vllm.py sets it before the first import)."""
import os

from vllm.inputs import TokensPrompt

if os.environ.get("FAKE_VLLM_FLAVOUR") == "eval":
    from vllm._standin_eval import CALLS, LLM, CompletionOutput, RequestOutput, SamplingParams, reset

    __version__ = "0.11.0"
else:
    from vllm._standin import CALLS, reset
    from vllm.entrypoints.llm import LLM
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import SamplingParams

    __version__ = "0.0.0+standin"
__all__ = ["CALLS", "LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "TokensPrompt", "reset"]
