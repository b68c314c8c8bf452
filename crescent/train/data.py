"""SFT data: chat rows -> assistant-only labels -> (optionally packed) length-grouped batches.

Labels are aligned with `input_ids` (the loss shifts them); -100 marks prompt, template and padding.
Packed blocks keep examples apart with a 4D block-diagonal causal mask (see `packed_attention_mask`), or,
with `flatten=True` (FlashAttention), padding-free: the micro batch is one row whose position_ids restart
at 0 per example and no attention mask (transformers' DataCollatorWithFlattening layout, see `collate_flat`).
"""
from __future__ import annotations

import bisect
import json
import random
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class SFTDataError(ValueError):
    """A training row is malformed or has nothing to train on."""


# ---------------------------------------------------------------- tokenization


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """(full rendering, [(start, end) character span of each assistant turn]) by the prefix method.

    A span runs from the end of the generation prompt before the turn to the end of the rendering
    that includes it (content + end-of-turn token), minus trailing whitespace (template glue).
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not upto.startswith(prompt):
            raise ValueError(f"chat template: the generation prompt before assistant turn {i} is not a prefix of "
                             "the rendering that includes the turn; assistant-only masking needs prefix-stable "
                             "rendering")
        if not full.startswith(upto):
            raise ValueError(f"chat template: the rendering up to assistant turn {i} is not a prefix of the full "
                             "conversation (does the template rewrite earlier turns, e.g. strip reasoning?)")
        end = len(upto.rstrip())
        if end <= len(prompt):
            raise ValueError(f"chat template: assistant turn {i} renders to no text")
        spans.append((len(prompt), end))
    return full, spans


def tokenize_chat(messages: list[dict], tokenizer, max_seq_len: int) -> dict:
    """input_ids, labels (-100 except tokens overlapping an assistant span), n_trainable, truncated.

    labels[0] is always -100: the first token is never predicted (the loss shifts labels by one), and
    this also keeps packed examples from being trained to predict across their boundary.
    """
    text, spans = assistant_spans(messages, tokenizer)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    truncated = len(enc["input_ids"]) > max_seq_len
    input_ids = list(enc["input_ids"])[:max_seq_len]
    labels = [IGNORE_INDEX] * len(input_ids)
    for k, (start, end) in enumerate(enc["offset_mapping"][: len(input_ids)]):
        # a token is trainable if it covers any assistant character
        if any(start < s_end and max(end, start + 1) > s_start for s_start, s_end in spans):
            labels[k] = input_ids[k]
    if labels:
        labels[0] = IGNORE_INDEX
    n_trainable = sum(x != IGNORE_INDEX for x in labels)
    return {"input_ids": input_ids, "labels": labels, "n_trainable": n_trainable, "truncated": truncated}


# ---------------------------------------------------------------- rows


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{j}]: role must be one of {list(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{j}]: content must be a string"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn"
    return None


def read_chat_rows(path: str | Path) -> list[dict]:
    """Validated rows of a chat jsonl (blank lines skipped); each row gets `_line` (1-based line number)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SFTDataError(f"{path}:{line_no}: invalid JSON ({err.msg})") from err
            problem = _row_problem(row)
            if problem:
                raise SFTDataError(f"{path}:{line_no}: {problem}")
            rows.append({**row, "_line": line_no})
    if not rows:
        raise SFTDataError(f"{path}: no rows")
    return rows


def row_name(row: dict, source: str = "") -> str:
    where = f"{source}:{row['_line']}" if "_line" in row else source or "row"
    return f"{where} (id={row.get('id')!r})"


