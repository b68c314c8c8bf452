"""Near-duplicate filtering of generated questions, with rejection sampling (rewrite + re-check).

One knob, `threshold`: an item is a duplicate when its cosine similarity to any already-accepted
item is >= threshold (unit vectors, so cosine = dot product). Greedy accept-in-order: walk the
candidates in order and keep one iff it is below the threshold against every item kept so far
(history and this batch). The first item of each near-duplicate group wins.

Similarities are float32 dot products compared against the threshold as a float64 number, so
`sim == threshold` counts as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from crescent.config.choices import DEDUP_INDEX

REASON_DUPLICATE = "duplicate"  # still a duplicate after all rewrites: dropped
REASON_REWRITTEN = "duplicate_rewritten"  # a duplicate that was sent back to be rewritten

_CHUNK = 16384  # rows of the reference matrix per matmul (bounds memory at block x _CHUNK)


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {x.shape}")
    return x


def _max_sim(queries: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Row-wise max of queries @ ref.T (-inf where ref is empty), chunked over ref rows."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    if len(queries):
        for s in range(0, len(ref), _CHUNK):
            np.maximum(best, (queries @ ref[s : s + _CHUNK].T).max(axis=1), out=best)
    return best


def _nearest(queries: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max similarity, argmax row) of queries against ref; first row wins ties; (-inf, -1) if empty."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    arg = np.full(len(queries), -1, dtype=np.int64)
    rows = np.arange(len(queries))
    for s in range(0, len(ref), _CHUNK):
        sims = queries @ ref[s : s + _CHUNK].T
        a = sims.argmax(axis=1)
        v = sims[rows, a]
        better = v > best
        best[better] = v[better]
        arg[better] = a[better] + s
    return best, arg


def _greedy_within(vecs: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask of greedy accept-in-order inside one block (nothing outside the block considered)."""
    thr = np.float64(threshold)
    # conflict[i, j] (i < j): j is within threshold of the earlier i
    conflict = np.triu((vecs @ vecs.T) >= thr, k=1)
    contested = conflict.any(axis=0)
    keep = ~contested
    # only candidates with an earlier in-block conflict need a decision, in order: j survives
    # iff none of its earlier conflicting items was kept (those decisions are already final)
    for j in np.flatnonzero(contested):
        keep[j] = not (conflict[:j, j] & keep[:j]).any()
    return keep


def greedy_dedup(
    emb: np.ndarray, threshold: float, history: np.ndarray | None = None, block: int = 1024
) -> np.ndarray:
    """Indices (int64, ascending) of the rows of `emb` kept by greedy accept-in-order.

    A row is kept iff its similarity to every history row and to every earlier kept row is
    < threshold. Each block of candidates is checked against history and earlier kept rows with
    one matmul, then conflicts inside the block are resolved in order. Exact (no approximation).
    """
    emb = _as_f32(emb)
    if block < 1:
        raise ValueError("block must be >= 1")
    thr = np.float64(threshold)
    hist = _as_f32(history) if history is not None and len(history) else None
    kept_vecs = np.empty_like(emb)
    n_kept = 0
    kept: list[np.ndarray] = []
    for start in range(0, len(emb), block):
        cand_vecs = emb[start : start + block]
        alive = np.ones(len(cand_vecs), dtype=bool)
        if hist is not None:
            alive = _max_sim(cand_vecs, hist) < thr
        if n_kept and alive.any():
            alive[alive] = _max_sim(cand_vecs[alive], kept_vecs[:n_kept]) < thr
        cand = np.flatnonzero(alive)
        keep = cand[_greedy_within(cand_vecs[cand], threshold)]
        kept_vecs[n_kept : n_kept + len(keep)] = cand_vecs[keep]
        n_kept += len(keep)
        kept.append(keep + start)
    return np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, dtype=np.int64)


