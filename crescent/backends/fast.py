"""`backend=fast`: continuous-batching CPU generation with a hand-written Llama-family forward.

Weights come from the loaded transformers model (bf16 where the CPU runs it natively, else fp32). Every decode
step advances all busy slots of a static KV cache by one token; a finished sequence leaves at once and the next
pending request takes a slot in the same step. A prompt is prefilled once and its KV copied into every slot that
samples it; the new prompts of one admission are prefilled together in one forward. Sampling draws come from a
counter-based hash of (seed, request index, token index), so a request's output does not depend on which other
requests share its steps or which slot it runs in (in bf16 too: see GEMM_ROWS).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from crescent.backends.base import Prompt, SamplingParams
from crescent.backends.hf import cut_at_stop
from crescent.backends.native import KEY_BLOCK, block_keys
from crescent.config.choices import KERNELS

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # fixed inverse frequencies (no length-dependent rescaling)
# GEMM libraries pick kernels by row count, and the kernel changes the rounding (oneDNN's bf16 GEMMs on a Xeon with
# AMX give other bits below 37 rows and, for some shapes, from 256 rows; the same bits for 37-255 rows; the tests
# that check a row's tokens do not depend on its neighbours pass on an AVX512-BF16 EPYC too).
# GEMMs run on at least GEMM_ROWS rows (shorter inputs padded) and at most GEMM_BLOCK + GEMM_ROWS - 1 (taller inputs
# run as blocks of GEMM_BLOCK plus one last block of GEMM_ROWS or more), so a row's logits do not depend on how many
# other rows share the step.
GEMM_ROWS = 48
GEMM_BLOCK = 128
PREFILL_TOKENS = 2048  # prompt tokens prefilled together in one forward (bounds activation memory)
NUCLEUS_CANDIDATES = 256  # the top-p nucleus is searched among these most likely tokens first
PACK_ROWS = 128  # oneDNN weight-packing hint (fixed: the packing must not depend on the config)


# -- model ---------------------------------------------------------------------------------------------------
def _prepack(weight: torch.Tensor):
    """bf16 weight in oneDNN's blocked layout (same results as F.linear; ~30 % faster on AMX CPUs, 5-30 % on an
    AVX512-BF16 EPYC at 48-128 rows), or None."""
    if weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    except (AttributeError, RuntimeError):
        return None


class Linear:
    """y = x W^T + b for 2-D x."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.shape, self.bias = tuple(weight.shape), bias  # (out_features, in_features)
        self.packed = _prepack(weight)
        self.weight = weight if self.packed is None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x of at least GEMM_ROWS rows."""
        if x.shape[0] < GEMM_BLOCK + GEMM_ROWS:
            return self._mm(x)
        ends = list(range(GEMM_BLOCK, x.shape[0] - GEMM_ROWS + 1, GEMM_BLOCK)) + [x.shape[0]]
        return torch.cat([self._mm(x[lo:hi]) for lo, hi in zip([0] + ends, ends)])

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _stacked(linears) -> Linear:
    """One Linear computing several transformers Linears side by side (q/k/v, gate/up)."""
    weight = torch.cat([m.weight for m in linears])
    if all(m.bias is None for m in linears):
        return Linear(weight)
    return Linear(weight, torch.cat([m.bias if m.bias is not None else weight.new_zeros(m.out_features)
                                     for m in linears]))


@dataclass
class Layer:
    """One decoder layer: RMSNorm weights and projections (q/k/v and gate/up stacked)."""

    norm_attn: torch.Tensor
    qkv: Linear
    out: Linear
    norm_mlp: torch.Tensor
    gate_up: Linear
    down: Linear

    @classmethod
    def of(cls, layer) -> "Layer":
        attn, mlp = layer.self_attn, layer.mlp
        return cls(layer.input_layernorm.weight, _stacked([attn.q_proj, attn.k_proj, attn.v_proj]),
                   Linear(attn.o_proj.weight, attn.o_proj.bias), layer.post_attention_layernorm.weight,
                   _stacked([mlp.gate_proj, mlp.up_proj]), Linear(mlp.down_proj.weight, mlp.down_proj.bias))


def _sliding_window(model) -> int | None:
    for layer in model.model.layers:
        attn = layer.self_attn
        window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(model.config, "sliding_window", None)
        if window is not None:
            return int(window)
    return None


def check_supported(model) -> None:
    """Raise a ValueError naming what the fast backend cannot run."""
    config, arch = model.config, type(model).__name__
    problems = []
    if arch not in SUPPORTED_ARCHITECTURES:
        problems.append(f"architecture {arch}")
    elif getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act!r}")
    elif getattr(model.model.rotary_emb, "rope_type", "default") not in ROPE_TYPES:
        problems.append(f"rope_type={model.model.rotary_emb.rope_type!r}")
    if problems:
        raise ValueError(
            f"backend=fast runs {list(SUPPORTED_ARCHITECTURES)} with silu MLPs and RoPE types {list(ROPE_TYPES)}; "
            f"this model has {', '.join(problems)}: use backend=hf"
        )


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to `rows` rows."""
    return x if x.shape[0] == rows else F.pad(x, (0,) * (2 * x.dim() - 1) + (rows - x.shape[0],))


