"""Configs this machine cannot run are ConfigErrors before any model loads (issue 17 item 5, issue 21 item 7):
a GPU trainer or DeepSpeed without CUDA, more trainer.devices than visible GPUs, backend=vllm without vllm (or
CUDA), FlashAttention without flash-attn, eval on cuda without CUDA. validate(cfg) alone still accepts GPU presets
(they are composed and checked on CPU machines); the pipeline calls validate(cfg, hardware=True)."""
import json

import pytest
from helpers import compose_cfg

import crescent.models.loading
from crescent import pipeline
from crescent.config import ConfigError, check_hardware, hardware_errors, validate


def gpus(n):
    return lambda: n


def present(*modules):
    return lambda name: name in modules


@pytest.fixture
def make(tmp_path):
    return lambda *overrides: compose_cfg(overrides, tmp_path)


@pytest.mark.parametrize("overrides,line", [
    (["trainer=gpu"], "trainer.accelerator='gpu' is invalid on this machine: no CUDA GPU is visible"),
    (["trainer=deepspeed_stage_2"], "trainer.accelerator='gpu' is invalid on this machine"),
    (["trainer=deepspeed_stage_3_offload"], "trainer.accelerator='gpu' is invalid on this machine"),
    (["trainer=deepspeed_stage_2", "trainer.accelerator=auto"], "trainer.strategy='deepspeed' is invalid on this "
                                                                "machine"),
    (["trainer.accelerator=cuda"], "trainer.accelerator='cuda' is invalid on this machine"),
    (["train.attn_implementation=flash_attention_2"], "train.attn_implementation='flash_attention_2' is invalid here: "
                                                      "the flash-attn package is not installed"),
])
def test_gpu_training_without_cuda(make, overrides, line):
    errors = hardware_errors(make("stages=[train]", *overrides), cuda_devices=gpus(0), importable=present())
    assert any(line in e for e in errors), errors


@pytest.mark.parametrize("devices,visible,bad", [
    (8, 2, "trainer.devices=8 is invalid on this machine: only 2 CUDA GPU(s) visible"),
    ("[0,3]", 2, "trainer.devices=[0, 3] is invalid on this machine"),
    (2, 2, None), (-1, 2, None), ("auto", 1, None), ("[0,1]", 2, None),
])
def test_devices_above_the_visible_count(make, devices, visible, bad):
    errors = hardware_errors(make("stages=[train]", "trainer=deepspeed_stage_2", f"trainer.devices={devices}"),
                             cuda_devices=gpus(visible), importable=present())
    assert (errors == []) if bad is None else any(bad in e for e in errors), errors


@pytest.mark.parametrize("stages,modules,visible,line", [
    ("[generate]", (), 1, "backend.name='vllm' is invalid here: vllm is not installed"),
    ("[gap]", (), 1, "backend.name='vllm' is invalid here: vllm is not installed"),
    ("[generate]", ("vllm",), 0, "backend.name='vllm' is invalid on this machine: vLLM needs a CUDA GPU"),
    ("[generate]", ("vllm",), 1, None),
])
def test_vllm_backend(make, stages, modules, visible, line):
    errors = hardware_errors(make(f"stages={stages}", "backend=vllm"), cuda_devices=gpus(visible),
                             importable=present(*modules))
    assert (errors == []) if line is None else any(line in e for e in errors), errors


def test_vllm_tensor_parallel_above_the_gpus(make):
    errors = hardware_errors(make("stages=[generate]", "backend=vllm", "backend.tensor_parallel_size=4"),
                             cuda_devices=gpus(2), importable=present("vllm"))
    assert errors == ["  backend.tensor_parallel_size=4 is invalid on this machine: only 2 CUDA GPU(s) visible"]


def test_flash_attention_installed_but_no_gpu_and_eval_on_cuda(make):
    errors = hardware_errors(make("stages=[train,eval]", "train.attn_implementation=flash_attention_2",
                                  "eval.device=cuda"), cuda_devices=gpus(0), importable=present("flash_attn"))
    assert any("FlashAttention needs a CUDA GPU" in e for e in errors)
    assert any("eval.device='cuda' is invalid on this machine" in e for e in errors)


def test_stages_that_do_not_use_the_hardware_are_not_checked(make):
    cfg = make("stages=[generate]", "trainer=deepspeed_stage_2", "eval.device=cuda")
    assert hardware_errors(cfg, cuda_devices=gpus(0), importable=present()) == []
    cfg = make("stages=[train]", "backend=vllm")
    assert hardware_errors(cfg, cuda_devices=gpus(0), importable=present()) == []


def test_cpu_configs_never_import_torch_for_the_check(make):
    calls = []
    cfg = make("stages=[generate,train,eval]", "trainer.devices=1")
    assert hardware_errors(cfg, cuda_devices=lambda: calls.append(1) or 0, importable=present()) == []
    assert calls == []


def test_the_paper_preset_on_this_cpu_machine(make):
    """validate(cfg) accepts the preset (composed on CPU by other tests); hardware=True lists what cannot run here."""
    cfg = make("experiment=crescent_llama3_8b")
    validate(cfg)
    with pytest.raises(ConfigError) as e:
        check_hardware(cfg, cuda_devices=gpus(0), importable=present())
    message = str(e.value)
    for key in ("trainer.accelerator='gpu'", "backend.name='vllm'", "eval.device='cuda'"):
        assert key in message


def test_validate_with_hardware_on_this_machine(make):
    """The real device count and import check (this test machine has no CUDA GPU and no vllm)."""
    import importlib.util

    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("vllm"):
        pytest.skip("this machine has CUDA or vllm")
    validate(make("stages=[generate,train]"), hardware=True)  # the CPU default runs here
    for overrides, key in ((["stages=[train]", "trainer=gpu"], "trainer.accelerator='gpu'"),
                           (["stages=[generate]", "backend=vllm"], "backend.name='vllm'")):
        with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
            validate(make(*overrides), hardware=True)


def test_the_pipeline_rejects_before_loading_a_model(make, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(crescent.models.loading, "load_model", no_load)
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    cfg = make("stages=[train]", "trainer=deepspeed_stage_2", f"train.data={data}", "logger=none")
    with pytest.raises(ConfigError, match=r"trainer.accelerator='gpu' is invalid on this machine"):
        pipeline.run(cfg)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "trainer.accelerator" in status["error"]
