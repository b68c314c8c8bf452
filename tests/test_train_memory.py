"""Training memory (issue 17 item 3): gradient checkpointing, attention implementation, padding-free batches for
FlashAttention, chunked cross-entropy, the student loaded in the training dtype; every GPU / DeepSpeed / paper
preset turns checkpointing on."""
import json
from pathlib import Path

import pytest
import torch
from helpers import CONF, compose_cfg
from omegaconf import OmegaConf

from crescent import pipeline
from crescent.models.loading import load_model_and_tokenizer, load_tokenizer
from crescent.train.data import SFTDataModule, collate, collate_flat, pack_examples, tokenize_chat
from crescent.train.module import (ATTN_IMPLEMENTATIONS, CausalLMModule, chunked_ce, enable_gradient_checkpointing,
                                   is_gradient_checkpointing, masked_ce)
from crescent.train.trainer import (flatten_batches, gradient_checkpointing_on, student_load_kwargs,
                                    training_dtype)

TINY = OmegaConf.load(CONF / "model" / "tiny_llama.yaml")
ROWS = [
    [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples?"},
     {"role": "assistant", "content": "Three plus five gives eight.\nThe answer is 8."}],
    [{"role": "system", "content": "You solve grade school maths."}, {"role": "user", "content": "What is 7 times 6?"},
     {"role": "assistant", "content": "Seven sixes make forty-two."}, {"role": "user", "content": "And half?"},
     {"role": "assistant", "content": "Half of forty-two is twenty-one."}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
    [{"role": "user", "content": "Name a prime above 10."}, {"role": "assistant", "content": "11 is prime."}],
    [{"role": "user", "content": "What is 9 - 4?"}, {"role": "assistant", "content": "Nine minus four is 5."}],
]
GPU_TRAINERS = ["gpu", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"]
PAPER = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
               if "paper" in (OmegaConf.load(p).get("tags") or []))


@pytest.fixture(scope="module")
def tiny():
    tok, model = load_model_and_tokenizer(TINY, attn_implementation="sdpa")
    return tok, model


def examples(tok):
    return [tokenize_chat(m, tok, 512) for m in ROWS]


def test_paper_presets_are_found():
    assert {"crescent_llama3_8b", "crescent_distill_llama3_8b_to_1b", "lmsi_gsm8k"} <= set(PAPER)


@pytest.mark.parametrize("overrides", [[f"trainer={t}"] for t in GPU_TRAINERS] + [[f"experiment={e}"] for e in PAPER])
def test_gpu_deepspeed_and_paper_presets_turn_checkpointing_on(overrides, tmp_path):
    cfg = compose_cfg([*overrides, "stages=[train]"], tmp_path)
    assert gradient_checkpointing_on(cfg), overrides
    kwargs = student_load_kwargs(cfg)
    assert kwargs["attn_implementation"] == cfg.train.attn_implementation in ATTN_IMPLEMENTATIONS
    if cfg.trainer.strategy == "deepspeed":  # DeepSpeed bf16 trains 16-bit weights: no fp32 copy is loaded
        assert kwargs["dtype"] == "bfloat16"
    if overrides[0].startswith("experiment="):  # the paper runs also chunk the loss
        assert cfg.train.loss_chunk_tokens and cfg.train.gradient_checkpointing is True


def test_cpu_default_keeps_checkpointing_off_and_fp32(tmp_path):
    cfg = compose_cfg(["stages=[train]"], tmp_path)
    assert cfg.train.gradient_checkpointing == "auto" and not gradient_checkpointing_on(cfg)
    assert student_load_kwargs(cfg) == {"dtype": "float32", "attn_implementation": "sdpa"}
    assert not flatten_batches(cfg.train) and cfg.train.loss_chunk_tokens is None
    assert gradient_checkpointing_on(compose_cfg(["stages=[train]", "train.gradient_checkpointing=true"], tmp_path))


@pytest.mark.parametrize("precision,strategy,dtype", [
    ("bf16-mixed", "deepspeed", "bfloat16"), ("16-mixed", "deepspeed", "float16"), ("32-true", "deepspeed", "float32"),
    ("bf16-mixed", "ddp", "float32"), ("bf16-true", "auto", "bfloat16"), ("32-true", "auto", "float32")])
def test_training_dtype(precision, strategy, dtype):
    assert training_dtype(OmegaConf.create({"precision": precision, "strategy": strategy})) == dtype


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_loaded_model_uses_the_configured_attention(attn):
    _, model = load_model_and_tokenizer(TINY, dtype="bfloat16", attn_implementation=attn)
    assert model.config._attn_implementation == attn
    assert next(model.parameters()).dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    tok, model = tiny
    batch = collate(examples(tok), tok.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}

    def loss_and_grads():
        model.zero_grad()
        loss = masked_ce(model(**inputs, use_cache=False).logits, batch["labels"])[0]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    assert not is_gradient_checkpointing(model)
    plain, plain_grads = loss_and_grads()
    enable_gradient_checkpointing(model)
    try:
        assert is_gradient_checkpointing(model)
        layer = model.model.layers[0]
        assert layer.gradient_checkpointing and layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
        ckpt, ckpt_grads = loss_and_grads()
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    assert ckpt == pytest.approx(plain, abs=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5)


def test_chunked_ce_equals_the_plain_loss_and_gradient(tiny):
    tok, model = tiny
    batch = collate(examples(tok), tok.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    model.zero_grad()
    plain, n = masked_ce(model(**inputs, use_cache=False).logits, batch["labels"])
    plain.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    chunked, n2 = chunked_ce(hidden, model.get_output_embeddings(), batch["labels"], chunk_tokens=7)
    chunked.backward()
    assert n2 == n and n > 7 * 3  # several chunks
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[k], atol=1e-6, rtol=1e-4)
    model.zero_grad()


def test_the_module_uses_chunked_ce_when_configured(tiny):
    tok, model = tiny
    batch = collate(examples(tok), tok.pad_token_id)
    cfg = OmegaConf.to_container(compose_cfg(["stages=[train]"]).train, resolve=True)
    plain = CausalLMModule(model, tok, cfg)
    chunked = CausalLMModule(model, tok, {**cfg, "loss_chunk_tokens": 5})
    assert chunked.loss_chunk_tokens == 5 and plain.loss_chunk_tokens == 0
    calls = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        with torch.no_grad():
            a, b = plain._losses(batch), chunked._losses(batch)
    finally:
        hook.remove()
        model.eval()
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-5) and a["trainable_tokens"] == b["trainable_tokens"]
    assert calls[0][:2] == batch["input_ids"].shape  # the plain path: logits of every position
    assert all(s[0] <= 5 for s in calls[1:]) and len(calls) > 2  # chunked: at most 5 positions at a time


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("packing", [True, False])
def test_padding_free_batches_give_the_same_logits_and_loss(tiny, attn, packing):
    """collate_flat (what flash_attention_2 trains on) against the padded / 4D-mask batches sdpa trains on."""
    tok, model = tiny
    model.set_attn_implementation(attn)
    try:
        rows = examples(tok)
        items = pack_examples(rows, 96) if packing else rows
        padded, flat = collate(items, tok.pad_token_id), collate_flat(items)
        assert "attention_mask" not in flat and flat["input_ids"].shape == (1, sum(len(x["input_ids"]) for x in rows))
        assert int(flat["n_sequences"]) == len(items) and int(flat["real_tokens"]) == int(padded["real_tokens"])
        with torch.no_grad():
            dense = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "position_ids") if k in padded},
                          use_cache=False).logits
            free = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits
        loss_dense, n_dense = masked_ce(dense, padded["labels"])
        loss_free, n_free = masked_ce(free, flat["labels"])
        assert n_free == n_dense
        assert loss_free.item() == pytest.approx(loss_dense.item(), abs=1e-5)
        real = padded["labels"] != -100  # every trainable position's logits, in order
        torch.testing.assert_close(free[flat["labels"] != -100], dense[real], atol=1e-4, rtol=1e-4)
    finally:
        model.set_attn_implementation("sdpa")


