"""A stand-in for the `vllm` package, used only by tests (tests/conftest.py: the `fake_vllm` fixture puts
tests/fake_vllm first on sys.path). It loads no weights; see _standin.py for what it reproduces."""
from vllm._standin import CALLS, reset
from vllm.entrypoints.llm import LLM
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import SamplingParams

__version__ = "0.0.0+standin"
__all__ = ["CALLS", "LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "reset"]
