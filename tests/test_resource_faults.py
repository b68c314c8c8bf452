"""Resource faults in a run: out of memory while generating, a full disk while finishing the synth data."""
import errno
import logging
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import crescent.utils.io as io
from helpers import CONF
from crescent.backends import SamplingParams, build_backend
from crescent.backends.hf import HFBackend, is_oom
from crescent.utils.io import read_json

PROMPTS = ["Question: 1 + 1 =", [{"role": "user", "content": "What is 2 + 3?"}], "x", "A train leaves at 9 and",
           [{"role": "user", "content": "Write a long word problem about apples."}], "7 * 6 =", "Solve 12 * 7.", "y"]
GREEDY = SamplingParams(n=2, temperature=0.0, top_p=1.0, max_new_tokens=12)
OOM_ERRORS = [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                         "tried to allocate 4294967296 bytes"),
]


@pytest.fixture(scope="module")
def tiny(cache_dir) -> HFBackend:
    model_cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / "tiny_llama.yaml"), {"initializer_range": 0.3})
    return build_backend(OmegaConf.merge(OmegaConf.load(CONF / "backend" / "hf.yaml"), {"batch_size": 8}),
                         model_cfg, cache_dir)


def _limit_batch(monkeypatch, backend, max_rows: int, error) -> list[int]:
    """model.generate raises `error` for batches above max_rows; returns the batch sizes it was called with."""
    real, sizes = backend.model.generate, []

    def generate(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > max_rows:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", generate)
    return sizes


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["cuda", "cpu"])
def test_oom_halves_the_batch_and_greedy_output_is_unchanged(tiny, monkeypatch, caplog, error):
    reference = tiny.generate(PROMPTS, GREEDY, seed=0)
    sizes = _limit_batch(monkeypatch, tiny, 3, error)
    with caplog.at_level(logging.WARNING, logger="crescent.backends.hf"):
        assert tiny.generate(PROMPTS, GREEDY, seed=0) == reference
    assert sizes == [8, 4, 2, 2, 2, 2]  # 8 -> OOM, 4 -> OOM, then batches of 2 for the rest of the call
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory generating 8 sequences; retrying with batch size 4 for this call",
        "out of memory generating 4 sequences; retrying with batch size 2 for this call"]
    assert tiny.batch_size == 8 and tiny.last_stats["sequences"] == len(PROMPTS)
    sizes.clear()
    tiny.generate(PROMPTS[:3], GREEDY, seed=0)
    assert sizes[0] == 3  # the next call starts at the configured batch size again


def test_sampled_output_keeps_its_shape_after_oom(tiny, monkeypatch):
    _limit_batch(monkeypatch, tiny, 2, OOM_ERRORS[0])
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=6)
    out = tiny.generate(PROMPTS[:3], params, seed=5)
    assert [len(o) for o in out] == [3] * 3
    assert out == tiny.generate(PROMPTS[:3], params, seed=5)  # still seeded: same OOM pattern, same samples


def test_oom_at_batch_size_one_and_other_errors_propagate(tiny, monkeypatch):
    _limit_batch(monkeypatch, tiny, 0, OOM_ERRORS[1])
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        tiny.generate(PROMPTS[:2], GREEDY, seed=0)
    sizes = _limit_batch(monkeypatch, tiny, 0, lambda: RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiny.generate(PROMPTS[:2], GREEDY, seed=0)
    assert sizes == [2]  # not retried: only memory errors are
    assert not is_oom(ValueError("out of memory")) and is_oom(RuntimeError("CUDA error: out of memory"))


def test_full_disk_while_finishing_never_marks_the_synth_cache_complete(make_cfg, tmp_path, monkeypatch):
    from crescent import pipeline

    cfg = make_cfg("debug=default")
    real_replace = io.os.replace

    def replace(src, dst):
        if Path(dst).name == "sft.jsonl":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match=r"could not write .*/sft.jsonl .*No space left on device"):
        pipeline.run(cfg)
    from crescent.synth.generate import synth_workdir

    work = synth_workdir(cfg)  # the final folder (the per-stage folders sit beside it)
    assert (work / "questions.jsonl").exists() and not (work / "sft.jsonl").exists()
    assert not (work / "manifest.json").exists()  # written last: the folder is not complete
    assert not list(work.rglob("*.tmp"))
    assert read_json(tmp_path / "run" / "status.json")["status"] == "failed"

    monkeypatch.setattr(io.os, "replace", real_replace)  # space again: the rerun finishes from the saved units
    import crescent.backends

    monkeypatch.setattr(crescent.backends, "build_backend", lambda *a, **k: pytest.fail("units were regenerated"))
    manifest = pipeline.run(cfg)["generate"].record
    assert (work / "manifest.json").exists() and not manifest["cache_hit"]
    assert (tmp_path / "run" / "synth" / "sft.jsonl").exists()