def test_padding_free_position_ids_are_what_flash_attention_reads():
    """transformers' FlashAttention path takes (1, total) position_ids as packed sequences and derives the
    cu_seqlens of the varlen kernel from them: they must be the example boundaries."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence, prepare_fa_kwargs_from_position_ids

    lengths = [5, 3, 7, 1, 4]
    items = [{"input_ids": list(range(10, 10 + n)), "labels": list(range(10, 10 + n))} for n in lengths]
    blocks = pack_examples(items, 9)
    for batch in (items, blocks):
        flat = collate_flat(batch)
        assert _is_packed_sequence(flat["position_ids"], batch_size=1)
        (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
        seg = torch.tensor([0] + lengths).cumsum(0) if batch is items else None
        if seg is not None:
            assert cu_q.tolist() == seg.tolist() and int(max_q) == max(lengths)
        assert sorted(torch.diff(cu_q).tolist()) == sorted(lengths)
        starts = set(cu_q[:-1].tolist())
        assert all(flat["labels"][0, s] == -100 for s in starts)  # nothing predicts across a boundary


def test_datamodule_flattens_for_flash_attention(tmp_path, tiny):
    tok, _ = tiny
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in ROWS * 4))
    assert flatten_batches(OmegaConf.create({"attn_implementation": "flash_attention_2"}))
    dm = SFTDataModule(path, tok, max_seq_len=128, micro_batch_size=3, val_fraction=0.2, packing=True, flatten=True)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    assert (batch["position_ids"] == 0).sum() >= int(batch["n_sequences"])  # >= 1 example per block


def test_the_train_stage_enables_checkpointing_and_chunked_loss(make_cfg, tmp_path, monkeypatch):
    rows = [{"messages": m} for m in ROWS * 2]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    def on_fit_start(self):
        seen.update(checkpointing=is_gradient_checkpointing(self.model), chunk=self.loss_chunk_tokens,
                    attn=self.model.config._attn_implementation, dtype=next(self.model.parameters()).dtype)
        self.model.train()

    monkeypatch.setattr(CausalLMModule, "on_fit_start", on_fit_start)
    cfg = make_cfg("model@teacher=tiny_llama", "stages=[train]", "logger=none", f"train.data={data}",
                   "train.max_seq_len=96", "train.global_batch_size=2", "train.micro_batch_size=2", "train.max_steps=1",
                   "train.val_fraction=0", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
                   "train.gradient_checkpointing=true", "train.loss_chunk_tokens=16", "train.attn_implementation=eager")
    result = pipeline.run(cfg)["train"]
    assert seen == {"checkpointing": True, "chunk": 16, "attn": "eager", "dtype": torch.float32}
    assert result["global_step"] == 1 and Path(result["export"], "config.json").is_file()


def test_checkpointing_does_not_change_the_training_fingerprint(make_cfg, tmp_path):
    """Recomputing activations gives the same weights: switching it keeps train.resume=auto resuming."""
    from crescent.train.trainer import train_fingerprint

    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": ROWS[0]}) + "\n")
    on = train_fingerprint(make_cfg("stages=[train]", "train.gradient_checkpointing=true"), data)
    off = train_fingerprint(make_cfg("stages=[train]", "train.gradient_checkpointing=false"), data)
    chunked = train_fingerprint(make_cfg("stages=[train]", "train.loss_chunk_tokens=64"), data)
    assert on["hash"] == off["hash"] != chunked["hash"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_attention_on_padding_free_batches_matches_sdpa_on_the_4d_mask():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    tok, fa = load_model_and_tokenizer(TINY, dtype="bfloat16", device="cuda", attn_implementation="flash_attention_2")
    _, sdpa = load_model_and_tokenizer(TINY, dtype="bfloat16", device="cuda", attn_implementation="sdpa")
    blocks = pack_examples(examples(tok), 96)
    padded, flat = collate(blocks, tok.pad_token_id), collate_flat(blocks)
    with torch.no_grad():
        dense = sdpa(**{k: padded[k].cuda() for k in ("input_ids", "attention_mask", "position_ids")}).logits
        free = fa(input_ids=flat["input_ids"].cuda(), position_ids=flat["position_ids"].cuda(), use_cache=False).logits
    loss_dense, _ = masked_ce(dense, padded["labels"].cuda())
    loss_free, _ = masked_ce(free, flat["labels"].cuda())
    assert loss_free.item() == pytest.approx(loss_dense.item(), rel=2e-2)
