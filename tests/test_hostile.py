"""Hostile and broken model output through every path that reads model text.

tests/data/hostile_outputs.jsonl holds one response per line: {"id", "text", "expect", "note"} plus
"reason" when `expect` is null (why `parse_answer` finds no answer). Texts with code hold the word
CANARY; each test replaces it with a fresh letters-only file name (a digit would change what the
extractor reads) and runs in its own empty working directory, so a command that ran -- in this
process, a shell or a child -- would leave that file behind. `test_canary_payloads_are_live` shows
that the payloads do create it when actually executed.
"""
import ast
import json
import random
import string
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import CONF, ROOT, assert_linear
from crescent.eval.tasks import ANSWER_IS, BOXED, EXACT_MATCH, FILTERS, FLEXIBLE, STRICT, filter_entry
from crescent.synth.clean import REASONS, _clean, clean_question
from crescent.synth.prompts import fill
from crescent.synth.sources import answer_prompt
from crescent.synth.voting import (INVALID_REASONS, answers_equal, extract_answer, is_canonical, majority_vote,
                                   parse_answer)
from crescent.utils.io import read_jsonl

CORPUS = ROOT / "tests" / "data" / "hostile_outputs.jsonl"
CATEGORIES = ("empty", "huge", "udigit", "minus", "latex", "markers", "format", "sci", "nonfinite", "inject", "code")
CUSTOM_REGEX = r"(?i)answer:?\s*(\-?[0-9\.\,]+)"


@pytest.fixture
def box(tmp_path, monkeypatch):
    """(rows with the canary planted, canary path) inside an empty working directory."""
    monkeypatch.chdir(tmp_path)
    name = "canary_" + "".join(random.choices(string.ascii_lowercase, k=12))
    rows = [{**r, "text": r["text"].replace("CANARY", name)} for r in read_jsonl(CORPUS)]
    yield rows, tmp_path / name
    assert not (tmp_path / name).exists(), "model text was executed"
    assert list(tmp_path.iterdir()) == [], "something wrote into the working directory"


def test_corpus_covers_the_hostile_cases():
    rows = list(read_jsonl(CORPUS))
    assert len(rows) >= 170  # 118 before issue 21, which added 56
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["id"].split("-")[0] for r in rows} == set(CATEGORIES)
    assert max(len(r["text"]) for r in rows) >= 100_000
    assert sum("CANARY" in r["text"] for r in rows) >= 10
    for r in rows:
        assert set(r) <= {"id", "text", "expect", "note", "reason"} and r["note"]
        assert r["expect"] is None or is_canonical(r["expect"]), r["id"]
        assert (r.get("reason") in INVALID_REASONS) == (r["expect"] is None), r["id"]


def test_canary_payloads_are_live(tmp_path):
    """The payloads work when executed (so the other tests could fail): Python, shell, subprocess."""
    texts = {r["text"] for r in read_jsonl(CORPUS)}
    runs = [[sys.executable, "-c", "__import__('os').system('touch CANARY')"],
            [sys.executable, "-c", "open('CANARY','w').write('pwned')"],
            ["sh", "-c", "`touch CANARY`"], ["sh", "-c", "$(touch CANARY)"]]
    assert {"#### " + runs[0][2], "#### " + runs[1][2], runs[2][2], runs[3][2]} <= texts
    for i, cmd in enumerate(runs):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=30)
        assert (cwd / "CANARY").exists(), cmd


def test_extraction_and_voting(box):
    rows, _ = box
    wrong = {}
    for r in rows:
        parsed = parse_answer(r["text"])
        assert parsed.value is None or is_canonical(parsed.value), r["id"]
        assert (parsed.value is None) != (parsed.reason is None), r["id"]
        if (parsed.value, parsed.reason) != (r["expect"], r.get("reason")):
            wrong[r["id"]] = (parsed, r["expect"], r.get("reason"))
        assert extract_answer(r["text"]) == parsed.value
        # raw text equals itself only when it holds a number; the extracted value equals the expectation
        assert answers_equal(r["text"], r["text"]) is (parsed.value is not None), r["id"]
        assert answers_equal(parsed.value, r["expect"]) is (r["expect"] is not None), r["id"]
        vote = majority_vote([r["text"], parsed.value, None, r["text"]])
        if parsed.value is None:  # text without a number is an invalid vote, never a candidate
            assert (vote.answer, vote.n_invalid, vote.reason) == (None, 4, "no_valid_answer"), r["id"]
        else:
            assert answers_equal(vote.answer, parsed.value) and vote.count == 3, r["id"]
    assert wrong == {}
    vote = majority_vote([r["text"] for r in rows])
    expects = [r["expect"] for r in rows if r["expect"] is not None]
    top = max(expects.count(e) for e in expects)
    assert extract_answer(vote.answer) == next(e for e in expects if expects.count(e) == top)
    assert (vote.n_valid, vote.n_invalid) == (len(expects), len(rows) - len(expects))


