"""crescent.train.data: assistant-only labels, row validation, split, packing isolation, sampler, DataModule."""
import copy
import json
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from crescent.models.loading import load_model_and_tokenizer, load_tokenizer
from crescent.train.data import (
    IGNORE_INDEX, LengthGroupedSampler, SFTDataError, SFTDataModule, batch_padding_fraction, collate,
    pack_examples, read_chat_rows, split_rows, tokenize_chat, tokenize_rows,
)
TINY = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny_llama.yaml")
EOT = "<|im_end|>"
SINGLE = [
    {"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples?"},
    {"role": "assistant", "content": "Three plus five gives eight.\nThe answer is 8."},
]
MULTI = [
    {"role": "system", "content": "You solve grade school maths."},
    {"role": "user", "content": "What is 7 times 6?"},
    {"role": "assistant", "content": "Seven sixes make forty-two."},
    {"role": "user", "content": "And half of that?"},
    {"role": "assistant", "content": "Half of forty-two is twenty-one."},
]
# bos/eos come from the tokenizer; the prompt ends in a newline as real templates do
SIMPLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ '### Reply\n' + m['content'] + eos_token + '\n\n' }}"
    "{% else %}{{ '### ' + m['role'] + '\n' + m['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Reply\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def runs(ids, labels, tokenizer, labelled=True):
    """Decoded text of each maximal run of labelled (or unlabelled) tokens."""
    out, cur = [], []
    for i, lab in zip(ids, labels):
        if (lab != IGNORE_INDEX) == labelled:
            cur.append(i)
        elif cur:
            out.append(tokenizer.decode(cur)), cur.clear()
    if cur:
        out.append(tokenizer.decode(cur))
    return out


def assert_assistant_only(messages, tokenizer, eot):
    ex = tokenize_chat(messages, tokenizer, max_seq_len=4096)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(ex["input_ids"]) == len(ex["labels"])
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex["input_ids"], ex["labels"]))
    assert tokenizer.decode(ex["input_ids"]) == full
    assert runs(ex["input_ids"], ex["labels"], tokenizer) == [c + eot for c in assistant]
    assert ex["n_trainable"] == sum(lab != IGNORE_INDEX for lab in ex["labels"])
    # the unlabelled tokens are exactly the rest: template + system/user text
    rest = full
    for c in assistant:
        rest = rest.replace(c + eot, "", 1)
    assert "".join(runs(ex["input_ids"], ex["labels"], tokenizer, labelled=False)) == rest
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in rest
    return ex


def test_single_turn_labels_only_the_answer_and_end_of_turn(tok):
    ex = assert_assistant_only(SINGLE, tok, EOT)
    assert ex["labels"][-2] == tok.convert_tokens_to_ids(EOT)  # then the template's trailing "\n"
    assert ex["labels"][-1] == IGNORE_INDEX


def test_multi_turn_with_system_labels_both_answers(tok):
    assert_assistant_only(MULTI, tok, EOT)
    assert_assistant_only(MULTI[1:], tok, EOT)  # without system: the template inserts its default one


def test_prefix_method_with_another_template(tok):
    other = copy.deepcopy(tok)
    other.chat_template = SIMPLE_TEMPLATE
    assert other.apply_chat_template(MULTI, tokenize=False).startswith(other.bos_token + "### system\n")
    assert_assistant_only(MULTI, other, other.eos_token)
    assert_assistant_only(SINGLE, other, other.eos_token)


def test_token_straddling_prompt_and_answer_is_trained(tok):
    other = copy.deepcopy(tok)  # the prompt ends in a space, so " Eight" is one token across the boundary
    other.chat_template = SIMPLE_TEMPLATE.replace("### Reply\n", "Reply: ")
    msgs = [{"role": "user", "content": "4+4?"}, {"role": "assistant", "content": "Eight"}]
    ex = tokenize_chat(msgs, other, 4096)
    assert "".join(runs(ex["input_ids"], ex["labels"], other)).strip() == "Eight" + other.eos_token


def test_template_that_rewrites_earlier_turns_is_rejected(tok):
    other = copy.deepcopy(tok)  # hides earlier answers, like templates that strip earlier reasoning
    other.chat_template = SIMPLE_TEMPLATE.replace(
        "m['content'] + eos_token", "(m['content'] if loop.last else '...') + eos_token")
    with pytest.raises(ValueError, match="not a prefix"):
        tokenize_chat(MULTI, other, 4096)