def tokenize_rows(rows: Sequence[dict], tokenizer, max_seq_len: int, source: str = "") -> list[dict]:
    """tokenize_chat over rows (tqdm); a row with nothing trainable left raises SFTDataError naming it."""
    examples = []
    for row in tqdm(rows, desc="tokenize", unit="row", disable=None, leave=False):
        try:
            ex = tokenize_chat(row["messages"], tokenizer, max_seq_len)
        except ValueError as err:
            raise SFTDataError(f"{row_name(row, source)}: {err}") from err
        if ex["n_trainable"] == 0:
            raise SFTDataError(f"{row_name(row, source)}: no trainable (assistant) tokens within "
                               f"max_seq_len={max_seq_len}; shorten the prompt or raise max_seq_len")
        examples.append(ex)
    return examples


def split_rows(rows: Sequence, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split keeping file order; >= 1 val row if val_fraction > 0 and >= 2 rows."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
    n = len(rows)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_idx = set(random.Random(seed).sample(range(n), n_val))
    return ([r for i, r in enumerate(rows) if i not in val_idx], [r for i, r in enumerate(rows) if i in val_idx])


# ---------------------------------------------------------------- packing


def pack_examples(examples: Sequence[dict], max_seq_len: int) -> list[dict]:
    """Best-fit-decreasing packing into blocks of <= max_seq_len tokens.

    Each block has input_ids, labels, position_ids (restarting at 0 per example; this is what marks
    example boundaries) and n_examples. Examples keep their relative order inside a block.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin index)
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_seq_len:
            raise ValueError(f"example {i} has {n} tokens > max_seq_len={max_seq_len}; truncate first")
        k = bisect.bisect_left(free, (n, -1))  # the tightest bin that fits
        if k < len(free):
            space, b = free.pop(k)
        else:
            space, b = max_seq_len, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - n, b))
    blocks = []
    for members in bins:
        block = {"input_ids": [], "labels": [], "position_ids": [], "n_examples": len(members)}
        for i in sorted(members):
            ex = examples[i]
            block["input_ids"] += ex["input_ids"]
            block["labels"] += [IGNORE_INDEX] + list(ex["labels"][1:])
            block["position_ids"] += list(range(len(ex["input_ids"])))
        blocks.append(block)
    return blocks


def packed_attention_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 1, L, L) additive mask (0 = attend, dtype min = blocked): causal within each example only.

    An example starts wherever position_ids is 0. transformers' masking_utils returns a 4D mask as-is
    (eager adds it, sdpa passes it on), whereas its own position_ids-based packing detection is skipped
    whenever a 2D attention_mask or a KV cache (use_cache defaults to True) is present.
    """
    seg = (position_ids == 0).cumsum(-1)
    n = position_ids.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


# ---------------------------------------------------------------- batching


def collate(batch: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors. Plain rows: input_ids, labels, attention_mask (B, L); real_tokens (a count).

    Packed blocks (rows with position_ids): also position_ids, and attention_mask is the 4D
    block-diagonal mask; padding forms its own segment (positions 0..), never seen by real tokens.
    """
    n = max(len(x["input_ids"]) for x in batch)
    input_ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    lengths = [len(x["input_ids"]) for x in batch]
    for b, x in enumerate(batch):
        input_ids[b, : lengths[b]] = torch.tensor(x["input_ids"], dtype=torch.long)
        labels[b, : lengths[b]] = torch.tensor(x["labels"], dtype=torch.long)
    out = {"input_ids": input_ids, "labels": labels, "real_tokens": torch.tensor(sum(lengths))}
    if "position_ids" not in batch[0]:
        out["attention_mask"] = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
        return out
    position_ids = torch.zeros((len(batch), n), dtype=torch.long)
    for b, x in enumerate(batch):
        position_ids[b, : lengths[b]] = torch.tensor(x["position_ids"], dtype=torch.long)
        position_ids[b, lengths[b]:] = torch.arange(n - lengths[b])
    out["position_ids"] = position_ids
    out["attention_mask"] = packed_attention_mask(position_ids)
    return out


def collate_flat(batch: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Padding-free: the micro batch as one (1, total tokens) row, no attention_mask, position_ids restarting
    at 0 at every example (packed blocks: inside each block too), as transformers' DataCollatorWithFlattening.

    FlashAttention-2 in transformers turns such position_ids into cu_seqlens (varlen kernels, nothing
    quadratic in memory); sdpa/eager build the same block-diagonal causal mask from them (masking_utils'
    packed-sequence detection, active when there is no attention_mask and no KV cache). Each example's
    first label is -100 (tokenize_chat, pack_examples), so no token is trained to predict across a boundary.
    """
    input_ids, labels, position_ids = [], [], []
    for x in batch:
        input_ids += x["input_ids"]
        labels += [IGNORE_INDEX] + list(x["labels"][1:])
        position_ids += x["position_ids"] if "position_ids" in x else list(range(len(x["input_ids"])))
    as_row = partial(torch.tensor, dtype=torch.long)
    return {"input_ids": as_row([input_ids]), "labels": as_row([labels]), "position_ids": as_row([position_ids]),
            "real_tokens": torch.tensor(len(input_ids)), "n_sequences": torch.tensor(len(batch))}


class LengthGroupedSampler(Sampler[int]):
    """Per-epoch shuffled indices, consecutive micro batches of similar length.

    The shuffled order is cut into mega-batches of `mega_batch_mult` micro batches, each sorted by
    length and cut into micro batches; full micro batches are then shuffled (the longest first, so
    out-of-memory shows at step 1) and a partial one stays last, so a DataLoader with
    batch_size=micro_batch_size sees exactly these batches. Deterministic for (seed, epoch).
    `start` > 0 skips that many micro batches of the next iteration (a mid-epoch resume).
    """

    def __init__(self, lengths: Sequence[int], micro_batch_size: int, seed: int = 0, group_by_length: bool = True,
                 mega_batch_mult: int = 50):
        self.lengths, self.micro_batch_size = list(lengths), micro_batch_size
        self.seed, self.group_by_length, self.mega_batch_mult = seed, group_by_length, mega_batch_mult
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = rng.sample(range(len(self.lengths)), len(self.lengths))
        mb = self.micro_batch_size
        if not self.group_by_length:
            return [order[i: i + mb] for i in range(0, len(order), mb)]
        mega = mb * self.mega_batch_mult
        batches = []
        for m in range(0, len(order), mega):
            chunk = sorted(order[m: m + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i: i + mb] for i in range(0, len(chunk), mb)]
        tail = [batches.pop()] if batches and len(batches[-1]) < mb else []
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda k: max(self.lengths[i] for i in batches[k]))
            batches.insert(0, batches.pop(longest))
        return batches + tail

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return (i for batch in self.batches()[start:] for i in batch)


class CountingLoader(DataLoader):
    """A DataLoader that counts the micro batches of the current epoch it has handed out (from its
    sampler's `start`), for SFTDataModule.state_dict."""

    batches_done = 0

    def __iter__(self):
        self.batches_done = getattr(self.sampler, "start", 0)
        for batch in super().__iter__():
            self.batches_done += 1  # before the yield: a checkpoint saved at this batch's end counts it
            yield batch


def batch_padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded positions when each batch is right-padded to its longest row."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - real / total if total else 0.0


# ---------------------------------------------------------------- Lightning


class SFTDataModule(L.LightningDataModule):
    """Reads a chat jsonl, splits, tokenizes (assistant-only labels), optionally packs, batches."""

    def __init__(self, path: str | Path, tokenizer, max_seq_len: int, micro_batch_size: int,
                 val_fraction: float = 0.1, packing: bool = False, group_by_length: bool = True, seed: int = 0,
                 num_workers: int = 0, flatten: bool = False):
        super().__init__()
        self.path, self.tokenizer = str(path), tokenizer
        self.max_seq_len, self.micro_batch_size = int(max_seq_len), int(micro_batch_size)
        self.val_fraction, self.packing, self.group_by_length = float(val_fraction), bool(packing), group_by_length
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.flatten = bool(flatten)  # padding-free batches (collate_flat), for FlashAttention
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token (set tokenizer.pad_token)")
        self.pad_id = int(tokenizer.pad_token_id)
        self.train_set: list[dict] | None = None
        self.val_set: list[dict] = []
        self.stats: dict[str, Any] = {}
        self._train_sampler: LengthGroupedSampler | None = None
        self._train_loader: CountingLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rows = read_chat_rows(self.path)
        train_rows, val_rows = split_rows(rows, self.val_fraction, self.seed)
        train = tokenize_rows(train_rows, self.tokenizer, self.max_seq_len, self.path)
        val = tokenize_rows(val_rows, self.tokenizer, self.max_seq_len, self.path)
        tokens = sum(len(x["input_ids"]) for x in train)
        trainable = sum(x["n_trainable"] for x in train)
        self.stats = {
            "rows": len(rows), "train_rows": len(train_rows), "val_rows": len(val_rows),
            "tokens": tokens, "trainable_tokens": trainable,
            "trainable_fraction": trainable / tokens if tokens else 0.0,
            "val_tokens": sum(len(x["input_ids"]) for x in val),
            "truncated_rows": sum(x["truncated"] for x in train + val),
        }
        if self.packing:
            train, val = pack_examples(train, self.max_seq_len), pack_examples(val, self.max_seq_len)
        self.train_set = train
        self.val_set = sorted(val, key=lambda x: len(x["input_ids"]))  # shortest first: little padding
        self.stats["train_sequences"] = len(train)

    def _loader(self, data: list[dict], sampler, cls=DataLoader) -> DataLoader:
        # its own generator: starting an epoch then takes no draw from the global RNG (dropout's)
        return cls(data, batch_size=self.micro_batch_size, sampler=sampler, shuffle=False,
                   collate_fn=collate_flat if self.flatten else partial(collate, pad_id=self.pad_id),
                   num_workers=self.num_workers,
                   generator=torch.Generator().manual_seed(self.seed))

    def train_sampler(self) -> LengthGroupedSampler:
        if self.train_set is None:
            raise RuntimeError("call setup() first")
        if self._train_sampler is None:
            lengths = [len(x["input_ids"]) for x in self.train_set]
            self._train_sampler = LengthGroupedSampler(lengths, self.micro_batch_size, self.seed,
                                                       self.group_by_length)
        return self._train_sampler

    def train_dataloader(self) -> DataLoader:
        self._train_loader = self._loader(self.train_set, self.train_sampler(), CountingLoader)
        return self._train_loader

    # Lightning saves state_dict() with each checkpoint and calls load_state_dict() (after setup, before
    # training) on resume, so a mid-epoch resume continues with the next micro batch of the same epoch
    # order. (Lightning's own stateful-DataLoader support misses it here: estimated_stepping_batches
    # builds the loader before the loop state is restored.) Exact on one process; under DDP Lightning
    # wraps the loader and sampler, and a mid-epoch resume restarts the epoch.
    def state_dict(self) -> dict:
        loader = self._train_loader
        return {"batches_done": loader.batches_done % len(loader)} if loader is not None else {}  # all = 0

    def load_state_dict(self, state: dict) -> None:
        self.train_sampler().start = int(state.get("batches_done", 0))

    def val_dataloader(self) -> DataLoader | list:
        """In length order; [] (Lightning then skips validation; None is rejected) when there are no val rows."""
        return self._loader(self.val_set, None) if self.val_set else []

    def padding_fraction(self, epoch: int = 0) -> float:
        """Padded share of all positions in one epoch of train batches (as the sampler cuts them)."""
        sampler = self.train_sampler()
        saved, sampler.epoch = sampler.epoch, epoch
        try:
            return batch_padding_fraction(sampler.lengths, sampler.batches())
        finally:
            sampler.epoch = saved
