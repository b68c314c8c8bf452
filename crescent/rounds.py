"""Iterative self-improvement (rounds=R): generate -> train (-> eval) R times, each round's hf_export/
becoming the next round's teacher and student. Per-round metrics go to rounds/summary.{json,md,png}.

Which model each number measures: a round *starts from* model M_r (M_0 = the configured model, M_r = round r-1's
export) and *ends with* M_{r+1}. The gap stage (pass@k, maj@k) samples the teacher, so it measures M_r; the eval
stage's `trained` rows measure M_{r+1}. With the gap stage on, a last `final` row measures pass@k of M_R too."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf, open_dict

from crescent.utils.io import read_json, write_json

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
    summary = {"round": r, "starts_from": None, "ends_with": None, "questions": len(questions), "distinct_questions": len(set(questions)),
               "distinct_2": round(distinct_n(questions, 2), 4), "sft_rows": manifest.get("counts", {}).get("kept"),
               "train_loss": train.get("metrics", {}).get("train/loss"), "eval": {}, "gap": {}}
    if (round_dir / "eval" / "results.json").exists():
        from crescent.eval.report import metric_dict

        rows = [row for row in read_json(round_dir / "eval" / "results.json")["rows"] if row["model"] == "trained"]
        summary["eval"] = metric_dict(rows)
    if (round_dir / "gap" / "results.json").exists():
        summary["gap"] = read_json(round_dir / "gap" / "results.json").get("metrics", {})
    return summary


def model_after(cfg: DictConfig, r: int) -> str:
    """The name of M_r, the model after r rounds (the one round r starts from)."""
    return cfg.student.name if r == 0 else f"{cfg.student.name}-round{r}"


def final_config(cfg: DictConfig, root: Path) -> DictConfig:
    """The gap stage alone on M_R, the model the last round ended with, in <root>/final."""
    out = round_config(cfg, int(cfg.rounds), root)
    with open_dict(out):
        out.stages = ["gap"]
        out.paths.output_dir = str(root / "final")
    return out


def _finished(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return status.exists() and read_json(status).get("status") == "ok"


def run_rounds(cfg: DictConfig, run_one: Callable[[DictConfig], dict],
               on_round: Callable[[dict], None] | None = None) -> dict:
    """Runs the rounds (finished ones, status ok, are reused), then (gap stage on) pass@k of the final model, and
    writes rounds/summary.*; on_round(summary) after each (the tracker logs it on its `round` axis)."""
    root = Path(cfg.paths.output_dir)
    summaries = []
    for r in range(int(cfg.rounds)):
        rcfg = round_config(cfg, r, root)
        if _finished(root / f"round_{r}"):
            log.info("round %d already finished (%s)", r, root / f"round_{r}")
        else:
            log.info("round %d of %d: teacher %s", r, cfg.rounds, rcfg.teacher.name)
            run_one(rcfg)
        summary = round_summary(r, root / f"round_{r}")
        summary.update(starts_from=model_after(cfg, r),
                       ends_with=model_after(cfg, r + 1) if "train" in cfg.stages else None)
        summaries.append(summary)
        write_summary(summaries, root / "rounds")
        if on_round is not None:
            on_round(summary)
    if "gap" in cfg.stages:  # the final model's pass@k: what the last round produced, measured like the others
        fcfg = final_config(cfg, root)
        if not _finished(root / "final"):
            log.info("rounds: pass@k of the final model %s", fcfg.teacher.name)
            run_one(fcfg)
        final = round_summary(int(cfg.rounds), root / "final")
        final.update(round="final", starts_from=model_after(cfg, int(cfg.rounds)), questions=None,
                     distinct_questions=None, distinct_2=None)
        summaries.append(final)
        write_summary(summaries, root / "rounds")
        if on_round is not None:
            on_round({**final, "round": int(cfg.rounds)})
    metrics = {}
    for s in summaries:
        name = "final" if s["round"] == "final" else f"round{s['round']}"
        metrics.update({f"{name}/{k}": v for k, v in s["eval"].items()})
        metrics.update({f"{name}/start/{k}": v for k, v in s["gap"].items() if "pass@" in k or "maj@" in k})
        if s["distinct_2"] is not None:
            metrics[f"{name}/distinct_2"] = s["distinct_2"]
    return {"rounds": summaries, "metrics": metrics}


def round_axis_metrics(summary: dict) -> dict[str, float]:
    """One round's numbers for a tracker's `round` axis, each key naming the model it measures: start/ = the model
    the round starts from (gap: pass@k, maj@k, accuracy of samples), end/ = the model it ends with (eval)."""
    out = {f"start/{k}": v for k, v in summary["gap"].items() if isinstance(v, (int, float))}
    out.update({f"end/{k}": v for k, v in summary["eval"].items()})
    out.update({k: summary[k] for k in ("questions", "distinct_2", "sft_rows", "train_loss")
                if isinstance(summary.get(k), (int, float))})
    return out


def write_summary(summaries: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summaries)
    cols = sorted({k for s in summaries for k in s["eval"]})
    gap_cols = sorted({k for s in summaries for k in s["gap"] if "pass@" in k})
    header = (["round", "starts from", "ends with", "questions", "distinct-2", "SFT rows", "train loss"]
              + [f"{c} (start model)" for c in gap_cols] + [f"{c} (end model)" for c in cols])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for s in summaries:
        vals = [s["round"], s.get("starts_from"), s.get("ends_with"), s["questions"], s["distinct_2"], s["sft_rows"],
                s["train_loss"]]
        vals += [s["gap"].get(c) for c in gap_cols] + [s["eval"].get(c) for c in cols]
        lines.append("| " + " | ".join("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
                                       for v in vals) + " |")
    note = ("\nEach round starts from one model and ends with the next. `(start model)` columns (gap stage: pass@k) "
            "measure the model the round starts from; `(end model)` columns (eval stage, trained rows) measure the "
            "model it ends with. The `final` row measures the last round's model.\n")
    (out / "summary.md").write_text("# rounds\n\n" + "\n".join(lines) + "\n" + note)
    _plot(summaries, cols, gap_cols, out / "summary.png")


def _plot(summaries: list[dict], cols: list[str], gap_cols: list[str], path: Path) -> None:
    """Scores against the model measured: x = rounds of training it has had (eval of round r's end model at r+1,
    pass@k of round r's start model at r)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s for s in summaries if s["round"] != "final"]
    final = [s for s in summaries if s["round"] == "final"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for c in cols:
        pts = [(s["round"] + 1, s["eval"][c]) for s in rounds if c in s["eval"]]
        a.plot([x for x, _ in pts], [100 * v for _, v in pts], marker="o", label=c)
    for c in gap_cols:
        pts = [(s["round"], s["gap"][c]) for s in rounds if c in s["gap"]]
        pts += [(len(rounds), s["gap"][c]) for s in final if c in s["gap"]]
        a.plot([x for x, _ in pts], [100 * v for _, v in pts], marker="s", linestyle="--", label=c)
    a.set_xlabel("rounds of training of the measured model")
    a.set_ylabel("score (%)")
    if cols or gap_cols:
        a.legend(fontsize=7)
    b.plot([s["round"] for s in rounds], [s["distinct_2"] for s in rounds], marker="o", color="tab:green")
    b.set_xlabel("round")
    b.set_ylabel("distinct-2 of questions")
    a.set_xticks(range(len(rounds) + 1))
    b.set_xticks([s["round"] for s in rounds])
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
