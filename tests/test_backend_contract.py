"""One contract, every backend: hf, fast, and vllm (through the stand-in engine in tests/fake_vllm; the real engine
needs CUDA). `generate(prompts, params, seed)` gives params.n strings per prompt in prompt order, for chat and plain
prompts; the same call gives the same output and another seed other samples; greedy samples agree and ignore the
seed; the output is cut before the first stop string."""
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crescent.backends import SamplingParams, build_backend
from helpers import CONF, ROOT, model_cfg
from helpers import PROMPTS as ALL_PROMPTS

FAKE_VLLM = ROOT / "tests" / "fake_vllm"
PROMPTS = ALL_PROMPTS[:3]  # a chat, a plain prompt, a long chat with a system turn
SAMPLED = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6)
GREEDY = SamplingParams(n=2, temperature=0.0, top_p=1.0, max_new_tokens=10)
SETTINGS = {"hf": {"batch_size": 8, "dtype": "float32"}, "fast": {"batch_size": 8, "dtype": "float32"}, "vllm": {}}


def _drop_vllm_modules() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def backend(request, cache_dir, tmp_path_factory):
    name = request.param
    with pytest.MonkeyPatch.context() as patch:
        if name == "vllm":  # the stand-in first on sys.path, for this module only
            patch.syspath_prepend(str(FAKE_VLLM))
            patch.setenv("FAKE_VLLM_LOG", str(tmp_path_factory.mktemp("vllm") / "calls.jsonl"))
            _drop_vllm_modules()
            import vllm

            assert Path(vllm.__file__).is_relative_to(FAKE_VLLM)
        cfg = OmegaConf.merge(OmegaConf.load(CONF / "backend" / f"{name}.yaml"), SETTINGS[name])
        yield build_backend(cfg, model_cfg("tiny_llama", initializer_range=0.3), cache_dir)
        if name == "vllm":
            _drop_vllm_modules()


def test_n_strings_per_prompt_in_prompt_order(backend):
    out = backend.generate(PROMPTS, SAMPLED, seed=0)
    assert len(out) == len(PROMPTS) and all(len(samples) == SAMPLED.n for samples in out)
    assert all(isinstance(text, str) for samples in out for text in samples)
    assert [len(s) for s in backend.generate(PROMPTS[1:2], SamplingParams(n=1, max_new_tokens=4), seed=0)] == [1]
    assert backend.generate([], SAMPLED, seed=0) == []


def test_same_call_same_output_other_seed_other_samples(backend):
    first = backend.generate(PROMPTS, SAMPLED, seed=0)
    assert backend.generate(PROMPTS, SAMPLED, seed=0) == first
    assert backend.generate(PROMPTS, SAMPLED, seed=1) != first
    assert any(len(set(samples)) > 1 for samples in first)  # the n samples of a prompt are not one stream


def test_greedy_samples_agree_and_ignore_the_seed(backend):
    out = backend.generate(PROMPTS, GREEDY, seed=0)
    assert all(len(set(samples)) == 1 for samples in out)
    assert backend.generate(PROMPTS, GREEDY, seed=5) == out


def test_output_is_cut_before_the_first_stop_string(backend):
    free = backend.generate(PROMPTS, GREEDY, seed=0)
    text = max((samples[0] for samples in free), key=len)
    assert len(text) >= 6, free
    stop = text[len(text) // 2: len(text) // 2 + 2]  # a piece that occurs in at least one output
    stopped = backend.generate(PROMPTS, SamplingParams(**{**GREEDY.__dict__, "stop": (stop,)}), seed=0)
    assert any(stop in samples[0] for samples in free)
    for samples, reference in zip(stopped, free):
        assert all(stop not in s for s in samples)
        assert samples[0] == reference[0].split(stop, 1)[0], (stop, reference[0])