def gemm_rows(rows: int) -> int:
    return max(rows, GEMM_ROWS)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm (normalised in fp32, weight applied in the model dtype) in fewer ops."""
    return weight * F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def sdpa_decode(q: torch.Tensor, prefix, generated) -> torch.Tensor:
    """Decode attention with torch SDPA (the fallback of FastKernels.attention, same arguments): each row's prompt
    and generated keys gathered side by side, padded to the longest, the padding masked."""
    pk, pv, pre, plen = prefix
    k, v, glen = generated
    rows, heads, dim = q.shape
    kv_heads, width, gen_width = k.shape[1], int(plen.max()), int(glen.max())
    keys = torch.cat([pk[pre, :, :width], k[:rows, :, :gen_width]], dim=2)
    values = torch.cat([pv[pre, :, :width], v[:rows, :, :gen_width]], dim=2)
    mask = torch.cat([torch.arange(width) < plen[:, None], torch.arange(gen_width) < glen[:, None]], dim=1)
    grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)  # query heads of one kv head side by side
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask[:, None, None, :])
    return out.reshape(rows, heads, dim)


def _round_up(n: int, multiple: int = KEY_BLOCK) -> int:
    return -(-n // multiple) * multiple


class KVCache:
    """Keys and values of all layers: prompts (layers, prompt slots, kv_heads, prompt length, head_dim), each stored
    once for the rows that sample it, and generated tokens (layers, slots, kv_heads, new tokens, head_dim), step
    row b in slot b; lengths rounded up to KEY_BLOCK. With `blocked`, keys are in block_keys' layout (the C
    kernels'). Zero-filled: positions past a row's length must be finite for SDPA's masking."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, prompt_slots: int,
                 prompt_length: int, slots: int, length: int, blocked: bool = False):
        self.blocked = blocked
        shape = (layers, prompt_slots, kv_heads, _round_up(prompt_length), head_dim)
        self.pk, self.pv = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        shape = (layers, slots, kv_heads, _round_up(length), head_dim)
        self.k, self.v = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)

    def fits(self, prompt_slots: int, prompt_length: int, slots: int, length: int) -> bool:
        have = (*self.pk.shape[1:2], self.pk.shape[3], self.k.shape[1], self.k.shape[3])
        return all(h >= n for h, n in zip(have, (prompt_slots, prompt_length, slots, length)))

    def load_prompt(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """A prefilled prompt's (layers, kv_heads, P, head_dim) keys and values into prompt slot `slot`."""
        if self.blocked:
            padded = _round_up(k.shape[2])
            k = block_keys(F.pad(k, (0, 0, 0, padded - k.shape[2])))
        self.pk[:, slot, :, : k.shape[2]] = k
        self.pv[:, slot, :, : v.shape[2]] = v

    def move(self, src: int, dst: int, length: int) -> None:
        """The first `length` generated positions of slot src to slot dst (whole key blocks)."""
        length = _round_up(length)
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class LlamaForward:
    """Llama-family decoder (Llama, Qwen2's q/k/v biases, Mistral) over a KVCache, weights from a transformers model."""

    def __init__(self, model, kernels=None):
        check_supported(model)
        config, inner = model.config, model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.embed, self.norm, self.lm_head = inner.embed_tokens.weight, inner.norm.weight, Linear(model.lm_head.weight)
        self.layers = [Layer.of(layer) for layer in inner.layers]
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(inner.rotary_emb.attention_scaling)
        self.sliding_window = _sliding_window(model)
        self.kernels = kernels if kernels is not None and kernels.supports(self.dtype) else None
        self._cos = self._sin = torch.empty(0, self.head_dim, dtype=self.dtype)

    def new_cache(self, prompt_slots: int, prompt_length: int, slots: int, length: int) -> KVCache:
        return KVCache(len(self.layers), self.kv_heads, self.head_dim, self.dtype, prompt_slots, prompt_length, slots,
                       length, blocked=self.kernels is not None)

    def cache_bytes(self, positions: int) -> int:
        """Bytes of keys and values for `positions` positions (all layers)."""
        item = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.kv_heads * positions * self.head_dim * item

    def _rope(self, length: int) -> None:
        """cos/sin tables for positions 0..length-1, as transformers' rotary embedding computes them."""
        if self._cos.shape[0] >= length:
            return
        freqs = torch.arange(length, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos = (emb.cos() * self.rope_scale).to(self.dtype)
        self._sin = (emb.sin() * self.rope_scale).to(self.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _split_rotate(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """-> q (N, heads, D), k and v (N, kv_heads, D), q and k rotated."""
        qk = self._rotate(qkv[:, : self.heads + self.kv_heads], cos[:, None], sin[:, None])
        return qk[:, : self.heads], qk[:, self.heads :], qkv[:, self.heads + self.kv_heads :]

    def _add_norm(self, x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor):
        """(x + y, RMSNorm(x + y)); without y only the norm. The C kernel (bf16 only: in fp32 its other summation
        order would break exact agreement with transformers) updates x in place."""
        if self.kernels is not None and self.dtype == torch.bfloat16:
            return x, self.kernels.add_norm(x, y, weight, self.eps)
        x = x if y is None else x + y
        return x, rms_norm(x, weight, self.eps)

    def _act(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up"""
        if self.kernels is not None and self.dtype == torch.bfloat16:
            return self.kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, -1)
        return F.silu(gate) * up

    def _layers(self, x: torch.Tensor, attend) -> torch.Tensor:
        """x (N, hidden) through every decoder layer and the final norm; attend(layer index, qkv projections
        (N, heads + 2 kv_heads, D)) -> attention output (N, heads * D)."""
        x, h = self._add_norm(x, None, self.layers[0].norm_attn)
        for i, layer in enumerate(self.layers):
            attn = attend(i, layer.qkv(h).view(x.shape[0], -1, self.head_dim))
            x, h = self._add_norm(x, layer.out(attn), layer.norm_mlp)
            following = self.layers[i + 1].norm_attn if i + 1 < len(self.layers) else self.norm
            x, h = self._add_norm(x, layer.down(self._act(layer.gate_up(h))), following)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """LM head on final-normed hidden states: (rows, hidden) -> (rows, vocab) in the model dtype."""
        return self.lm_head(pad_rows(h, gemm_rows(h.shape[0])))[: h.shape[0]]

    def prefill(self, prompts: Sequence[Sequence[int]]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Several prompts in one forward (their tokens side by side, each attending only to itself): per prompt
        its keys and values (layers, kv_heads, P, D) and next-token logits (vocab,). The GEMMs run on the tokens
        in row blocks as Linear cuts them, so a prompt's result does not depend on which other prompts share the
        call."""
        lengths = [len(ids) for ids in prompts]
        starts = [sum(lengths[:j]) for j in range(len(lengths))]
        total = sum(lengths)
        self._rope(max(lengths))
        positions = torch.cat([torch.arange(n) for n in lengths])
        cos, sin = self._cos[positions], self._sin[positions]
        keys: list[list[torch.Tensor]] = [[] for _ in prompts]
        values: list[list[torch.Tensor]] = [[] for _ in prompts]
        padded = gemm_rows(total)

        def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = self._split_rotate(qkv[:total], cos, sin)
            out = qkv.new_zeros(padded, self.heads * self.head_dim)
            for j, (lo, n) in enumerate(zip(starts, lengths)):
                qj, kj, vj = (t[lo : lo + n].transpose(0, 1) for t in (q, k, v))  # (heads, P, D)
                keys[j].append(kj)
                values[j].append(vj)
                attn = F.scaled_dot_product_attention(qj[None], kj[None], vj[None], is_causal=True, enable_gqa=True)
                out[lo : lo + n] = attn[0].transpose(0, 1).reshape(n, -1)
            return out

        ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
        h = self._layers(self.embed[pad_rows(ids, padded)], attend)
        logits = self.logits(h[[lo + n - 1 for lo, n in zip(starts, lengths)]])
        return [(torch.stack(keys[j]), torch.stack(values[j]), logits[j]) for j in range(len(prompts))]

    def decode(self, cache: KVCache, tokens: torch.Tensor, prompt_slots: torch.Tensor, prompt_lengths: torch.Tensor,
               generated: torch.Tensor) -> torch.Tensor:
        """One step for rows 0..B-1: token b follows the prompt in prompt slot prompt_slots[b] (prompt_lengths[b]
        positions) and the generated[b] tokens before it in slot b. Returns logits (B, vocab).

        The GEMMs run on gemm_rows(B) rows (appended rows hold token 0), attention and the cache on the B real
        rows."""
        rows, padded = tokens.shape[0], gemm_rows(tokens.shape[0])
        positions = prompt_lengths + generated
        self._rope(int(positions.max()) + 1)
        cos, sin = self._cos[positions], self._sin[positions]

        def attend(i: int, qkv: torch.Tensor) -> torch.Tensor:
            q = self._rotate_store(qkv[:rows], cos, sin, generated, cache, i)
            prefix = (cache.pk[i], cache.pv[i], prompt_slots, prompt_lengths)
            attn = self._attend(q, prefix, (cache.k[i], cache.v[i], generated + 1))
            return pad_rows(attn.view(rows, -1), padded)

        return self.logits(self._layers(self.embed[pad_rows(tokens, padded)], attend)[:rows])

    def _rotate_store(self, qkv, cos, sin, index, cache: KVCache, layer: int) -> torch.Tensor:
        """Rotated q (B, heads, D); the rotated k and v go to generated position index[b] of slot b of `layer`."""
        if self.kernels is not None:
            return self.kernels.rope_store(qkv, cos, sin, index, cache.k[layer], cache.v[layer], self.heads)
        q, k, v = self._split_rotate(qkv, cos, sin)
        slots = torch.arange(qkv.shape[0])
        cache.k[layer][slots, :, index] = k
        cache.v[layer][slots, :, index] = v
        return q

    def _attend(self, q: torch.Tensor, prefix, generated) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.attention(q, prefix, generated)
        return sdpa_decode(q, prefix, generated)


# -- sampling ------------------------------------------------------------------------------------------------
_M32, _M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def request_keys(seed: int, count: int) -> torch.Tensor:
    """(count, 2) int64: two 32-bit keys per request index, from the seed."""
    base = _splitmix64(seed & _M64)
    keys = [_splitmix64(base ^ r) for r in range(count)]
    return torch.tensor([[k & _M32, k >> 32] for k in keys], dtype=torch.int64).reshape(count, 2)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2**32 for 32-bit x, without overflowing int64."""
    return ((((x * (c >> 16)) & 0xFFFF) << 16) + x * (c & 0xFFFF)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash of 32-bit values held in int64."""
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1) for each (request keys, token index): 53 hashed bits, no RNG state."""
    high = _hash32(keys[:, 0] ^ steps)
    low = _hash32(high ^ keys[:, 1])
    return ((high << 21) | (low >> 11)).double() / 2.0**53


def _draw(weights: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Column index drawn by inverse CDF; with top_p < 1 (weights sorted, most likely first) only the nucleus,
    the smallest prefix holding >= top_p (as transformers' TopPLogitsWarper)."""
    if top_p < 1.0:
        weights = weights.masked_fill(weights.cumsum(-1) - weights >= top_p, 0.0)
    cdf = weights.double().cumsum(-1)
    pick = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)
    return pick.clamp_(max=cdf.shape[-1] - 1)[:, 0]


def sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor, kernels=None) -> torch.Tensor:
    """Next token per row: argmax when temperature == 0, else temperature / top-p sampling with draws u
    (the C kernel where given, else torch ops; both draw by inverse CDF over the same weights)."""
    if temperature <= 0:
        return logits.argmax(-1)
    if kernels is not None and kernels.supports(logits.dtype):
        return kernels.sample(logits, temperature, top_p, u)
    scaled = logits.float() / temperature
    if top_p >= 1.0:
        return _draw(torch.softmax(scaled, -1), u, 1.0)
    top, index = scaled.topk(min(NUCLEUS_CANDIDATES, scaled.shape[-1]), dim=-1)
    probs = torch.exp(top - torch.logsumexp(scaled, -1, keepdim=True))
    tokens = index.gather(1, _draw(probs, u, top_p)[:, None])[:, 0]
    flat = (probs.sum(-1) < top_p).nonzero()[:, 0]  # rows whose nucleus may hold more candidates: full sort
    if len(flat):
        probs, index = torch.softmax(scaled[flat], -1).sort(dim=-1, descending=True)
        tokens[flat] = index.gather(1, _draw(probs, u[flat], top_p)[:, None])[:, 0]
    return tokens


# -- scheduling ----------------------------------------------------------------------------------------------
def check_params(params: SamplingParams) -> None:
    if params.n < 1 or params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_new_tokens < 1:
        raise ValueError(
            f"bad sampling params {params}: need n >= 1, temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1"
        )


class _Run:
    """One generate call: requests go through the cache slots until every one has finished.

    Active rows are always 0..active-1 (row = generated-cache slot). A finished row is filled with the last active
    row, and new requests are appended after the active rows, so every step runs on one contiguous block of rows.
    A prompt's keys and values sit in one prompt slot while any row samples it; its prefill result is kept until
    its last request has started.
    """

    def __init__(self, backend: "FastBackend", prompts: list[tuple[int, ...]], params: SamplingParams, seed: int,
                 cache: KVCache, slots: int, bar: tqdm):
        self.backend, self.forward, self.params, self.cache = backend, backend.forward, params, cache
        self.slots, self.bar, self.start = slots, bar, time.perf_counter()
        self.prompts = prompts  # request index -> prompt token ids
        self.pending = deque(range(len(prompts)))
        self.unstarted = Counter(prompts)  # requests of a prompt not yet started
        self.prefilled: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.prompt_slot: dict[tuple[int, ...], int] = {}
        self.prompt_rows: Counter = Counter()  # active rows per prompt
        self.free_prompt_slots = list(range(cache.pk.shape[1]))[::-1]
        self.keys = request_keys(seed, len(prompts))
        self.request = [0] * slots  # per row: request index, generated tokens
        self.tokens: list[list[int]] = [[] for _ in range(slots)]
        self.row_prompt = torch.zeros(slots, dtype=torch.int64)  # prompt slot of the row
        self.row_prompt_length = torch.zeros(slots, dtype=torch.int64)
        self.last = torch.zeros(slots, dtype=torch.int64)  # the row's last sampled token
        self.steps = torch.zeros(slots, dtype=torch.int64)  # tokens sampled so far (all but the last are cached)
        self.row_keys = torch.zeros(slots, 2, dtype=torch.int64)
        self.active = 0
        self.outputs: list[list[int]] = [[] for _ in prompts]  # generated token ids per request
        self.stats = Counter()
        self.stop_window = 4 * max((len(s) for s in params.stop), default=0) + 8  # tokens decoded for stop checks

    def run(self) -> list[list[int]]:
        while True:
            self._admit()
            if self.active == 0:
                return self.outputs
            rows = self.active
            logits = self.forward.decode(self.cache, self.last[:rows], self.row_prompt[:rows],
                                         self.row_prompt_length[:rows], self.steps[:rows] - 1)
            self.stats["steps"] += 1
            self._retire(self._emit(0, rows, logits))

    def _admit(self) -> None:
        """Fill free slots with pending requests (prefill a new prompt, sample the first token)."""
        while self.pending and self.active < self.slots:
            lo = self.active
            batch = [self.pending.popleft() for _ in range(min(self.slots - lo, len(self.pending)))]
            self._prefill([self.prompts[r] for r in batch])
            logits = torch.stack([self._start(lo + i, r) for i, r in enumerate(batch)])
            self.active += len(batch)
            if self.stats["steps"]:
                self.stats["refills"] += len(batch)
            self._retire(self._emit(lo, lo + len(batch), logits))

    def _prefill(self, prompts: list[tuple[int, ...]]) -> None:
        """Prefill the distinct prompts not yet prefilled, up to PREFILL_TOKENS tokens per forward; the last forward
        also takes the prompts of the next pending requests while they fit (refills then rarely need a forward of
        their own: one prefill forward costs about a decode step, however few its tokens)."""
        todo = list(dict.fromkeys(ids for ids in prompts if ids not in self.prefilled))
        while todo:
            group, tokens = [], 0
            while todo and (not group or tokens + len(todo[0]) <= PREFILL_TOKENS):
                tokens += len(todo[0])
                group.append(todo.pop(0))
            if not todo:
                for ids in (self.prompts[r] for r in self.pending):
                    if tokens + len(ids) > PREFILL_TOKENS:
                        break
                    if ids not in self.prefilled and ids not in group:
                        tokens += len(ids)
                        group.append(ids)
            self.prefilled.update(zip(group, self.forward.prefill(group)))
            self.stats["prefills"] += len(group)
            self.stats["prefill_calls"] += 1

    def _start(self, row: int, request: int) -> torch.Tensor:
        ids = self.prompts[request]
        k, v, logits = self.prefilled[ids]
        self.unstarted[ids] -= 1
        if self.unstarted[ids] == 0:
            del self.prefilled[ids]
        if ids not in self.prompt_slot:
            self.prompt_slot[ids] = self.free_prompt_slots.pop()
            self.cache.load_prompt(self.prompt_slot[ids], k, v)
        self.prompt_rows[ids] += 1
        self.row_prompt[row], self.row_prompt_length[row] = self.prompt_slot[ids], len(ids)
        self.steps[row], self.row_keys[row] = 0, self.keys[request]
        self.request[row], self.tokens[row] = request, []
        return logits

    def _emit(self, lo: int, hi: int, logits: torch.Tensor) -> list[int]:
        """Sample a token for rows lo..hi-1 and append it; returns the rows that are finished."""
        p = self.params
        u = uniforms(self.row_keys[lo:hi], self.steps[lo:hi])
        tokens = sample(logits, p.temperature, p.top_p, u, self.forward.kernels)
        self.last[lo:hi] = tokens
        self.steps[lo:hi] += 1
        for row, token in zip(range(lo, hi), tokens.tolist()):
            self.tokens[row].append(token)
        done = torch.isin(tokens, self.backend.eos) | (self.steps[lo:hi] >= p.max_new_tokens)
        if p.stop:
            done |= self._stop_seen(lo, hi)
        return (done.nonzero()[:, 0] + lo).tolist()

    def _stop_seen(self, lo: int, hi: int) -> torch.Tensor:
        """Rows whose latest tokens contain a stop string (the text is cut at the first one at the end)."""
        tails = [self.tokens[row][-self.stop_window :] for row in range(lo, hi)]
        texts = self.backend.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.params.stop if s) for t in texts], dtype=torch.bool)

    def _retire(self, rows: list[int]) -> None:
        for row in sorted(rows, reverse=True):  # highest first: moving the last row never touches a lower one
            request = self.request[row]
            self.outputs[request] = self.tokens[row]
            self.stats["new_tokens"] += len(self.tokens[row])
            self._release_prompt(self.prompts[request])
            self.active -= 1
            if row != self.active:
                self._move(self.active, row)
            self.bar.update(1)
            rate = self.stats["new_tokens"] / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(tok_s=f"{rate:.1f}", refresh=False)

    def _release_prompt(self, ids: tuple[int, ...]) -> None:
        self.prompt_rows[ids] -= 1
        if self.prompt_rows[ids] == 0:
            self.free_prompt_slots.append(self.prompt_slot.pop(ids))

    def _move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst, int(self.steps[src]) - 1)
        for t in (self.row_prompt, self.row_prompt_length, self.last, self.steps, self.row_keys):
            t[dst] = t[src]
        self.request[dst], self.tokens[dst] = self.request[src], self.tokens[src]