def test_truncates_from_the_right(tok):
    full = tokenize_chat(MULTI, tok, 4096)
    cut = tokenize_chat(MULTI, tok, len(full["input_ids"]) - 12)
    assert cut["input_ids"] == full["input_ids"][:-12] and cut["labels"] == full["labels"][:-12]
    assert cut["truncated"] and not full["truncated"]
    assert 0 < cut["n_trainable"] < full["n_trainable"]


def write_jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_row_with_nothing_trainable_fails_naming_it(tmp_path, tok):
    long_prompt = [{"role": "user", "content": "why " * 200}, {"role": "assistant", "content": "ok"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "messages": SINGLE}, "",
                                              {"id": "q-77", "messages": long_prompt}])
    rows = read_chat_rows(path)
    assert [r["_line"] for r in rows] == [1, 3]
    with pytest.raises(SFTDataError, match=r"d\.jsonl:3 \(id='q-77'\).*no trainable"):
        tokenize_rows(rows, tok, max_seq_len=64, source=str(path))
    assert len(tokenize_rows(rows[:1], tok, max_seq_len=64)) == 1


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ({"id": 1}, "'messages' must be a non-empty list"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]: role"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 5}]},
     r"messages\[1\]: content"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
])
def test_malformed_line_fails_with_its_line_number(tmp_path, bad, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": SINGLE}, {"messages": MULTI}, bad])
    with pytest.raises(SFTDataError, match=rf"bad\.jsonl:3: {problem}"):
        read_chat_rows(path)


def test_split_is_deterministic_and_complete():
    rows = list(range(50))
    train, val = split_rows(rows, 0.1, seed=3)
    assert (train, val) == split_rows(rows, 0.1, seed=3)
    assert len(val) == 5 and sorted(train + val) == rows and train == sorted(train)
    assert split_rows(rows, 0.1, seed=4)[1] != val
    assert len(split_rows(rows[:2], 0.01, 0)[1]) == 1
    assert split_rows(rows[:1], 0.5, 0) == ([0], [])
    assert split_rows(rows, 0.0, 0) == (rows, [])


def fake_examples(n, seed=0, lo=50, hi=400):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        ids = [rng.randrange(3, 1000) for _ in range(rng.randint(lo, hi))]
        labels = [IGNORE_INDEX] * (len(ids) // 2) + ids[len(ids) // 2:]
        out.append({"input_ids": ids, "labels": labels, "n_trainable": len(ids) - len(ids) // 2})
    return out


def split_block(block):
    starts = [k for k, p in enumerate(block["position_ids"]) if p == 0] + [len(block["input_ids"])]
    return [(block["input_ids"][a:b], block["labels"][a:b], block["position_ids"][a:b])
            for a, b in zip(starts, starts[1:])]


def test_packing_keeps_every_example_once_and_fills_blocks():
    examples = fake_examples(300)
    blocks = pack_examples(examples, 512)
    assert all(len(b["input_ids"]) <= 512 for b in blocks)
    pieces = [p for b in blocks for p in split_block(b)]
    assert sorted(ids for ids, _, _ in pieces) == sorted(ex["input_ids"] for ex in examples)
    by_ids = {tuple(ex["input_ids"]): ex for ex in examples}
    for ids, labels, pos in pieces:
        assert pos == list(range(len(ids)))
        assert labels[0] == IGNORE_INDEX and labels[1:] == by_ids[tuple(ids)]["labels"][1:]
    lengths = [len(b["input_ids"]) for b in blocks]
    assert sum(lengths) / (512 * len(blocks)) >= 0.95
    batches = LengthGroupedSampler(lengths, 8, seed=0).batches()
    assert batch_padding_fraction(lengths, batches) <= 0.05
    with pytest.raises(ValueError, match="truncate"):
        pack_examples(fake_examples(1, lo=600, hi=600), 512)


def test_collate_pads_right_and_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [-100]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert "position_ids" not in batch


def test_packed_mask_is_block_diagonal_causal():
    block = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100] * 5, "position_ids": [0, 1, 2, 0, 1]}
    batch = collate([block, {**block, "input_ids": [1, 2], "labels": [-100] * 2, "position_ids": [0, 1]}], 0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    allowed = (batch["attention_mask"] == 0)[:, 0].int().tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert allowed[1][2] == [0, 0, 1, 0, 0]  # padding sees only padding


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_separate_logits(tok, attn):
    _, model = load_model_and_tokenizer(TINY)
    model.set_attn_implementation(attn)
    rows = [SINGLE, MULTI, MULTI[1:3], [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]]
    examples = [tokenize_chat(m, tok, 512) for m in rows]
    blocks = pack_examples(examples, 128)  # 2 + 2 examples; the shorter block gets padded
    assert [b["n_examples"] for b in blocks] == [2, 2]
    assert len(blocks[0]["input_ids"]) != len(blocks[1]["input_ids"])
    batch = collate(blocks, tok.pad_token_id)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = {tuple(ex["input_ids"]): model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
                 for ex in examples}
        # the same block under a plain 2D mask leaks across examples: the check below can fail
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      attention_mask=torch.ones_like(batch["input_ids"])).logits
    n_checked, leak = 0, 0.0
    for b, block in enumerate(blocks):
        start = 0
        for ids, _, _ in split_block(block):
            ref = alone[tuple(ids)]
            torch.testing.assert_close(packed[b, start:start + len(ids)], ref, atol=1e-5, rtol=1e-5)
            leak = max(leak, (leaky[b, start:start + len(ids)] - ref).abs().max().item())
            start, n_checked = start + len(ids), n_checked + 1
    assert n_checked == 4 and leak > 1e-3


def test_sampler_is_deterministic_per_seed_and_epoch():
    lengths = [random.Random(i).randint(50, 400) for i in range(203)]
    s = LengthGroupedSampler(lengths, 8, seed=1, mega_batch_mult=5)
    first = list(s)
    assert first == list(LengthGroupedSampler(lengths, 8, seed=1, mega_batch_mult=5))
    assert sorted(first) == list(range(203))
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(203))
    s.set_epoch(0)
    assert list(s) == first
    assert list(LengthGroupedSampler(lengths, 8, seed=2, mega_batch_mult=5)) != first
    batches = s.batches()
    assert [len(b) for b in batches] == [8] * 25 + [3]  # only the last is partial: DataLoader cuts the same
    assert [i for b in batches for i in b] == first


def test_length_grouping_lowers_padding():
    lengths = [random.Random(i).randint(50, 400) for i in range(400)]
    grouped = LengthGroupedSampler(lengths, 8, seed=0)
    plain = LengthGroupedSampler(lengths, 8, seed=0, group_by_length=False)
    p_grouped = batch_padding_fraction(lengths, grouped.batches())
    p_plain = batch_padding_fraction(lengths, plain.batches())
    assert p_grouped < 0.05 < 0.2 < p_plain
    assert max(lengths[i] for i in grouped.batches()[0]) == max(lengths)  # longest batch first


def test_datamodule_end_to_end(tmp_path, tok):
    rng = random.Random(0)
    rows = []
    for k in range(30):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        steps = " ".join(f"Step {j}: {a} + {j} = {a + j}." for j in range(rng.randint(1, 12)))
        rows.append({"id": f"r{k}", "messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                                  {"role": "assistant", "content": f"{steps} So {a + b}."}]})
    path = write_jsonl(tmp_path / "sft.jsonl", rows)

    dm = SFTDataModule(path, tok, max_seq_len=128, micro_batch_size=4, val_fraction=0.2, seed=0)
    dm.setup("fit")
    st = dm.stats
    assert (st["rows"], st["train_rows"], st["val_rows"]) == (30, 24, 6)
    assert 0 < st["trainable_tokens"] < st["tokens"] and st["trainable_fraction"] == pytest.approx(
        st["trainable_tokens"] / st["tokens"])
    batches = list(dm.train_dataloader())
    sampler_batches = dm.train_sampler().batches()
    assert [b["input_ids"].shape[1] for b in batches] == [
        max(len(dm.train_set[i]["input_ids"]) for i in idx) for idx in sampler_batches]
    assert sum(len(b["input_ids"]) for b in batches) == 24
    assert sum(int(b["attention_mask"].sum()) for b in batches) == st["tokens"]
    assert sum(int((b["labels"] != -100).sum()) for b in batches) == st["trainable_tokens"]
    assert all(b["input_ids"].shape[1] <= 128 for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["input_ids"].numel() for b in batches)
    assert dm.padding_fraction() == pytest.approx(1 - real / total)
    assert sum(len(b["input_ids"]) for b in dm.val_dataloader()) == 6

    packed = SFTDataModule(path, tok, max_seq_len=128, micro_batch_size=4, val_fraction=0.0, packing=True)
    packed.setup()
    assert packed.val_dataloader() == []
    pb = list(packed.train_dataloader())
    assert packed.stats["train_sequences"] < 30
    assert all(b["attention_mask"].dim() == 4 and "position_ids" in b for b in pb)
    assert sum(int((b["labels"] != -100).sum()) for b in pb) == packed.stats["trainable_tokens"]
    assert sum(blk["n_examples"] for blk in packed.train_set) == 30
