"""Training throughput on this machine for three SFT data layouts: random batches, length-grouped, packed.

Every layout trains the same model with the same loop: batches as crescent's SFTDataModule cuts them,
forward with labels under bf16 autocast, backward, AdamW step. Layouts take turns step by step
(round-robin), so a busy machine slows them alike; the first --warmup rounds are not timed.

Examples (from the repo root):
  python experiments/perf/bench_train.py                      # SmolLM2-135M-Instruct, 8 timed steps
  python experiments/perf/bench_train.py --model tiny_llama --steps 3 --warmup 1
See experiments/perf/README.md for the results.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from perf_common import REPO, RESULTS, machine_info  # noqa: E402  (offline HF, the repo on sys.path)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from crescent.models.loading import load_model, load_tokenizer, resolve_model_dir  # noqa: E402
from crescent.train.data import SFTDataModule, collate  # noqa: E402

LAYOUTS = {  # name: (packing, group_by_length)
    "random": (False, False),
    "grouped": (False, True),
    "packed": (True, True),
}

# -- data: GSM8K-like question/answer text --------------------------------------------------------
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Randy", "Mark", "Carla"]
ITEMS = ["apples", "clips", "stickers", "cupcakes", "marbles", "books", "pencils", "eggs", "cookies", "shells"]
PLACES = ["the market", "school", "the bakery", "her aunt's farm", "the library", "the fair", "work"]


def _question(rng: random.Random, n_extra: int, short: bool) -> tuple[str, int]:
    a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
    if short:
        return f"What is {a} plus {b}?", a + b
    who, what = rng.choice(NAMES), rng.choice(ITEMS)
    text = (f"{who} had {a} {what} at {rng.choice(PLACES)}. She got {b} more on Monday and then "
            f"{c} times as many on Tuesday as on Monday.")
    for _ in range(n_extra):  # longer word problems carry more facts
        text += f" {rng.choice(NAMES)} gave away {rng.randint(1, 9)} {rng.choice(ITEMS)} at {rng.choice(PLACES)}."
    return text + f" How many {what} does {who} have now?", a + b + b * c


def _step(rng: random.Random, k: int) -> str:
    x, y = rng.randint(2, 99), rng.randint(2, 99)
    op, val = rng.choice([("+", x + y), ("-", x - y), ("*", x * y)])
    return f"Step {k}: next we work out {x} {op} {y} = <<{x}{op}{y}={val}>>{val}, which we carry forward."


def synthetic_rows(tokenizer, n: int, seed: int, lo: int = 50, hi: int = 400) -> list[dict]:
    """n chat rows; each is grown step by step up to a length drawn uniformly from [lo, hi] tokens.

    Rows cannot be shorter than the template + a short question and answer (~55 tokens with SmolLM2's
    default system prompt).
    """
    rng = random.Random(seed)

    def n_tokens(messages):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat(question, steps, answer):
        response = " ".join(steps + [f"The answer is {answer}.\n#### {answer}"])
        return [{"role": "user", "content": question}, {"role": "assistant", "content": response}]

    rows = []
    for i in range(n):
        target = rng.randint(lo, hi)
        question, answer = _question(rng, n_extra=rng.randint(0, max(0, (target - 100) // 60)), short=target < 110)
        steps = []
        while len(steps) < 60:
            step = _step(rng, len(steps) + 1)
            if n_tokens(chat(question, steps + [step], answer)) > target:
                break
            steps.append(step)
        rows.append({"id": f"bench-{i}", "messages": chat(question, steps, answer)})
    return rows


# -- timing ---------------------------------------------------------------------------------------
def batches_forever(dm: SFTDataModule):
    """(collated batch, real tokens, rows), epoch after epoch, as the train DataLoader would cut them."""
    sampler, epoch = dm.train_sampler(), 0
    while True:
        sampler.set_epoch(epoch)
        for idx in sampler.batches():
            items = [dm.train_set[i] for i in idx]
            yield (collate(items, dm.pad_id), sum(len(x["input_ids"]) for x in items),
                   sum(x.get("n_examples", 1) for x in items))
        epoch += 1


class Layout:
    """One data layout's batch stream and timing totals."""

    def __init__(self, name: str, args, tokenizer, data_path: str):
        self.name = name
        self.packing, self.group = LAYOUTS[name]
        self.dm = SFTDataModule(data_path, tokenizer, args.max_seq_len, args.micro_batch, val_fraction=0.0,
                                packing=self.packing, group_by_length=self.group, seed=args.seed)
        self.dm.setup("fit")
        self.stream = batches_forever(self.dm)
        self.step_s: list[float] = []
        self.real = self.total = self.rows = 0
        self.losses: list[float] = []

    def result(self, args) -> dict:
        t = sum(self.step_s)
        return {
            "layout": self.name, "packing": self.packing, "group_by_length": self.group,
            "rows": self.dm.stats["rows"], "train_sequences": self.dm.stats["train_sequences"],
            "micro_batch": args.micro_batch, "steps": len(self.step_s), "warmup": args.warmup,
            "step_s_mean": t / len(self.step_s), "step_s_median": statistics.median(self.step_s),
            "step_s": [round(x, 3) for x in self.step_s],
            "real_tokens_per_s": self.real / t, "total_tokens_per_s": self.total / t,
            "rows_per_step": self.rows / len(self.step_s), "real_tokens_per_step": self.real / len(self.step_s),
            "total_tokens_per_step": self.total / len(self.step_s),
            "padding_fraction_timed": 1 - self.real / self.total,
            "padding_fraction_epoch": self.dm.padding_fraction(),
            "losses": [round(x, 4) for x in self.losses],
        }