# -- backend -------------------------------------------------------------------------------------------------
def resolve_dtype(name: str | None) -> str:
    """null / bf16_if_fast: bfloat16 where the CPU runs it natively, else float32; other names as given."""
    from crescent.models.loading import bf16_is_fast

    if name in (None, "bf16_if_fast"):
        return "bfloat16" if bf16_is_fast("cpu") else "float32"
    return name


class FastBackend:
    def __init__(self, model, tokenizer, batch_size: int = 128, kernels: str = "auto", cache_gb: float = 8.0,
                 cache_dir: str | Path | None = None):
        if batch_size < 1:
            raise ValueError(f"backend.batch_size={batch_size}; must be >= 1")
        if kernels not in KERNELS:
            raise ValueError(f"backend.kernels={kernels!r}; allowed: {list(KERNELS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size, self.cache_gb = int(batch_size), float(cache_gb)
        self.forward = LlamaForward(model, self._kernels(kernels, cache_dir))
        self.native = self.forward.kernels is not None  # C kernels in use (else the torch fallbacks)
        eos = {tokenizer.eos_token_id}
        eos_config = model.generation_config.eos_token_id
        eos |= set(eos_config) if isinstance(eos_config, (list, tuple)) else {eos_config}
        self.eos = torch.tensor(sorted(e for e in eos if e is not None), dtype=torch.int64)
        self._cache: KVCache | None = None
        # sequences, new_tokens, seconds; steps (decode steps), prefills (distinct prompts), refills (requests that
        # entered after the first step), slots, lengths (tokens generated per request, eos included)
        self.last_stats: dict[str, Any] = {}

    @staticmethod
    def _kernels(kernels: str, cache_dir):
        if kernels == "torch":
            return None
        from crescent.backends.native import load_kernels

        loaded = load_kernels(cache_dir)
        if loaded is None and kernels == "native":
            raise RuntimeError("backend.kernels=native but the C kernels could not be built (see the log); use auto")
        return loaded

    @classmethod
    def from_config(cls, backend_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], cache_dir: str | Path | None,
                    seed: int = 0):
        from crescent.models.loading import load_model_and_tokenizer

        dtype = resolve_dtype(backend_cfg.get("dtype", "bf16_if_fast"))
        tokenizer, model = load_model_and_tokenizer(model_cfg, cache_dir, dtype=dtype, device="cpu")
        return cls(
            model,
            tokenizer,
            batch_size=backend_cfg.get("batch_size", 128),
            kernels=backend_cfg.get("kernels", "auto"),
            cache_gb=backend_cfg.get("cache_gb", 8.0),
            cache_dir=cache_dir,
        )

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt).input_ids
        # the chat template already holds the special tokens
        text = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _slots(self, requests: int, prompt_length: int, length: int) -> int:
        """Up to batch_size slots (one per request at most) whose cache fits in cache_gb."""
        slots = min(self.batch_size, requests)
        per_slot = self.forward.cache_bytes(prompt_length + length)  # its generated tokens and at most one prompt
        fit = max(1, int(self.cache_gb * 2**30 // per_slot))
        if fit < slots:
            log.warning("KV cache: %d slots of %d positions exceed backend.cache_gb=%s; using %d slots",
                        slots, prompt_length + length, self.cache_gb, fit)
            slots = fit
        return slots

    def _kv_cache(self, prompt_slots: int, prompt_length: int, slots: int, length: int) -> KVCache:
        """A cache at least this large; kept for the next call."""
        cache = self._cache
        if cache is None or not cache.fits(prompt_slots, prompt_length, slots, length):
            self._cache = None  # free the old one first
            cache = self._cache = self.forward.new_cache(prompt_slots, prompt_length, slots, length)
        return cache

    def _schedule(self, requests: list[tuple[int, ...]], params: SamplingParams, seed: int):
        """Run the requests through the slots: (generated token ids per request, run statistics)."""
        if not all(requests):
            raise ValueError("a prompt encodes to no tokens")
        prompt_length = max(map(len, requests))
        window = self.forward.sliding_window
        if window is not None and prompt_length + params.max_new_tokens > window:
            raise ValueError(f"prompt + max_new_tokens = {prompt_length + params.max_new_tokens} exceeds the model's "
                             f"sliding window {window}; use backend=hf")
        slots = self._slots(len(requests), prompt_length, params.max_new_tokens)
        prompt_slots = min(slots, len(set(requests)))  # prompts with an active row
        cache = self._kv_cache(prompt_slots, prompt_length, slots, params.max_new_tokens)
        with tqdm(total=len(requests), desc="generate (fast)", unit="seq", disable=None, leave=False) as bar:
            run = _Run(self, requests, params, seed, cache, slots, bar)
            outputs = run.run()
        return outputs, Counter(run.stats, slots=slots)

    @torch.inference_mode()
    def generate_tokens(self, prompts: Sequence[Sequence[int]], params: SamplingParams, seed: int) -> list[list[int]]:
        """Already tokenized prompts -> generated token ids (eos included), params.n per prompt, prompt-major.
        Stop strings end a sequence but are not cut here (the caller decodes and cuts)."""
        check_params(params)
        copies = 1 if params.temperature <= 0 else params.n  # greedy copies are identical: generate once
        requests = [ids for p in prompts for ids in [tuple(p)] * copies]  # request r: prompt r // copies
        start = time.perf_counter()
        outputs, stats = self._schedule(requests, params, seed) if requests else ([], Counter())
        self.last_stats = dict(sequences=len(requests), new_tokens=stats["new_tokens"],
                               seconds=time.perf_counter() - start, steps=stats["steps"], prefills=stats["prefills"],
                               prefill_calls=stats["prefill_calls"], refills=stats["refills"], slots=stats["slots"],
                               lengths=[len(t) for t in outputs])
        if copies != params.n:
            outputs = [o for o in outputs for _ in range(params.n)]
        return outputs

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[list[str]]:
        outputs = self.generate_tokens([self._encode(p) for p in prompts], params, seed)
        texts = [cut_at_stop(t, params.stop) for t in self.tokenizer.batch_decode(outputs, skip_special_tokens=True)]
        return [texts[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]
