"""vllm.lora.request.LoRARequest (imported by lm-eval's vllm model; used only with lora_local_path)."""
from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""
