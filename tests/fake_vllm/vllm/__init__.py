"""A stand-in for the `vllm` package, for tests only (tests/fake_vllm on sys.path). See _standin_eval."""
from vllm._standin_eval import CALLS, LLM, CompletionOutput, RequestOutput, SamplingParams, reset
from vllm.inputs import TokensPrompt

__version__ = "0.11.0"
__all__ = ["CALLS", "LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "TokensPrompt", "reset"]
