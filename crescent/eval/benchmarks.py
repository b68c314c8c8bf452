"""Benchmark documents from the files shipped in crescent/eval/data, or from a user's local file.

Each loader returns {"test": [doc, ...], "fewshot": [doc, ...]} with the field names lm-eval's own
task YAMLs use (so the prompts in conf/eval/benchmark/*.yaml read like lm-eval's).
"""
from __future__ import annotations

import bz2
import csv
import json
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

DATA_DIR = Path(__file__).resolve().parent / "data"
Docs = dict[str, list[dict]]

_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k() -> Docs:
    """GSM8K test; few-shot exemplars from train (as lm-eval's gsm8k: fewshot_split train)."""
    return {"test": _jsonl(DATA_DIR / "gsm8k/test.jsonl"), "fewshot": _jsonl(DATA_DIR / "gsm8k/train.jsonl")}


def asdiv() -> Docs:
    """ASDiv problems whose answer is one number ('9 (apples)' -> '#### 9'); body and question joined."""
    docs = []
    for p in ET.parse(DATA_DIR / "asdiv/ASDiv.xml").getroot().iter("Problem"):
        answer = re.sub(r"\s*\(.*\)\s*$", "", p.findtext("Answer", "")).strip()
        if not _NUMBER.fullmatch(answer):
            continue  # names, times, yes/no, ratios: not scored by number extraction
        body, question = p.findtext("Body", "").strip(), p.findtext("Question", "").strip()
        docs.append({"id": p.get("ID"), "question": f"{body} {question}".strip(), "answer": f"#### {answer}",
                     "solution_type": p.findtext("Solution-Type", "").strip(), "grade": p.get("Grade")})
    return {"test": docs, "fewshot": gsm8k()["fewshot"]}


def gsm_plus_mini(include_critical_thinking: bool = False) -> Docs:
    """GSM-Plus testmini (300 GSM8K seeds x 8 perturbations); the 'critical thinking' rows (answer None)
    are left out unless asked for."""
    docs = []
    for row in _jsonl(DATA_DIR / "gsm_plus/gsmplus_testmini.jsonl"):
        if row["perturbation_type"] == "critical thinking" and not include_critical_thinking:
            continue
        docs.append({"question": row["question"], "answer": f"#### {row['answer']}", "solution": row["solution"],
                     "perturbation_type": row["perturbation_type"], "seed_question": row["seed_question"]})
    return {"test": docs, "fewshot": gsm8k()["fewshot"]}


def _mmlu_split(split: str) -> dict[str, list[dict]]:
    by_subject = {}
    for path in sorted((DATA_DIR / "mmlu" / split).glob(f"*_{split}.csv")):
        subject = path.name[: -len(f"_{split}.csv")]
        with open(path, encoding="utf-8", newline="") as f:
            by_subject[subject] = [
                {"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5].strip()), "subject": subject,
                 "subject_name": subject.replace("_", " ")}
                for r in csv.reader(f)
            ]
    return by_subject


def mmlu() -> Docs:
    """MMLU test (57 subjects, interleaved round-robin so that eval.limit samples every subject);
    few-shot exemplars from dev (5 per subject, see same_subject_sampler)."""
    test = _mmlu_split("test")
    interleaved = [rows[i] for i in range(max(map(len, test.values()))) for rows in test.values() if i < len(rows)]
    return {"test": interleaved, "fewshot": [d for rows in _mmlu_split("dev").values() for d in rows]}


def _arc(name: str) -> Callable[[], Docs]:
    def load() -> Docs:
        def rows(split: str) -> list[dict]:
            out = []
            for r in _jsonl(DATA_DIR / f"arc/{name}/{name}-{split}.jsonl"):
                labels = [c["label"] for c in r["question"]["choices"]]
                key = r["answerKey"]
                if key.isdigit():  # some rows use 1-4: lm-eval (HF ai2_arc) maps them to A-D
                    labels, key = ["ABCDE"[int(x) - 1] if x.isdigit() else x for x in labels], "ABCDE"[int(key) - 1]
                out.append({"id": r["id"], "question": r["question"]["stem"], "answerKey": key,
                            "choices": {"text": [c["text"] for c in r["question"]["choices"]], "label": labels}})
            return out

        return {"test": rows("Test"), "fewshot": rows("Train")}

    load.__name__ = name.lower().replace("-", "_")
    load.__doc__ = f"{name} test; few-shot exemplars from train (as lm-eval's arc tasks)."
    return load


