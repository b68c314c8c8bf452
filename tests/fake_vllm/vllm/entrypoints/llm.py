from __future__ import annotations

from vllm._standin import LLM

__all__ = ["LLM"]
