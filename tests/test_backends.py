"""Generation backends: the HF backend on the tiny Llama (fast), SmolLM2 (slow), vLLM (gpu)."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from helpers import CONF, PROMPTS, model_cfg
from crescent.backends import SamplingParams, build_backend
from crescent.backends.hf import FastSampler, HFBackend, cut_at_stop


def hf_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.load(CONF / "backend" / "hf.yaml"), overrides)


@pytest.fixture(scope="module")
def tiny(cache_dir) -> HFBackend:
    # a larger init std than the default so that greedy text varies (the default mostly repeats a token)
    return build_backend(hf_cfg(batch_size=4), model_cfg("tiny_llama", initializer_range=0.3), cache_dir)


def single_greedy(backend: HFBackend, prompt, max_new_tokens: int) -> str:
    """Plain model.generate on one prompt: no padding, no batching."""
    ids = torch.tensor([backend._encode(prompt)])
    out = backend.model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
        pad_token_id=backend.tokenizer.pad_token_id,
    )
    return backend.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
@pytest.mark.parametrize("scale", [0.1, 4.0])  # flat rows (full-sort path) and peaked rows (top-k path)
def test_fast_sampler_nucleus_matches_transformers(top_p, scale):
    from transformers import TopPLogitsWarper

    logits = torch.randn(6, 2000, generator=torch.Generator().manual_seed(0)) * scale
    sampler = FastSampler(temperature=0.7, top_p=top_p, generator=torch.Generator(), candidates=64)
    weights, index = sampler.nucleus(torch.softmax(logits / 0.7, dim=-1))
    reference = torch.isfinite(TopPLogitsWarper(top_p)(None, logits / 0.7))
    for row in range(len(logits)):
        assert set(index[row][weights[row] > 0].tolist()) == set(reference[row].nonzero().flatten().tolist())


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_fast_sampler_draws_follow_the_distribution(top_p):
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    expected = probs.clone() if top_p == 1.0 else torch.tensor([0.5, 0.25, 0.15, 0.0]) / 0.9
    scores = probs.log().repeat(40000, 1)
    sampler = FastSampler(temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(0))
    out = sampler(None, scores)
    assert torch.all(torch.isfinite(out).sum(dim=1) == 1)  # one token per row, for greedy decoding to pick
    freq = torch.bincount(out.argmax(dim=1), minlength=4).float() / len(scores)
    assert torch.allclose(freq, expected, atol=0.01), freq


def test_invalid_sampling_params_are_rejected(tiny):
    for params in [SamplingParams(n=0), SamplingParams(top_p=0.0), SamplingParams(temperature=-1.0)]:
        with pytest.raises(ValueError, match="sampling params"):
            tiny.generate(PROMPTS[:1], params, seed=0)


PARALLEL = dict(data_parallel_size=1, shard=None)  # every backend: worker processes / array-task shard


def test_backend_config_fields():
    assert dict(OmegaConf.load(CONF / "backend" / "hf.yaml")) == dict(
        name="hf", batch_size=32, dtype="bf16_if_fast", device="cpu", sort_by_length=True, **PARALLEL
    )
    assert dict(OmegaConf.load(CONF / "backend" / "vllm.yaml")) == dict(
        name="vllm", tensor_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=4096, dtype="auto",
        enforce_eager=False, **PARALLEL,
    )


def test_bf16_if_fast_follows_the_hardware():
    from crescent.models.loading import bf16_is_fast, torch_dtype

    assert torch_dtype("bf16_if_fast") == (torch.bfloat16 if bf16_is_fast("cpu") else "auto")
    assert torch_dtype("float32") == torch.float32


def test_build_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"backend.name='jax'.*'hf', 'vllm'"):
        build_backend({"name": "jax"}, model_cfg("tiny_llama"), None)


def test_default_tiny_config_generates(cache_dir):
    backend = build_backend(hf_cfg(), model_cfg("tiny_llama"), cache_dir)
    out = backend.generate(PROMPTS[:2], SamplingParams(n=2, max_new_tokens=4), seed=0)
    assert [len(o) for o in out] == [2, 2] and all(isinstance(t, str) for o in out for t in o)


def test_n_outputs_per_prompt_in_prompt_order(tiny):
    out = tiny.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=8), seed=0)
    assert [len(o) for o in out] == [3] * len(PROMPTS)
    assert tiny.last_stats["sequences"] == 3 * len(PROMPTS) and tiny.last_stats["new_tokens"] > 0
    # the prompt order is kept: greedy outputs match one-prompt-at-a-time generation
    greedy = tiny.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_new_tokens=8), seed=0)
    assert [o[0] for o in greedy] == [single_greedy(tiny, p, 8) for p in PROMPTS]
    assert all(o[0] == o[1] for o in greedy)


def test_same_seed_same_output_different_seed_different(tiny):
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6)
    torch.manual_seed(123)
    first = tiny.generate(PROMPTS, params, seed=7)
    rng_state = torch.get_rng_state()
    torch.manual_seed(456)  # the global RNG does not matter ...
    assert tiny.generate(PROMPTS, params, seed=7) == first
    assert tiny.generate(PROMPTS, params, seed=8) != first
    torch.manual_seed(123)
    tiny.generate(PROMPTS, params, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_state)  # ... and is left untouched


def test_greedy_batched_with_left_padding_equals_single_prompt_generate(tiny):
    params = SamplingParams(n=1, temperature=0, max_new_tokens=16)
    batched = HFBackend(tiny.model, tiny.tokenizer, batch_size=len(PROMPTS)).generate(PROMPTS, params, seed=0)
    singles = [single_greedy(tiny, p, 16) for p in PROMPTS]
    assert [o[0] for o in batched] == singles
    assert len(set(singles)) == len(singles) and all(len(s) > 10 for s in singles)


def test_sort_by_length_and_batch_size_keep_results(tiny):
    params = SamplingParams(n=2, temperature=0, max_new_tokens=10)
    reference = tiny.generate(PROMPTS, params, seed=0)
    for batch_size, sort in [(1, False), (2, False), (3, True), (32, True)]:
        backend = HFBackend(tiny.model, tiny.tokenizer, batch_size=batch_size, sort_by_length=sort)
        assert backend.generate(PROMPTS, params, seed=0) == reference


def test_stop_strings_cut_the_output(tiny):
    full = tiny.generate(PROMPTS[:1], SamplingParams(n=1, temperature=0, max_new_tokens=24), seed=0)[0][0]
    middle = len(full) // 2
    stop = full[middle : middle + 4]
    expected = full[: full.find(stop)]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=24, stop=(stop, "never-seen"))
    assert tiny.generate(PROMPTS[:1], params, seed=0) == [[expected]]
    sampled = tiny.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=24, stop=("e",)), seed=0)
    assert all("e" not in text for out in sampled for text in out)
    assert cut_at_stop("a. b? c", (".", "?")) == "a" and cut_at_stop("abc", ()) == "abc"


def test_chat_and_str_prompts(tiny):
    params = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    chat, text = tiny.generate([PROMPTS[0], "Question: 1 + 1 ="], params, seed=0)
    assert chat[0] == single_greedy(tiny, PROMPTS[0], 8)
    ids = tiny.tokenizer("Question: 1 + 1 =").input_ids
    assert tiny._encode("Question: 1 + 1 =") == ids  # a str prompt is used raw
    rendered = tiny.tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tiny._encode(PROMPTS[0]) == tiny.tokenizer(rendered, add_special_tokens=False).input_ids
    assert text[0] == single_greedy(tiny, "Question: 1 + 1 =", 8)


def test_empty_prompt_list(tiny):
    assert tiny.generate([], SamplingParams(n=4), seed=0) == []


def test_vllm_missing_gives_install_hint():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]"):
        build_backend(OmegaConf.load(CONF / "backend" / "vllm.yaml"), model_cfg("tiny_llama"), None)


@pytest.mark.slow
def test_smollm2_answers_a_question(cache_dir):
    backend = build_backend(hf_cfg(), model_cfg("smollm2_135m_instruct"), cache_dir)
    question = [{"role": "user", "content": "What is 2 + 3?"}]
    out = backend.generate([question], SamplingParams(n=1, temperature=0, max_new_tokens=32), seed=0)
    assert len(out) == 1 and len(out[0]) == 1 and out[0][0].strip()
    sampled = backend.generate([question], SamplingParams(n=2, temperature=0.7, max_new_tokens=16), seed=0)
    assert [len(o) for o in sampled] == [2] and all(t.strip() for t in sampled[0])


@pytest.mark.gpu
def test_vllm_generates(cache_dir):
    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        pytest.skip("needs a CUDA GPU and vllm")
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "backend" / "vllm.yaml"), {"max_model_len": 2048})
    backend = build_backend(cfg, model_cfg("smollm2_135m_instruct", dtype="float32"), cache_dir)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, stop=("\n",))
    out = backend.generate([PROMPTS[0], "Question: 1 + 1 ="], params, seed=0)
    assert [len(o) for o in out] == [3, 3] and all("\n" not in t for o in out for t in o)
    assert backend.generate([PROMPTS[0], "Question: 1 + 1 ="], params, seed=0) == out
    greedy = backend.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0, max_new_tokens=16), seed=0)
    assert greedy[0][0].strip()