def train_step(model, opt, batch, fp32: bool) -> float:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp32):
        loss = model(**inputs, labels=batch["labels"], use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def run(args, layouts: list[Layout], model) -> None:
    """Round-robin: step i of every layout runs back to back, so load from other processes hits all alike."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(args.warmup + args.steps):
        for lay in layouts:
            t0 = time.perf_counter()
            batch, real, rows = next(lay.stream)
            lay.losses.append(train_step(model, opt, batch, args.fp32))
            dt = time.perf_counter() - t0
            if step >= args.warmup:
                lay.step_s.append(dt)
                lay.real += real
                lay.rows += rows
                lay.total += batch["input_ids"].numel()
            print(f"step {step} {lay.name}: {dt:.2f} s, {real} real / {batch['input_ids'].numel()} tokens",
                  flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2_135m_instruct",
                   help="a conf/model/ name (default smollm2_135m_instruct; tiny_llama for a quick run)")
    p.add_argument("--rows", type=int, default=256, help="synthetic SFT rows (default 256)")
    p.add_argument("--min-tokens", type=int, default=50, help="shortest row, rendered tokens (default 50)")
    p.add_argument("--max-tokens", type=int, default=400, help="longest row, rendered tokens (default 400)")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--max-seq-len", type=int, default=512, help="truncation / packed block length (default 512)")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per layout (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {list(LAYOUTS)}")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="data, split and shuffle seed (default 0)")
    p.add_argument("--out", default=str(RESULTS / "bench_train.json"), help="results JSON path")
    args = p.parse_args(argv)
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        p.error(f"unknown layouts {sorted(unknown)}; choose from {list(LAYOUTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    model_cfg = OmegaConf.load(REPO / "conf" / "model" / f"{args.model}.yaml")
    model_dir = resolve_model_dir(model_cfg)
    tokenizer = load_tokenizer(model_cfg, model_dir=model_dir)
    rows = synthetic_rows(tokenizer, args.rows, args.seed, args.min_tokens, args.max_tokens)
    t_start, load_start = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "sft.jsonl")
        Path(data_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs = [Layout(name, args, tokenizer, data_path) for name in layouts]
    torch.manual_seed(args.seed)
    model = load_model(model_cfg, dtype="float32", model_dir=model_dir).train()
    run(args, runs, model)
    results = [lay.result(args) for lay in runs]
    out = {
        "command": "python experiments/perf/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args), "results": results, "wall_s": round(time.time() - t_start, 1),
        "env": machine_info(load_start),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(markdown_table(results))
    print(f"\nwrote {args.out}")
    packed = [r for r in results if r["packing"]]
    if packed and packed[0]["padding_fraction_epoch"] > 0.05:
        print(f"FAIL: packing left {packed[0]['padding_fraction_epoch']:.1%} padding (> 5%)")
        return 1
    return 0


def markdown_table(results: list[dict]) -> str:
    lines = ["| layout | rows/step | real / total tokens per step | step s, mean (median) | real tok/s | total tok/s "
             "| padding (timed) | padding (epoch) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['layout']} | {r['rows_per_step']:.1f} | {r['real_tokens_per_step']:.0f} / "
                     f"{r['total_tokens_per_step']:.0f} | {r['step_s_mean']:.2f} ({r['step_s_median']:.2f}) "
                     f"| {r['real_tokens_per_s']:.0f} | {r['total_tokens_per_s']:.0f} "
                     f"| {r['padding_fraction_timed']:.1%} | {r['padding_fraction_epoch']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