arc_challenge = _arc("ARC-Challenge")
arc_easy = _arc("ARC-Easy")


def truthfulqa_mc() -> Docs:
    """TruthfulQA multiple choice (v0 = what lm-eval's HF copy holds); choices in file order, mc1's
    correct answer first."""
    rows = json.loads((DATA_DIR / "truthfulqa/data/v0/mc_task.json").read_text(encoding="utf-8"))

    def targets(d: Mapping[str, int]) -> dict:
        return {"choices": list(d), "labels": [int(v) for v in d.values()]}

    docs = [{"question": r["question"], "mc1_targets": targets(r["mc1_targets"]),
             "mc2_targets": targets(r["mc2_targets"])} for r in rows]
    return {"test": docs, "fewshot": []}


def hellaswag() -> Docs:
    """HellaSwag validation from the derived text form (6 lines per item: context, gold, 4 endings)."""
    with bz2.open(DATA_DIR / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    docs = []
    for i in range(0, len(lines) - 5, 6):
        ctx, gold, *endings = lines[i : i + 6]
        docs.append({"query": ctx.strip(), "choices": [e.strip() for e in endings], "label": int(gold)})
    return {"test": docs, "fewshot": []}


def winogrande() -> Docs:
    """WinoGrande 1.1 dev (= HF validation, what lm-eval scores)."""
    return {"test": _jsonl(DATA_DIR / "winogrande/winogrande_1.1/dev.jsonl"), "fewshot": []}


def piqa() -> Docs:
    """PIQA validation with its label file."""
    docs = _jsonl(DATA_DIR / "piqa/valid.jsonl")
    labels = (DATA_DIR / "piqa/valid-labels.lst").read_text().split()
    if len(labels) != len(docs):
        raise ValueError(f"piqa: {len(docs)} questions but {len(labels)} labels")
    return {"test": [{**d, "label": int(y)} for d, y in zip(docs, labels)], "fewshot": []}


SHIPPED: dict[str, Callable[..., Docs]] = {
    f.__name__: f
    for f in (gsm8k, asdiv, gsm_plus_mini, mmlu, arc_challenge, arc_easy, truthfulqa_mc, hellaswag, winogrande, piqa)
}


def read_file(path: str | Path) -> list[dict]:
    """Rows of a user's .jsonl, .json (a list, or {'data': [...]}) or .csv (with a header) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl(path)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data.get("data") if isinstance(data, dict) else data
    elif suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"benchmark file {str(path)!r}: expected .jsonl, .json or .csv")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"benchmark file {str(path)!r}: expected a non-empty list of objects (one per question)")
    return rows


@lru_cache(maxsize=32)
def _shipped(loader: str, options: str) -> Docs:
    return SHIPPED[loader](**json.loads(options))


def load_docs(spec: Mapping[str, Any], base_dir: str | Path = ".") -> Docs:
    """The documents of one benchmark config: a shipped `loader`, or loader=file with `path`
    (relative paths resolve against base_dir, the directory crescent was launched from)."""
    loader = spec.get("loader")
    if loader in SHIPPED:
        return _shipped(loader, json.dumps(dict(spec.get("loader_options") or {}), sort_keys=True))
    if loader != "file":
        raise ValueError(f"benchmark loader={loader!r}; allowed: {sorted(SHIPPED)} or 'file'")

    def resolve(p: str) -> Path:
        return Path(p).expanduser() if Path(p).expanduser().is_absolute() else Path(base_dir) / p

    if not spec.get("path"):
        raise ValueError("a benchmark with loader=file needs `path` (a .jsonl, .json or .csv file)")
    test = read_file(resolve(spec["path"]))
    fewshot = read_file(resolve(spec["fewshot_path"])) if spec.get("fewshot_path") else []
    return {"test": test, "fewshot": fewshot}


@lru_cache(maxsize=1)
def same_subject_sampler():
    """An lm-eval ContextSampler: the first n few-shot docs of the evaluated doc's subject (MMLU's
    canonical 5-shot: the subject's dev questions, in order)."""
    from lm_eval.api.samplers import ContextSampler

    class SameSubjectFirstNSampler(ContextSampler):
        def sample(self, n, eval_doc=None, df=None, **kwargs):
            pool = [d for d in self.fewshot_docs() if eval_doc is None or d.get("subject") == eval_doc.get("subject")]
            if n > len(pool):
                raise ValueError(f"{n}-shot requested but subject {eval_doc.get('subject')!r} has {len(pool)} exemplars")
            return pool[:n]

    return SameSubjectFirstNSampler