@pytest.mark.parametrize("require_question", [True, False])
def test_cleaning(box, require_question):
    rows, _ = box
    for r in rows:
        for raw in (r["text"], f"Sure! Here's a problem:\n\n{r['text']}\n\nHow many apples are left?"):
            out = _clean(raw, 5, 1000, require_question)  # the safety net of clean_question is never needed
            assert out == clean_question(raw, require_question=require_question)
            assert (out.question is None) != (out.reason is None) and out.reason in (None, *REASONS), r["id"]
            if out.question is not None:
                q = out.question
                assert q == q.strip() and "\n" not in q and len(q) <= 1000 and len(q.split()) >= 5
                assert "####" not in q and "\\boxed" not in q and "<|" not in q
                assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in q), r["id"]  # nothing invisible


def test_dedup_with_the_real_embedder(box):
    from crescent.synth.dedup import DedupIndex, dedup_with_rewrites, greedy_dedup
    from crescent.synth.embed import get_embedder

    rows, canary = box
    texts = [r["text"] for r in rows]
    cache: dict[str, np.ndarray] = {}

    def embed(batch: list[str]) -> np.ndarray:  # the real embedder; each distinct text encoded once
        missing = list(dict.fromkeys(t for t in batch if t not in cache))
        if missing:
            cache.update(zip(missing, get_embedder().encode(missing)))
        return np.array([cache[t] for t in batch], dtype=np.float32).reshape(len(batch), 384)

    emb = embed(texts)
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)  # "" too
    kept = greedy_dedup(emb, 0.9)
    assert 0 < len(kept) < len(texts) and (np.diff(kept) > 0).all() and kept[0] == 0

    rewrites = [t for t in texts if canary.name in t or t.startswith("Ignore")]  # the "model" rewrites into these

    def rewrite(pairs, attempt):
        return [rewrites[(i + attempt) % len(rewrites)] for i in range(len(pairs))]

    def clean(text):
        out = clean_question(text, min_words=1, require_question=False)
        return out.question, out.reason

    ids = [r["id"] for r in rows]
    out = dedup_with_rewrites(ids, texts, DedupIndex(384), embed, rewrite, threshold=0.9, max_attempts=2, clean=clean)
    ended = {a.origin_id for a in out.accepted} | {r.id.split(".rw")[0] for r in out.dropped}
    assert ended == set(ids) and out.rewrites >= 1  # every candidate is accepted or dropped with a reason
    assert out.embeddings.shape == (len(out.accepted), 384)
    json.dumps([vars(r) for r in out.rejections])  # rejections are recordable as JSON


def _apply_filter(name: str, texts: list[str]) -> list[str]:
    """One FILTERS entry applied the way lm-eval's Task builds and runs it."""
    from lm_eval.api.instance import Instance
    from lm_eval.filters import build_filter_ensemble

    entry = filter_entry(name, CUSTOM_REGEX)
    ensemble = build_filter_ensemble(entry["name"], [[f["function"], {k: v for k, v in f.items() if k != "function"}]
                                                     for f in entry["filter"]])
    instances = [Instance("generate_until", {}, ("",), i, resps=[t]) for i, t in enumerate(texts)]
    ensemble.apply(instances)
    return [inst.filtered_resps[name] for inst in instances]


