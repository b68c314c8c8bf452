"""Benchmark crescent's embedding dedup against the authors' algorithm and a plain reference loop.

Examples (from the repo root):
  python experiments/perf/bench_dedup.py --compare --n 5000 --scaling 1000,5000,10000,20000,50000
  python experiments/perf/bench_dedup.py --embeddings emb.npy --threshold 0.85 --out kept.json
  python experiments/perf/bench_dedup.py --texts questions.txt --compare
See experiments/perf/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from crescent.synth.dedup import DedupIndex, _screen, greedy_dedup  # noqa: E402

RESULTS = REPO / "experiments" / "perf" / "results"
AUTHORS_BATCH = 100
AUTHORS_WITHIN = 0.85  # cosine, within a batch of 100
AUTHORS_HISTORY_L2SQ = 0.25  # squared L2 on unit vectors = cosine > 0.875


# -- data ------------------------------------------------------------------------------------
def synthetic(n: int, dup_fraction: float, seed: int, dim: int = 384, topics: int = 64) -> np.ndarray:
    """Unit vectors shaped like sentence embeddings of math questions, with planted near-duplicates.

    Background: shared direction + one of `topics` topic directions + noise, so unrelated pairs sit
    near cos 0.15 and same-topic pairs near 0.4. A `dup_fraction` of rows are noisy copies of an
    earlier base row with cosine spread over ~[0.75, 0.97] (straddling 0.85), in groups of 1-4
    copies; rows are then shuffled so a copy may come before its base.
    """
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    n_dup = int(round(n * dup_fraction))
    n_base = n - n_dup
    shared = unit(rng.standard_normal(dim))
    topic_dirs = unit(rng.standard_normal((topics, dim)))
    noise = unit(rng.standard_normal((n_base, dim)))
    base = unit(
        np.sqrt(0.15) * shared
        + np.sqrt(0.25) * topic_dirs[rng.integers(topics, size=n_base)]
        + np.sqrt(0.60) * noise
    )
    rows = [base]
    if n_dup:
        group_sizes = []
        while sum(group_sizes) < n_dup:
            group_sizes.append(int(min(rng.integers(1, 5), n_dup - sum(group_sizes))))
        parents = rng.choice(n_base, size=len(group_sizes), replace=len(group_sizes) > n_base)
        parent_of = np.repeat(parents, group_sizes)
        target_cos = rng.uniform(0.75, 0.97, size=n_dup)
        scale = np.sqrt(1.0 / target_cos**2 - 1.0)  # |base + s*g| with unit g orthogonal-ish
        rows.append(unit(base[parent_of] + scale[:, None] * unit(rng.standard_normal((n_dup, dim)))))
    emb = np.concatenate(rows)[rng.permutation(n)]
    return np.ascontiguousarray(emb, dtype=np.float32)


def load_data(args) -> tuple[np.ndarray, str]:
    if args.embeddings:
        emb = np.load(args.embeddings).astype(np.float32)
        return np.ascontiguousarray(emb), f"embeddings:{args.embeddings}"
    if args.texts:
        from crescent.synth.embed import get_embedder

        lines = [ln.strip() for ln in Path(args.texts).read_text().splitlines() if ln.strip()]
        return get_embedder().encode(lines), f"texts:{args.texts}"
    return synthetic(args.n, args.dup_fraction, args.seed), "synthetic"


# -- the three algorithms --------------------------------------------------------------------
def authors_dedup(emb: np.ndarray) -> list[int]:
    """The authors' public generate script, minus the LLM: per batch of 100, a pure-Python pair
    loop with sklearn's cosine_similarity on each pair (drop the EARLIER item i when any later j
    has cos >= 0.85), then each survivor searched one by one in a faiss.IndexFlatL2 of accepted
    items (squared L2 < 0.25 => duplicate) and added to it immediately when not a duplicate."""
    import faiss
    from sklearn.metrics.pairwise import cosine_similarity

    index = faiss.IndexFlatL2(emb.shape[1])
    kept = []
    for start in range(0, len(emb), AUTHORS_BATCH):
        vectors = emb[start : start + AUTHORS_BATCH]
        dropped = set()
        for i, vector in enumerate(vectors):
            for j in range(i + 1, len(vectors)):
                if cosine_similarity([vector], [vectors[j]])[0][0] >= AUTHORS_WITHIN:
                    dropped.add(i)
                    break
        for i in range(len(vectors)):
            if i in dropped:
                continue
            v = vectors[i : i + 1]
            if index.ntotal:
                dist, _ = index.search(v, 1)
                if dist[0, 0] < AUTHORS_HISTORY_L2SQ:
                    continue
            index.add(v)
            kept.append(start + i)
    return kept


def reference_dedup(emb: np.ndarray, threshold: float) -> list[int]:
    """Plain accept-in-order: Python loop over items, numpy check against the kept rows."""
    kept_vecs = np.empty_like(emb)
    kept = []
    thr = np.float64(threshold)
    for i, e in enumerate(emb):
        if not kept or (kept_vecs[: len(kept)] @ e).max() < thr:
            kept_vecs[len(kept)] = e
            kept.append(i)
    return kept


def hnsw_dedup(emb: np.ndarray, threshold: float, block: int) -> np.ndarray:
    """crescent's greedy rule with the accepted set in a DedupIndex(backend="hnsw")."""
    index = DedupIndex(emb.shape[1], backend="hnsw")
    ids = [str(i) for i in range(len(emb))]
    kept, _ = _screen(emb, ids, ids, index, threshold, block=block)
    return kept