class DedupIndex:
    """The accepted set: vectors plus their ids and texts, with nearest-neighbour lookup.

    Backends (all use inner product = cosine on unit vectors):
      exact  numpy matmul over a growing buffer. Exact; O(n) per query, fastest up to ~1e5 items.
      faiss  faiss.IndexFlatIP. Exact, same cost class as `exact` (faiss's own BLAS kernels).
      hnsw   faiss.IndexHNSWFlat(dim, 32, inner product). Approximate, O(log n) per query, for very
             large histories. The top `hnsw_k` candidates are re-scored exactly, so a reported
             similarity is never wrong; but the graph search can miss the true nearest item, so a
             real duplicate may occasionally be accepted (never the reverse).
      auto   exact up to `exact_max` items, then moves everything into hnsw.
    """

    BACKENDS = DEDUP_INDEX

    def __init__(
        self,
        dim: int,
        backend: str = "exact",
        exact_max: int = 100_000,
        hnsw_m: int = 32,
        ef_search: int = 128,
        hnsw_k: int = 8,
    ):
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {self.BACKENDS}, got {backend!r}")
        self.dim = int(dim)
        self.backend = backend
        self.exact_max = int(exact_max)
        self.hnsw_m, self.ef_search, self.hnsw_k = hnsw_m, ef_search, hnsw_k
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._buf = np.empty((0, self.dim), dtype=np.float32)  # exact storage (grows by doubling)
        self._faiss = None
        self._mode = "exact" if backend in ("exact", "auto") else backend
        if self._mode != "exact":
            self._faiss = self._new_faiss(self._mode)

    # -- storage ---------------------------------------------------------------------------
    def _new_faiss(self, mode: str):
        import faiss

        if mode == "faiss":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = self.ef_search
        return index

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def texts(self) -> list[str]:
        return self._texts

    @property
    def mode(self) -> str:
        """The storage in use now ("exact", "faiss" or "hnsw"); differs from backend only for auto."""
        return self._mode

    def vectors(self) -> np.ndarray:
        """A copy of the accepted vectors, in insertion order."""
        if self._mode == "exact":
            return self._buf[: len(self)].copy()
        return self._faiss.reconstruct_n(0, len(self)) if len(self) else self._buf[:0].copy()

    def add(self, vecs: np.ndarray, ids: list[str], texts: list[str]) -> None:
        vecs = _as_f32(vecs)
        if not (len(vecs) == len(ids) == len(texts)):
            raise ValueError(f"lengths differ: {len(vecs)} vectors, {len(ids)} ids, {len(texts)} texts")
        if vecs.shape[1] != self.dim:
            raise ValueError(f"expected dim {self.dim}, got {vecs.shape[1]}")
        if not len(vecs):
            return
        n = len(self)
        if self._mode == "exact":
            if n + len(vecs) > len(self._buf):
                grown = np.empty((max(2 * len(self._buf), n + len(vecs), 1024), self.dim), np.float32)
                grown[:n] = self._buf[:n]
                self._buf = grown
            self._buf[n : n + len(vecs)] = vecs
        else:
            self._faiss.add(vecs)
        self._ids.extend(ids)
        self._texts.extend(texts)
        if self.backend == "auto" and self._mode == "exact" and len(self) > self.exact_max:
            self._faiss = self._new_faiss("hnsw")
            self._faiss.add(self._buf[: len(self)])
            self._buf = np.empty((0, self.dim), dtype=np.float32)
            self._mode = "hnsw"

    # -- lookup ----------------------------------------------------------------------------
    def nearest(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Most similar accepted item per query: (similarity float32 (m,), index int64 (m,)).

        The index is a position in `ids` / `texts`; (-inf, -1) while the index is empty.
        """
        vecs = _as_f32(vecs)
        m = len(vecs)
        if len(self) == 0 or m == 0:
            return np.full(m, -np.inf, dtype=np.float32), np.full(m, -1, dtype=np.int64)
        if self._mode == "exact":
            return _nearest(vecs, self._buf[: len(self)])
        if self._mode == "faiss":
            sims, idx = self._faiss.search(vecs, 1)
            return sims[:, 0].astype(np.float32), idx[:, 0].astype(np.int64)
        return self._hnsw_nearest(vecs)

    def _hnsw_nearest(self, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.hnsw_k, len(self))
        _, cand = self._faiss.search(vecs, k)  # approximate top-k
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        cand_vecs = self._faiss.reconstruct_batch(safe.ravel()).reshape(len(vecs), k, self.dim)
        sims = np.einsum("mkd,md->mk", cand_vecs, vecs)  # exact re-score of the candidates
        sims[~valid] = -np.inf
        best = sims.argmax(axis=1)
        rows = np.arange(len(vecs))
        return sims[rows, best].astype(np.float32), cand[rows, best].astype(np.int64)


@dataclass
class Rejection:
    """One duplicate event or failed rewrite.

    reason: REASON_DUPLICATE (dropped after all rewrites), REASON_REWRITTEN (a duplicate sent back
    to be rewritten) or the clean callable's reason for a rewrite that failed cleaning (then the
    neighbour is the one the rewrite was asked to move away from, and similarity is NaN).
    attempt: 0 for an original candidate, k for its k-th rewrite.
    """

    id: str
    text: str
    reason: str
    neighbour_id: str | None
    neighbour_text: str | None
    similarity: float
    attempt: int


@dataclass
class Accepted:
    id: str
    text: str
    origin_id: str  # the raw candidate this came from (== id for attempt 0)
    attempt: int  # 0 = original, k = accepted after k rewrites


@dataclass
class DedupOutcome:
    accepted: list[Accepted] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rewrites: int = 0  # rewrite calls made (one call per attempt round)
    embeddings: np.ndarray | None = None  # rows of the accepted items, in order

    @property
    def dropped(self) -> list[Rejection]:
        """Rejections that ended a candidate (excludes duplicates that were sent for rewrite)."""
        return [r for r in self.rejections if r.reason != REASON_REWRITTEN]


def rewrite_id(origin_id: str, attempt: int) -> str:
    return f"{origin_id}.rw{attempt}"


@dataclass
class _Dup:
    pos: int
    neighbour_id: str
    neighbour_text: str
    similarity: float


def _screen(
    vecs: np.ndarray, ids: list[str], texts: list[str], index: DedupIndex, threshold: float,
    block: int = 1024,
) -> tuple[np.ndarray, list[_Dup]]:
    """Greedy accept-in-order of `vecs` against `index`; kept rows are added to the index.

    Returns the kept positions and, per duplicate, the most similar item accepted at the time
    it was checked (history, or an earlier kept row of this batch).
    """
    thr = np.float64(threshold)
    kept_all: list[np.ndarray] = []
    dups: list[_Dup] = []
    for start in range(0, len(vecs), block):
        blk = vecs[start : start + block]
        hist_sim, hist_idx = index.nearest(blk)
        cand = np.flatnonzero(hist_sim < thr)
        keep = cand[_greedy_within(blk[cand], threshold)]
        dup_pos = np.setdiff1d(np.arange(len(blk)), keep)
        if len(dup_pos):
            # best earlier kept row of this block, per duplicate
            sims = blk[dup_pos] @ blk[keep].T
            sims[keep[None, :] > dup_pos[:, None]] = -np.inf
            for r, p in enumerate(dup_pos):
                b = int(sims[r].argmax()) if len(keep) else -1
                if b >= 0 and sims[r, b] > hist_sim[p]:
                    q = start + int(keep[b])
                    dups.append(_Dup(start + int(p), ids[q], texts[q], float(sims[r, b])))
                else:
                    h = int(hist_idx[p])
                    dups.append(_Dup(start + int(p), index.ids[h], index.texts[h], float(hist_sim[p])))
        pos = keep + start
        index.add(blk[keep], [ids[i] for i in pos], [texts[i] for i in pos])
        kept_all.append(pos)
    kept = np.concatenate(kept_all) if kept_all else np.zeros(0, dtype=np.int64)
    return kept, dups


def dedup_with_rewrites(
    ids: list[str],
    texts: list[str],
    index: DedupIndex,
    embed: Callable[[list[str]], np.ndarray],
    rewrite: Callable[[list[tuple[str, str]], int], list[str]],
    threshold: float,
    max_attempts: int,
    clean: Callable[[str], tuple[str | None, str | None]] | None = None,
) -> DedupOutcome:
    """Dedup a batch against `index` (updated in place), rewriting duplicates up to max_attempts times.

    Round 0 screens the originals; every duplicate is recorded with its neighbour. All duplicates
    of a round go to ONE call `rewrite([(dup_text, neighbour_text), ...], attempt)`; each rewrite
    is cleaned (if `clean` is given), re-embedded and screened by the same rule against the index
    (which holds everything accepted so far) and the other rewrites of that round. After
    `max_attempts` rewrites a duplicate is dropped (reason "duplicate"); max_attempts=0 drops
    duplicates without rewriting. Accepted order: originals, then attempt-1 rewrites, and so on.
    """
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
    if max_attempts < 0:
        raise ValueError("max_attempts must be >= 0")
    out = DedupOutcome()
    rows: list[np.ndarray] = []
    # current round: (candidate id, origin id, text)
    round_ids, origins, round_texts = list(ids), list(ids), list(texts)
    attempt = 0
    while round_ids:
        vecs = _as_f32(embed(round_texts))
        if vecs.shape != (len(round_texts), index.dim):
            raise ValueError(f"embed returned shape {vecs.shape}, expected ({len(round_texts)}, {index.dim})")
        kept, dups = _screen(vecs, round_ids, round_texts, index, threshold)
        for p in kept:
            out.accepted.append(Accepted(round_ids[p], round_texts[p], origins[p], attempt))
        rows.append(vecs[kept])
        final = attempt >= max_attempts
        reason = REASON_DUPLICATE if final else REASON_REWRITTEN
        for d in dups:
            out.rejections.append(Rejection(round_ids[d.pos], round_texts[d.pos], reason,
                                            d.neighbour_id, d.neighbour_text, d.similarity, attempt))
        if final or not dups:
            break
        attempt += 1
        new_texts = rewrite([(round_texts[d.pos], d.neighbour_text) for d in dups], attempt)
        out.rewrites += 1
        if len(new_texts) != len(dups):
            raise ValueError(f"rewrite returned {len(new_texts)} texts for {len(dups)} prompts")
        next_ids, next_origins, next_texts = [], [], []
        for d, new in zip(dups, new_texts):
            new_id = rewrite_id(origins[d.pos], attempt)
            if clean is not None:
                cleaned, why = clean(new)
                if cleaned is None:
                    out.rejections.append(Rejection(new_id, new, str(why), d.neighbour_id,
                                                    d.neighbour_text, float("nan"), attempt))
                    continue
                new = cleaned
            next_ids.append(new_id)
            next_origins.append(origins[d.pos])
            next_texts.append(new)
        round_ids, origins, round_texts = next_ids, next_origins, next_texts
    out.embeddings = np.concatenate(rows) if rows else np.zeros((0, index.dim), dtype=np.float32)
    return out