def test_eval_filters(box):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    rows, _ = box
    texts = [r["text"] for r in rows]
    patterns = {"strict-match": STRICT, "flexible-extract": FLEXIBLE, "answer-is": ANSWER_IS, "boxed": BOXED,
                "custom-regex": CUSTOM_REGEX}
    assert set(patterns) | {"crescent-extract", "none", "remove_whitespace"} == set(FILTERS)
    for text, got, stripped in zip(texts, _apply_filter("none", texts), _apply_filter("remove_whitespace", texts)):
        assert got == text and stripped.strip() == text.strip()  # as generated / whitespace off (lm-eval nq_open)
    for name, pattern in patterns.items():
        for r, got in zip(rows, _apply_filter(name, texts)):
            assert isinstance(got, str), (name, r["id"])
            assert got == "[invalid]" or got in r["text"], (name, r["id"], got)
    ours = _apply_filter("crescent-extract", texts)
    assert ours == [r["expect"] or "[invalid]" for r in rows]
    options = {k: v for k, v in EXACT_MATCH.items() if k in ("regexes_to_ignore", "ignore_case", "ignore_punctuation")}
    scored = [r for r in rows if r["expect"] is not None]
    em = exact_match_hf_evaluate(predictions=[o for o, r in zip(ours, rows) if r["expect"] is not None],
                                 references=[r["expect"] for r in scored], **options)
    assert em["exact_match"] == 1.0


def test_prompt_filling_takes_values_verbatim(box):
    rows, _ = box
    qcfg = OmegaConf.load(CONF / "questions" / "bait.yaml")
    rewrite_prompt = OmegaConf.load(CONF / "dedup" / "embedding.yaml").rewrite_prompt
    pre, rest = rewrite_prompt.split("{question}")
    mid, post = rest.split("{neighbour}")
    texts = [r["text"] for r in rows] + ["{question}", "{neighbour}", "{exemplars}", "{0}", "{{question}}", "\\1"]
    for a, b in zip(texts, texts[1:] + texts[:1]):
        assert fill(rewrite_prompt, question=a, neighbour=b) == pre + a + mid + b + post
        assert answer_prompt(qcfg, a) == [{"role": "user", "content": qcfg.answer_prompt.replace("{question}", a)}]
        assert fill("{question} \\frac{1}{2} {{ x }} %(x)s {question}", question=a) == \
            f"{a} \\frac{{1}}{{2}} {{{{ x }}}} %(x)s {a}"


def test_chat_template_keeps_hostile_content_literal(box):
    """Model text in a message is data for the Jinja chat template, never template code."""
    from crescent.models.loading import load_tokenizer

    rows, _ = box
    tok = load_tokenizer(OmegaConf.load(CONF / "model" / "smollm2_135m_instruct.yaml"))
    for r in rows:
        if r["id"].startswith(("code", "inject")):
            rendered = tok.apply_chat_template([{"role": "user", "content": r["text"]}], tokenize=False,
                                               add_generation_prompt=True)
            assert r["text"] in rendered, r["id"]


EVALUATORS = {"sympify", "parse_expr", "parse_latex", "latex2sympy", "literal_eval"}
BUILTINS = {"eval", "exec", "compile", "__import__"}


def test_no_code_path_evaluates_text():
    """No module of the package calls eval/exec/sympify/parse_expr (the ones that run their input as Python);
    math_verify (which can reach sympy's parse_expr) is used by voting.py only, on validated numbers."""
    found, math_verify = [], []
    for path in sorted((ROOT / "crescent").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
                if name in EVALUATORS or (name in BUILTINS and isinstance(fn, ast.Name)):  # not model.eval()
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(m.split(".")[0] in ("sympy", "latex2sympy2", "latex2sympy2_extended", "math_verify")
                       for m in mods):
                    math_verify.append(path.relative_to(ROOT).as_posix())
    assert found == []
    # voting.py: on validated numbers only; answers.py and eval/scoring.py: LaTeX extraction only (no eval-based
    # expression parsing), which the next lines hold
    assert set(math_verify) <= {"crescent/synth/voting.py", "crescent/answers.py", "crescent/eval/scoring.py"}
    for name in ("crescent/answers.py", "crescent/eval/scoring.py"):
        src = (ROOT / name).read_text(encoding="utf-8")
        assert "ExprExtractionConfig" not in src
        calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "parse"]
        assert calls and all("extraction_config" in {k.arg for k in c.keywords} for c in calls), name


def test_huge_outputs_are_linear(box):
    rows, _ = box
    huge = [r["text"] for r in rows if len(r["text"]) >= 20_000]
    assert huge

    def read(texts):
        for t in texts:
            parse_answer(t), clean_question(t), _apply_filter("flexible-extract", [t])

    assert_linear(read, [t[: len(t) // 10] for t in huge], huge)  # time relative to the 10x shorter heads