# -- measurement -----------------------------------------------------------------------------
def timed(fn, repeats: int = 1):
    """(result, best wall seconds over repeats)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def check_identical(emb, kept, ref, threshold) -> dict:
    a, b = set(map(int, kept)), set(map(int, ref))
    diff = sorted(a ^ b)
    info = {"identical": not diff, "n_differing": len(diff)}
    if diff:  # show how close to the threshold the disagreements are (float rounding vs a bug)
        i = diff[0]
        earlier = [j for j in b if j < i]
        info["first_diff"] = i
        info["first_diff_max_sim_to_ref_kept_before"] = float((emb[earlier] @ emb[i]).max()) if earlier else None
    return info


_AUTHORS_CACHE: dict[bytes, tuple[list[int], float]] = {}


def authors_timed(emb: np.ndarray) -> tuple[list[int], float]:
    """authors_dedup with its wall time, run once per distinct input (it is slow)."""
    key = hashlib.sha1(np.ascontiguousarray(emb).tobytes()).digest()
    if key not in _AUTHORS_CACHE:
        _AUTHORS_CACHE[key] = timed(lambda: authors_dedup(emb))
    return _AUTHORS_CACHE[key]


def run_compare(emb, args) -> dict:
    n = len(emb)
    print(f"[compare] n={n}, threshold={args.threshold}")
    kept, t_ours = timed(lambda: greedy_dedup(emb, args.threshold, block=args.block), args.repeats)
    ref, t_ref = timed(lambda: reference_dedup(emb, args.threshold))
    verdict = check_identical(emb, kept, ref, args.threshold)
    res = {
        "n": n,
        "threshold": args.threshold,
        "crescent_s": t_ours,
        "reference_s": t_ref,
        "kept_crescent": int(len(kept)),
        "kept_reference": len(ref),
        "identical_to_reference": verdict["identical"],
        "verify": verdict,
        "speedup_vs_reference": t_ref / t_ours,
    }
    if n <= args.authors_max_n:
        auth, t_auth = authors_timed(emb)
        res.update(authors_s=t_auth, kept_authors=len(auth), speedup_vs_authors=t_auth / t_ours)
    return res


def run_scaling(sizes, base_emb, args) -> list[dict]:
    rows = []
    for n in sizes:
        if base_emb is not None:
            if n > len(base_emb):
                print(f"[scaling] skip n={n}: only {len(base_emb)} rows")
                continue
            emb = base_emb[:n]
        else:
            emb = synthetic(n, args.dup_fraction, args.seed)
        kept, t_exact = timed(lambda: greedy_dedup(emb, args.threshold, block=args.block), args.repeats)
        kept_h, t_hnsw = timed(lambda: hnsw_dedup(emb, args.threshold, args.block), args.repeats)
        mask_e = np.zeros(n, bool)
        mask_e[kept] = True
        mask_h = np.zeros(n, bool)
        mask_h[kept_h] = True
        row = {
            "n": n,
            "exact_s": t_exact,
            "exact_us_per_item": 1e6 * t_exact / n,
            "hnsw_s": t_hnsw,
            "hnsw_us_per_item": 1e6 * t_hnsw / n,
            "kept_exact": int(len(kept)),
            "kept_hnsw": int(len(kept_h)),
            "hnsw_agreement": float((mask_e == mask_h).mean()),
        }
        if n <= args.reference_max_n:
            ref, t_ref = timed(lambda: reference_dedup(emb, args.threshold))
            row.update(reference_s=t_ref, identical_to_reference=check_identical(emb, kept, ref, args.threshold)["identical"])
        if n <= args.authors_max_n:
            auth, t_auth = authors_timed(emb)
            row.update(authors_s=t_auth, kept_authors=len(auth), speedup_vs_authors=t_auth / t_exact)
        print(f"[scaling] n={n}: exact {t_exact:.3f}s, hnsw {t_hnsw:.3f}s"
              + (f", authors {row['authors_s']:.1f}s" if "authors_s" in row else ""))
        rows.append(row)
    return rows


# -- reporting -------------------------------------------------------------------------------
def fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def markdown(compare: dict | None, scaling: list[dict]) -> str:
    out = []
    if compare:
        c = compare
        out += [
            f"Compare at n={c['n']} (threshold {c['threshold']}):",
            "",
            "| algorithm | time (s) | kept | speedup of crescent |",
            "|---|---:|---:|---:|",
            f"| crescent greedy_dedup (exact) | {c['crescent_s']:.4f} | {c['kept_crescent']} | 1× |",
            f"| reference accept-in-order loop | {c['reference_s']:.3f} | {c['kept_reference']} | {c['speedup_vs_reference']:.0f}× |",
        ]
        if "authors_s" in c:
            out.append(f"| authors (batches of 100, pair loop + IndexFlatL2) | {c['authors_s']:.2f} | {c['kept_authors']} | {c['speedup_vs_authors']:.0f}× |")
        out += ["", f"crescent kept set identical to reference: **{c['identical_to_reference']}**", ""]
    if scaling:
        out += [
            "| n | exact (s) | exact µs/item | hnsw (s) | hnsw µs/item | hnsw agreement | kept exact / hnsw | reference (s) | authors (s) | speedup vs authors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in scaling:
            sp = r.get("speedup_vs_authors")
            out.append(
                f"| {r['n']} | {r['exact_s']:.4f} | {r['exact_us_per_item']:.1f} | {r['hnsw_s']:.3f} | "
                f"{r['hnsw_us_per_item']:.1f} | {r['hnsw_agreement']:.4f} | {r['kept_exact']} / {r['kept_hnsw']} | "
                f"{fmt(r.get('reference_s'), '.2f')} | {fmt(r.get('authors_s'), '.2f')} | "
                f"{'–' if sp is None else f'{sp:.0f}×'} |"
            )
    return "\n".join(out)


def plot(compare, scaling, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series = [("exact_s", "crescent exact", "o-"), ("hnsw_s", "crescent hnsw", "s-"),
              ("reference_s", "reference loop", "^--"), ("authors_s", "authors", "x-")]
    for key, label, style in series:
        pts = [(r["n"], r[key]) for r in scaling if key in r]
        if compare and key.replace("exact_s", "crescent_s") in compare and compare["n"] not in [p[0] for p in pts]:
            pts.append((compare["n"], compare[key.replace("exact_s", "crescent_s")]))
        if pts:
            pts.sort()
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items deduplicated (n)")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"Embedding dedup, threshold 0.85 ({os.cpu_count()} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> dict:
    import faiss

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
            "loadavg_at_end": os.getloadavg()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data (default: seeded synthetic unit vectors with planted near-duplicates)")
    src.add_argument("--embeddings", help="a .npy (n, d) float array of unit rows, deduplicated in row order")
    src.add_argument("--texts", help="a text file, one sentence per line, embedded with crescent's Embedder")
    src.add_argument("--n", type=int, default=5000, help="synthetic rows (default 5000)")
    src.add_argument("--dup-fraction", type=float, default=0.2,
                     help="synthetic: fraction of rows that are planted near-copies of another row (default 0.2)")
    src.add_argument("--seed", type=int, default=0, help="synthetic: RNG seed (default 0)")
    act = p.add_argument_group("what to run (any combination; none = dedup the data and print counts)")
    act.add_argument("--out", help='write {"threshold", "n", "kept": [row indices]} of crescent\'s greedy_dedup here')
    act.add_argument("--compare", action="store_true",
                     help="time crescent vs the authors' algorithm and a reference loop on the data; "
                          "exits 1 if crescent's kept set differs from the reference loop's")
    act.add_argument("--scaling", help="comma-separated sizes, e.g. 1000,5000,10000,20000,50000: time crescent "
                                       "exact and hnsw at each n (synthetic data per n, or prefixes of the given data)")
    opt = p.add_argument_group("options")
    opt.add_argument("--threshold", type=float, default=0.85, help="cosine threshold, >= is a duplicate (default 0.85)")
    opt.add_argument("--block", type=int, default=1024, help="greedy_dedup block size (default 1024)")
    opt.add_argument("--repeats", type=int, default=3, help="crescent timings: best of this many runs (default 3)")
    opt.add_argument("--authors-max-n", type=int, default=5000,
                     help="run the (slow) authors' algorithm only up to this n (default 5000)")
    opt.add_argument("--reference-max-n", type=int, default=20000,
                     help="in --scaling, run the reference loop only up to this n (default 20000)")
    opt.add_argument("--results-dir", default=str(RESULTS),
                     help="where bench_dedup.json and bench_dedup.png go (default experiments/perf/results)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    needs_data = args.out or args.compare or not args.scaling
    emb, source = load_data(args) if needs_data else (None, "synthetic")
    if args.out:
        kept = greedy_dedup(emb, args.threshold, block=args.block)
        Path(args.out).write_text(json.dumps({"threshold": args.threshold, "n": len(emb), "kept": kept.tolist()}))
        print(f"kept {len(kept)} of {len(emb)} -> {args.out}")
    if not (args.compare or args.scaling):
        if not args.out:
            kept = greedy_dedup(emb, args.threshold, block=args.block)
            print(f"kept {len(kept)} of {len(emb)} at threshold {args.threshold}")
        return 0
    compare = run_compare(emb, args) if args.compare else None
    sizes = [int(s) for s in args.scaling.split(",")] if args.scaling else []
    scaling = run_scaling(sizes, emb if source != "synthetic" else None, args)
    report = {"machine": machine(), "source": source,
              "params": {k: v for k, v in vars(args).items() if k not in ("results_dir",)},
              "compare": compare, "scaling": scaling}
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_dedup.json").write_text(json.dumps(report, indent=2))
    plot(compare, scaling, out_dir / "bench_dedup.png")
    print()
    print(markdown(compare, scaling))
    print(f"\nwrote {out_dir / 'bench_dedup.json'} and {out_dir / 'bench_dedup.png'}")
    ok = (compare is None or compare["identical_to_reference"]) and all(
        r.get("identical_to_reference", True) for r in scaling)
    if not ok:
        print("ERROR: crescent's kept set differs from the reference loop", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
