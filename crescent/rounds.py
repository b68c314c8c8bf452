"""Iterative self-improvement (rounds=R): generate -> train (-> eval) R times, each round's hf_export/
becoming the next round's teacher and student. Per-round metrics go to rounds/summary.{json,md,png}."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf, open_dict

from crescent.utils.io import read_json, write_json
from crescent.utils.stage import StageResult

log = logging.getLogger(__name__)


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique word n-grams / all word n-grams over the texts (0 when there are none): lexical diversity."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def round_config(cfg: DictConfig, r: int, root: Path) -> DictConfig:
    """The config of round r: its own output dir; from round 1 on, the previous export is the model."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.rounds = 1
        out.paths.output_dir = str(root / f"round_{r}")
        if r > 0:
            model = {"name": f"{cfg.student.name}-round{r}", "source": "hub", "hf_id": None, "revision": None,
                     "local_path": str(root / f"round_{r - 1}" / "hf_export"), "trust_remote_code": False,
                     "chat_template": cfg.student.get("chat_template"), "dtype": cfg.student.get("dtype")}
            out.teacher = OmegaConf.create(model)
            out.student = OmegaConf.create(model)
    return out


def round_summary(r: int, round_dir: Path) -> dict:
    """What one finished round produced, read back from its files."""
    from crescent.utils.io import read_jsonl

    manifest = read_json(round_dir / "synth" / "manifest.json") if (round_dir / "synth" / "manifest.json").exists() else {}
    questions = [q["text"] for q in read_jsonl(round_dir / "synth" / "questions.jsonl")] \
        if (round_dir / "synth" / "questions.jsonl").exists() else []
    train = read_json(round_dir / "train_result.json") if (round_dir / "train_result.json").exists() else {}
    summary = {"round": r, "questions": len(questions), "distinct_questions": len(set(questions)),
               "distinct_2": round(distinct_n(questions, 2), 4), "sft_rows": manifest.get("counts", {}).get("kept"),
               "train_loss": train.get("metrics", {}).get("train/loss"), "eval": {}, "gap": {}}
    if (round_dir / "eval" / "results.json").exists():
        from crescent.eval.report import metric_dict

        rows = [row for row in read_json(round_dir / "eval" / "results.json")["rows"] if row["model"] == "trained"]
        summary["eval"] = metric_dict(rows)
    if (round_dir / "gap" / "results.json").exists():
        summary["gap"] = read_json(round_dir / "gap" / "results.json").get("metrics", {})
    return summary


def run_rounds(cfg: DictConfig, run_one: Callable[[DictConfig], dict]) -> StageResult:
    """Runs the rounds (finished ones, status ok, are reused) and writes rounds/summary.*. The result's metrics are
    round<r>/<eval metric> and round<r>/distinct_2 (optimized_metric='rounds/round1/...'), its record the summaries."""
    root = Path(cfg.paths.output_dir)
    summaries = []
    for r in range(int(cfg.rounds)):
        rcfg = round_config(cfg, r, root)
        status = root / f"round_{r}" / "status.json"
        if status.exists() and read_json(status).get("status") == "ok":
            log.info("round %d already finished (%s)", r, status.parent)
        else:
            log.info("round %d of %d: teacher %s", r, cfg.rounds, rcfg.teacher.name)
            run_one(rcfg)
        summaries.append(round_summary(r, root / f"round_{r}"))
        write_summary(summaries, root / "rounds")
    metrics = {f"round{s['round']}/{k}": v for s in summaries for k, v in {**s["eval"], "distinct_2": s["distinct_2"]}.items()}
    return StageResult(metrics=metrics, record={"rounds": summaries},
                       artifacts={"summary": str(root / "rounds" / "summary.json")})


def write_summary(summaries: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summaries)
    cols = sorted({k for s in summaries for k in s["eval"]})
    gap_cols = sorted({k for s in summaries for k in s["gap"] if "pass@" in k})
    header = ["round", "questions", "distinct-2", "SFT rows", "train loss"] + cols + gap_cols
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for s in summaries:
        vals = [s["round"], s["questions"], s["distinct_2"], s["sft_rows"], s["train_loss"]]
        vals += [s["eval"].get(c) for c in cols] + [s["gap"].get(c) for c in gap_cols]
        lines.append("| " + " | ".join("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in vals) + " |")
    (out / "summary.md").write_text("# rounds\n\n" + "\n".join(lines) + "\n")
    _plot(summaries, cols + gap_cols, out / "summary.png")


def _plot(summaries: list[dict], cols: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["round"] for s in summaries]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for c in cols:
        a.plot(xs, [100 * (s["eval"].get(c) if c in s["eval"] else s["gap"].get(c) or 0) for s in summaries],
               marker="o", label=c)
    a.set_xlabel("round")
    a.set_ylabel("score (%)")
    if cols:
        a.legend(fontsize=7)
    b.plot(xs, [s["distinct_2"] for s in summaries], marker="o", color="tab:green")
    b.set_xlabel("round")
    b.set_ylabel("distinct-2 of questions")
    for ax in (a, b):
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
