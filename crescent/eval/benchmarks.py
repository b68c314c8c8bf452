"""Benchmark documents from the files shipped in crescent/eval/data, or from a user's local file.

Each loader returns {"test": [doc, ...], "fewshot": [doc, ...]} with the field names lm-eval's own
task YAMLs use (so the prompts in conf/eval/benchmark/*.yaml read like lm-eval's).
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

DATA_DIR = Path(__file__).resolve().parent / "data"
Docs = dict[str, list[dict]]

_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


@lru_cache(maxsize=1)
def _checksums() -> dict[str, str]:
    sums = DATA_DIR / "SHA256SUMS"
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in sums.read_text().splitlines() if line)}


@lru_cache(maxsize=None)
def data_file(rel: str) -> Path:
    """A shipped data file, after checking it against SHA256SUMS (once per process)."""
    path = DATA_DIR / rel
    restore = f"restore it from the crescent repository (git checkout -- crescent/eval/data/{rel}) or reinstall crescent"
    if not path.is_file():
        raise FileNotFoundError(f"shipped benchmark file {path} is missing: {restore}")
    want = _checksums().get(rel)
    if want is None:
        raise ValueError(f"{path} is not listed in {DATA_DIR / 'SHA256SUMS'}: add its sha256 there if it is meant to ship")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
        raise ValueError(f"shipped benchmark file {path} was altered (sha256 {got}, SHA256SUMS lists {want}): {restore}")
    return path


def _jsonl(path: Path) -> list[dict]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _shipped_jsonl(rel: str) -> list[dict]:
    return _jsonl(data_file(rel))


def gsm8k() -> Docs:
    """GSM8K test; few-shot exemplars from train (as lm-eval's gsm8k: fewshot_split train)."""
    return {"test": _shipped_jsonl("gsm8k/test.jsonl"), "fewshot": _shipped_jsonl("gsm8k/train.jsonl")}


def asdiv() -> Docs:
    """ASDiv problems whose answer is one number ('9 (apples)' -> '#### 9'); body and question joined."""
    docs = []
    for p in ET.parse(data_file("asdiv/ASDiv.xml")).getroot().iter("Problem"):
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
    for row in _shipped_jsonl("gsm_plus/gsmplus_testmini.jsonl"):
        if row["perturbation_type"] == "critical thinking" and not include_critical_thinking:
            continue
        docs.append({"question": row["question"], "answer": f"#### {row['answer']}", "solution": row["solution"],
                     "perturbation_type": row["perturbation_type"], "seed_question": row["seed_question"]})
    return {"test": docs, "fewshot": gsm8k()["fewshot"]}


def _mmlu_split(split: str) -> dict[str, list[dict]]:
    by_subject = {}
    for path in sorted((DATA_DIR / "mmlu" / split).glob(f"*_{split}.csv")):
        subject = path.name[: -len(f"_{split}.csv")]
        with open(data_file(str(path.relative_to(DATA_DIR))), encoding="utf-8", newline="") as f:
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
            for r in _shipped_jsonl(f"arc/{name}/{name}-{split}.jsonl"):
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
    rows = json.loads(data_file("truthfulqa/data/v0/mc_task.json").read_text(encoding="utf-8"))

    def targets(d: Mapping[str, int]) -> dict:
        return {"choices": list(d), "labels": [int(v) for v in d.values()]}

    docs = [{"question": r["question"], "mc1_targets": targets(r["mc1_targets"]),
             "mc2_targets": targets(r["mc2_targets"])} for r in rows]
    return {"test": docs, "fewshot": []}


def hellaswag() -> Docs:
    """HellaSwag validation from the derived text form (6 lines per item: context, gold, 4 endings)."""
    with bz2.open(data_file("hellaswag/hellaswag_val_full.txt.bz2"), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    docs = []
    for i in range(0, len(lines) - 5, 6):
        ctx, gold, *endings = lines[i : i + 6]
        docs.append({"query": ctx.strip(), "choices": [e.strip() for e in endings], "label": int(gold)})
    return {"test": docs, "fewshot": []}


def winogrande() -> Docs:
    """WinoGrande 1.1 dev (= HF validation, what lm-eval scores)."""
    return {"test": _shipped_jsonl("winogrande/winogrande_1.1/dev.jsonl"), "fewshot": []}


def piqa() -> Docs:
    """PIQA validation with its label file."""
    docs = _shipped_jsonl("piqa/valid.jsonl")
    labels = data_file("piqa/valid-labels.lst").read_text().split()
    if len(labels) != len(docs):
        raise ValueError(f"piqa: {len(docs)} questions but {len(labels)} labels")
    return {"test": [{**d, "label": int(y)} for d, y in zip(docs, labels)], "fewshot": []}


# ---- LMSI and Mind-the-Gap benchmarks -------------------------------------------------------------

def _minerva_doc(problem: str, solution: str, **extra) -> dict:
    """A MATH document as lm-eval's minerva_math process_docs builds it: the gold answer is the
    normalised content of the solution's last \\boxed{} (for MATH-500 too, as lm-eval does)."""
    from crescent.eval import minerva

    boxed = minerva.last_boxed_only_string(solution)
    answer = minerva.normalize_final_answer(minerva.remove_boxed(boxed)) if boxed else ""
    return {"problem": problem, "solution": solution, "answer": answer, **extra}


def math(subset: str = "full") -> Docs:
    """MATH test (Hendrycks et al.): subset=full is all 5,000 problems, subset=math500 the MATH-500
    subset (OpenAI's PRM800K split). Few-shot: the 4 Minerva exemplars (set in the benchmark config)."""
    if subset == "full":
        rows = _shipped_jsonl("math/math/test.jsonl.bz2")
        docs = [_minerva_doc(r["problem"], r["solution"], level=r["level"], type=r["type"], idx=r["idx"]) for r in rows]
    elif subset == "math500":
        rows = _shipped_jsonl("math/math_oai/test.jsonl")
        docs = [_minerva_doc(r["problem"], r["solution"], level=f"Level {r['level']}", type=r["subject"],
                             unique_id=r["unique_id"]) for r in rows]
    else:
        raise ValueError(f"math loader_options.subset={subset!r}; allowed: 'full' (5,000) or 'math500'")
    return {"test": docs, "fewshot": []}


def svamp() -> Docs:
    """SVAMP (1,000): question = Body + ' ' + Question; answer = the number as canonical text ('51')."""
    from crescent.answers import canonical_number

    rows = json.loads(data_file("svamp/SVAMP.json").read_text(encoding="utf-8"))
    docs = [{"id": r["ID"], "question": f"{r['Body'].strip()} {r['Question'].strip()}",
             "answer": canonical_number(r["Answer"]), "equation": r["Equation"].strip(), "type": r["Type"]}
            for r in rows]
    return {"test": docs, "fewshot": gsm8k()["fewshot"]}


def _aqua_rows(split: str) -> list[dict]:
    docs = []
    for r in _shipped_jsonl(f"aqua/{split}.json"):
        options = [re.sub(r"^\s*([A-E])\s*\)\s*", r"(\1) ", o).replace("(A)", "(a)").replace("(B)", "(b)")
                   .replace("(C)", "(c)").replace("(D)", "(d)").replace("(E)", "(e)") for o in r["options"]]
        rationale = " ".join(r["rationale"].split())
        docs.append({"question": r["question"].strip(), "options": " ".join(options), "correct": r["correct"],
                     "answer": r["correct"].lower(), "rationale": rationale})
    return docs


def aqua() -> Docs:
    """AQuA-RAT test (254, five options, letter answers); few-shot exemplars (with rationales) from dev."""
    return {"test": _aqua_rows("test"), "fewshot": _aqua_rows("dev")}


def strategyqa(source: str = "bigbench") -> Docs:
    """StrategyQA yes/no questions. source=bigbench: the BIG-bench task (2,290, what chain-of-thought
    papers report; exemplars drawn from the other questions); source=dev: the authors' dev split (229)."""
    if source == "bigbench":
        task = json.loads(data_file("strategyqa/task.json").read_text(encoding="utf-8"))
        docs = []
        for ex in task["examples"]:
            gold = "yes" if ex["target_scores"]["Yes"] else "no"
            explanation = re.sub(r"^(Yes|No)\.\s*", "", ex["target"].strip())
            docs.append({"question": ex["input"].strip(), "answer": gold, "explanation": " ".join(explanation.split())})
    elif source == "dev":
        rows = json.loads(data_file("strategyqa/dev.json").read_text(encoding="utf-8"))
        docs = [{"question": r["question"], "answer": "yes" if r["answer"] else "no", "explanation": " ".join(r["facts"]),
                 "qid": r["qid"]} for r in rows]
    else:
        raise ValueError(f"strategyqa loader_options.source={source!r}; allowed: 'bigbench' (2,290) or 'dev' (229)")
    return {"test": docs, "fewshot": []}


NLI_LABELS = ("entailment", "neutral", "contradiction")  # label ids of HF anli / glue mnli


def anli(round: int = 1) -> Docs:
    """ANLI v1.0 round 1, 2 or 3: test (1,000 / 1,000 / 1,200) with HF anli's fields (premise, hypothesis,
    label 0 entailment / 1 neutral / 2 contradiction, reason); few-shot exemplars from the round's dev."""
    if round not in (1, 2, 3):
        raise ValueError(f"anli loader_options.round={round!r}; allowed: 1, 2 or 3")

    def rows(split: str) -> list[dict]:
        return [{"uid": r["uid"], "premise": r["context"], "hypothesis": r["hypothesis"],
                 "label": "enc".index(r["label"]), "reason": " ".join((r.get("reason") or "").split())}
                for r in _shipped_jsonl(f"anli/anli_v1.0/R{round}/{split}.jsonl")]

    return {"test": rows("test"), "fewshot": rows("dev")}


def rte() -> Docs:
    """RTE dev (277; SuperGLUE validation = GLUE dev): premise/hypothesis (SuperGLUE's names) and
    sentence1/sentence2 (GLUE's), label 0 entailment / 1 not_entailment."""
    docs = [{"idx": r["idx"], "premise": r["premise"], "hypothesis": r["hypothesis"], "sentence1": r["premise"],
             "sentence2": r["hypothesis"], "label": ("entailment", "not_entailment").index(r["label"])}
            for r in _shipped_jsonl("glue/RTE/val.jsonl")]
    return {"test": docs, "fewshot": []}


USER_DATA = {  # benchmarks whose files could not be shipped: where a user puts the canonical file
    "mnli_matched": "glue/MNLI/dev_matched.tsv",
    "mnli_mismatched": "glue/MNLI/dev_mismatched.tsv",
    "drop": "drop/drop_dataset_dev.json",
}
USER_DATA_SOURCE = {
    "mnli": "the GLUE MNLI archive (https://dl.fbaipublicfiles.com/glue/data/MNLI.zip: MNLI/dev_matched.tsv, "
            "MNLI/dev_mismatched.tsv)",
    "drop": "the DROP dataset (https://s3-us-west-2.amazonaws.com/allennlp/datasets/drop/drop_dataset.zip: "
            "drop_dataset/drop_dataset_dev.json)",
}


def _user_file(name: str, path: str | None, source: str) -> Path:
    p = Path(path).expanduser() if path else DATA_DIR / USER_DATA[name]
    if not p.is_file():
        raise FileNotFoundError(
            f"benchmark {name}: {p} does not exist. crescent cannot ship this file; put the canonical one there "
            f"(from {USER_DATA_SOURCE[source]}) or point loader_options.path at your copy")
    return p


def mnli(split: str = "matched", path: str | None = None) -> Docs:
    """MultiNLI dev (GLUE's dev_matched.tsv / dev_mismatched.tsv, 9,815 / 9,832), as HF glue/mnli:
    premise = sentence1, hypothesis = sentence2, label 0 entailment / 1 neutral / 2 contradiction (from
    gold_label). Not shipped: the file is read from crescent/eval/data/glue/MNLI/ or loader_options.path."""
    if split not in ("matched", "mismatched"):
        raise ValueError(f"mnli loader_options.split={split!r}; allowed: 'matched' or 'mismatched'")
    p = _user_file(f"mnli_{split}", path, "mnli")
    with open(p, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = {"sentence1", "sentence2", "gold_label"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{p}: expected GLUE's MNLI columns; {sorted(missing)} missing from its header")
    docs = [{"idx": i, "premise": r["sentence1"], "hypothesis": r["sentence2"],
             "label": NLI_LABELS.index(r["gold_label"]), "genre": r.get("genre")}
            for i, r in enumerate(rows) if r["gold_label"] in NLI_LABELS]
    return {"test": docs, "fewshot": []}


def drop(path: str | None = None) -> Docs:
    """DROP dev (drop_dataset_dev.json, 9,536 questions) in the form of HF EleutherAI/drop, which lm-eval's
    drop task reads (its process_docs then builds the gold answers). Not shipped: the file is read from
    crescent/eval/data/drop/ or loader_options.path."""
    p = _user_file("drop", path, "drop")
    data = json.loads(p.read_text(encoding="utf-8"))
    docs = []

    def answer(a: dict) -> dict:
        date = a.get("date") or {}
        return {"number": str(a.get("number") or ""), "spans": list(a.get("spans") or []),
                "date": {k: str(date.get(k) or "") for k in ("day", "month", "year")}}

    for section_id, section in data.items():
        for qa in section["qa_pairs"]:
            validated = [answer(v) for v in qa.get("validated_answers") or []]
            docs.append({"section_id": section_id, "passage": section["passage"], "question": qa["question"],
                         "query_id": qa["query_id"], "answer": answer(qa["answer"]),
                         "validated_answers": {k: [v[k] for v in validated] for k in ("number", "date", "spans")}})
    return {"test": docs, "fewshot": []}


def openbookqa() -> Docs:
    """OpenBookQA test (500), with HF allenai/openbookqa's fields (question_stem, choices, answerKey)."""
    docs = [{"id": r["id"], "question_stem": r["question"]["stem"], "answerKey": r["answerKey"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]}}
            for r in _shipped_jsonl("openbookqa/test.jsonl")]
    return {"test": docs, "fewshot": []}


def nq_open() -> Docs:
    """NQ-open dev (3,610): question (lower case, no '?') and answer (every acceptable string)."""
    return {"test": [{"question": r["question"], "answer": list(r["answer"])} for r in _shipped_jsonl("nq_open/NQ-open.dev.jsonl")],
            "fewshot": []}


def sudoku(seed: int = 0) -> Docs:
    """4x4 Sudoku: one puzzle with a unique solution per solved grid (288), generated with `seed`."""
    from crescent.eval.sudoku import puzzles

    return {"test": [dict(d) for d in puzzles(int(seed))], "fewshot": []}


SHIPPED: dict[str, Callable[..., Docs]] = {
    f.__name__: f
    for f in (gsm8k, asdiv, gsm_plus_mini, mmlu, arc_challenge, arc_easy, truthfulqa_mc, hellaswag, winogrande, piqa,
              math, svamp, aqua, strategyqa, anli, rte, mnli, drop, openbookqa, nq_open, sudoku)
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


def load_docs(spec: Mapping[str, Any], base_dir: str | Path = ".", data_roots: Any = None) -> Docs:
    """The documents of one benchmark config: a shipped `loader`, or loader=file with `path`
    (relative paths resolve against base_dir, the directory crescent was launched from). With data_roots (a list:
    what the eval and gap stages pass, eval.data_roots) every file path must resolve under base_dir or one of them
    (crescent.utils.paths.check), else PathNotAllowedError naming the key."""
    from crescent.utils import paths

    def resolve(p: str, key: str) -> Path:
        return paths.resolve(p, base_dir) if data_roots is None else paths.check(p, key, base_dir, data_roots)

    loader = spec.get("loader")
    if loader in SHIPPED:
        options = dict(spec.get("loader_options") or {})
        if options.get("path"):
            options["path"] = str(resolve(options["path"], "loader_options.path"))
        return _shipped(loader, json.dumps(options, sort_keys=True))
    if loader != "file":
        raise ValueError(f"benchmark loader={loader!r}; allowed: {sorted(SHIPPED)} or 'file'")

    if not spec.get("path"):
        raise ValueError("a benchmark with loader=file needs `path` (a .jsonl, .json or .csv file)")
    test = read_file(resolve(spec["path"], "path"))
    fewshot = read_file(resolve(spec["fewshot_path"], "fewshot_path")) if spec.get("fewshot_path") else []
    field = spec.get("answer_field")
    if field:  # gold numbers compare by value: 51.0 / "51.0" -> "51" (lists: each element)
        test, fewshot = ([_canonical_gold(r, field) for r in rows] for rows in (test, fewshot))
        if any(isinstance(r.get(field), list) for r in test):  # some rows list several golds: all rows do
            test = [{**r, field: r[field] if isinstance(r.get(field), list) else [r.get(field)]} for r in test]
    return {"test": test, "fewshot": fewshot}


def _canonical_gold(row: dict, field: str) -> dict:
    from crescent.answers import canonical_number

    if field not in row:
        return row
    value = row[field]
    value = [canonical_number(v) for v in value] if isinstance(value, list) else canonical_number(value)
    return {**row, field: value}


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
