"""vllm.engine.arg_utils.EngineArgs: lm-eval builds one (data_parallel_size > 1) only to get a model config."""
from vllm._standin_eval import CALLS, _model_config


class EngineArgs:
    def __init__(self, model: str, **kwargs):
        self.model, self.kwargs = model, kwargs
        CALLS.append({"method": "EngineArgs", "model": model, **kwargs})

    def create_model_config(self):
        return _model_config(self.model, self.kwargs.get("max_model_len"), self.kwargs.get("dtype", "auto"))
