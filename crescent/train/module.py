"""The LightningModule: causal-LM SFT on assistant tokens, optional token-level KD, optional LoRA."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from crescent.config.choices import ATTN_IMPLEMENTATIONS

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over positions whose label is not -100; (loss, n_tokens)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    n = mask.sum()
    loss = F.cross_entropy(logits[mask], labels[mask], reduction="sum") / n.clamp(min=1)
    return loss, n


def _ce_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


def chunked_ce(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
               chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """masked_ce from the final hidden states, without the logits of the whole batch.

    Only positions with a label are projected, `chunk_tokens` at a time, each chunk under a non-reentrant
    checkpoint: its logits are recomputed in the backward pass, so the peak is one chunk's logits (in fp32
    for the softmax) instead of (batch x sequence x vocab). Same value and gradient as masked_ce on
    `head(hidden)` up to float rounding (the sum runs chunk by chunk)."""
    hidden, labels = hidden[:, :-1], labels[:, 1:]
    mask = labels != -100
    n = mask.sum()
    hidden, labels = hidden[mask], labels[mask]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.numel(), chunk_tokens):
        h, y = hidden[start: start + chunk_tokens], labels[start: start + chunk_tokens]
        total = total + (checkpoint(_ce_sum, h, y, head, use_reentrant=False) if torch.is_grad_enabled()
                         else _ce_sum(h, y, head))
    return total / n.clamp(min=1), n


def masked_kd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, averaged over trainable positions, scaled by T^2."""
    mask = labels[:, 1:] != -100
    s = F.log_softmax(student[:, :-1][mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher[:, :-1][mask].float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature**2 if kl.numel() else kl.sum()


def lr_lambda(name: str, warmup: int, total: int, min_ratio: float = 0.0):
    """Multiplier of the base lr at optimizer step `step` (linear warmup, then the schedule)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


def same_vocab(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def enable_gradient_checkpointing(model) -> None:
    """transformers' activation (gradient) checkpointing of every decoder layer, non-reentrant (works with
    frozen inputs, LoRA and DeepSpeed without enable_input_require_grads); transformers < 5.x only has
    the older name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


def is_gradient_checkpointing(model) -> bool:
    """transformers' is_activation_checkpointing (is_gradient_checkpointing before 5.x)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


def _chunkable(model) -> bool:
    """The logits are exactly lm_head(decoder(...).last_hidden_state): no soft-capping or logit scale."""
    config = getattr(model, "config", None)
    return all(not getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale",
                                                           "logits_scaling", "output_multiplier_scale"))


class CausalLMModule(L.LightningModule):
    """SFT (train=sft), distillation with an optional KD term (train=distil), LoRA (train=lora)."""

    def __init__(self, model, tokenizer, train_cfg: Mapping[str, Any], teacher=None, use_cpu_adam: bool = False):
        super().__init__()
        self.model, self.tokenizer, self.cfg = model, tokenizer, train_cfg
        self.teacher = teacher
        self.use_cpu_adam = use_cpu_adam
        kd = train_cfg.get("kd") or {}
        self.kd_alpha = float(kd.get("alpha", 0.0)) if teacher is not None else 0.0
        self.kd_temperature = float(kd.get("temperature", 1.0))
        self.loss_chunk_tokens = int(train_cfg.get("loss_chunk_tokens") or 0)
        if self.loss_chunk_tokens and (self.kd_alpha > 0 or not _chunkable(model)):
            log.warning("train.loss_chunk_tokens=%d not used: %s", self.loss_chunk_tokens,
                        "the KD term needs the full logits" if self.kd_alpha > 0 else
                        "this model scales or caps its logits after lm_head")
            self.loss_chunk_tokens = 0
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.model.train()  # transformers 5 loads in eval mode and Lightning keeps module modes
        self._t_step = None
        self.checkpoint_metrics: dict[str, float] = {}  # those saved with the checkpoint fit resumed from

    # -- forward and losses -------------------------------------------------------------------
    def _logits(self, model, batch) -> torch.Tensor:
        return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).logits

    def _chunked_losses(self, batch) -> dict[str, torch.Tensor]:
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden = decoder(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, use_cache=False).last_hidden_state
        ce, n = chunked_ce(hidden, head, batch["labels"], self.loss_chunk_tokens)
        return {"ce": ce, "trainable_tokens": n, "loss": ce}

    def _losses(self, batch) -> dict[str, torch.Tensor]:
        if self.loss_chunk_tokens:
            return self._chunked_losses(batch)
        logits = self._logits(self.model, batch)
        ce, n = masked_ce(logits, batch["labels"])
        out = {"ce": ce, "trainable_tokens": n}
        if self.kd_alpha > 0:
            with torch.no_grad():
                teacher_logits = self._logits(self.teacher, batch)
            kd = masked_kd(logits, teacher_logits, batch["labels"], self.kd_temperature)
            out["kd"] = kd
            out["loss"] = (1 - self.kd_alpha) * ce + self.kd_alpha * kd
        else:
            out["loss"] = ce
        return out

    def on_fit_start(self) -> None:
        self.model.train()
        if self.teacher is not None:
            self.teacher.eval()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._t_step = time.perf_counter()

    def training_step(self, batch, batch_idx):
        out = self._losses(batch)
        real = batch["real_tokens"] if "real_tokens" in batch else batch["attention_mask"].sum()
        bs = int(batch["n_sequences"]) if "n_sequences" in batch else batch["input_ids"].shape[0]
        metrics = {"train/loss": out["loss"], "train/ce": out["ce"],
                   "train/trainable_fraction": out["trainable_tokens"].float() / real.clamp(min=1)}
        if "kd" in out:
            metrics["train/kd"] = out["kd"]
        if self._t_step is not None:
            metrics["train/tokens_per_s"] = real.float() / max(time.perf_counter() - self._t_step, 1e-6)
        self.log_dict(metrics, prog_bar=False, on_step=True, on_epoch=False, batch_size=bs)
        self.log("loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False, batch_size=bs)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self._losses(batch)
        bs = int(batch["n_sequences"]) if "n_sequences" in batch else batch["input_ids"].shape[0]
        self.log("val/loss", out["ce"], prog_bar=True, on_epoch=True, batch_size=bs)

    # -- checkpoints: the metrics so far go with each one, so a resume that has nothing left to train
    # (the checkpoint of the final step) still reports those of the run that trained; the torch RNG
    # too, so that dropout (LoRA) draws the same masks after a resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        metrics = self.trainer.callback_metrics
        checkpoint["crescent_metrics"] = {k: float(v) for k, v in metrics.items() if v.numel() == 1}
        checkpoint["crescent_rng"] = {"cpu": torch.get_rng_state(),
                                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.checkpoint_metrics = dict(checkpoint.get("crescent_metrics", {}))
        rng = checkpoint.get("crescent_rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_cfg, sched_cfg = self.cfg["optimizer"], self.cfg["scheduler"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        name = opt_cfg["name"]
        if name == "adamw" and self.use_cpu_adam:  # ZeRO offload needs DeepSpeed's CPU Adam
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            opt = DeepSpeedCPUAdam(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"],
                                   betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"], adamw_mode=True)
        elif name == "adamw":
            opt = torch.optim.AdamW(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"],
                                    betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"])
        elif name == "sgd":
            opt = torch.optim.SGD(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"], momentum=0.9)
        else:
            raise ValueError(f"train.optimizer.name={name!r}; allowed: ['adamw', 'sgd']")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(float(sched_cfg["warmup_ratio"]) * total))
        fn = lr_lambda(sched_cfg["name"], warmup, total, float(sched_cfg.get("min_lr_ratio", 0.0)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def apply_lora(model, lora_cfg: Mapping[str, Any]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora_cfg["r"]), lora_alpha=int(lora_cfg["alpha"]), lora_dropout=float(lora_cfg["dropout"]),
                        target_modules=list(lora_cfg["target_modules"]), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA: %d trainable parameters (%.2f%%)", trainable,
             100 * trainable / sum(p.numel() for p in model.parameters()))
    return model
