"""The one-screen summary printed at the end of a run, from the stages' StageResults (crescent.utils.stage)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from crescent.utils.stage import StageResult


def print_summary(cfg: DictConfig, results: dict[str, StageResult], run_dir: Path) -> None:
    console = Console(stderr=False)
    gen = results["generate"].record if "generate" in results else None
    if gen:
        c = gen["counts"]
        t = Table(title=f"crescent generate: {cfg.teacher.name} ({'cache hit' if gen.get('cache_hit') else 'generated'})")
        t.add_column("step")
        t.add_column("count", justify="right")
        t.add_row("bait calls / raw samples", f"{c['bait_calls']} / {c['raw']}")
        for reason, n in c["rejected"].items():
            t.add_row(f"  rejected {reason}", str(n))
        t.add_row("rewrites (rejection sampling)", str(c["rewrites"]))
        t.add_row("accepted questions", str(c["accepted"]))
        t.add_row(f"answers (k={cfg.voting.k}) / unparseable", f"{c.get('answers', 0)} / {c.get('unparseable_answers', 0)}")
        for key in sorted(k for k in c if k.startswith("dropped_")):
            t.add_row(f"  {key.replace('_', ' ')}", str(c[key]))
        t.add_row("SFT rows kept", str(c["kept"]))
        dc = gen.get("decontam")
        if dc:
            t.add_row(f"decontam ({dc['policy']}): checked / flagged 13-gram / embedding / dropped",
                      f"{dc['checked']} / {dc['flagged_ngram']} / {dc['flagged_embedding']} / {dc['dropped']}")
        secs = gen.get("timings_s", {})
        t.add_row("time questions / answers (s)", f"{secs.get('questions', 0)} / {secs.get('answers', 0)}")
        console.print(t)
    tr = results["train"].record if "train" in results else None
    if tr:
        m = tr.get("metrics", {})
        t = Table(title=f"crescent train: {tr['student']} ({cfg.train.name})")
        t.add_column("what")
        t.add_column("value", justify="right")
        t.add_row("rows train / val", f"{tr['data_stats'].get('train_rows')} / {tr['data_stats'].get('val_rows')}")
        t.add_row("optimizer steps / epochs", f"{tr['global_step']} / {tr['epochs']}")
        for key in ("train/loss", "val/loss", "train/kd", "train/tokens_per_s"):
            if key in m:
                t.add_row(key, f"{m[key]:.4g}")
        t.add_row("wall (s)", str(tr["wall_s"]))
        console.print(t)
    ev = results.get("eval")
    if ev is not None and "results" in ev.artifacts:
        _print_eval(console, ev.artifacts["results"])
    console.print(f"run dir: {run_dir}")
    if gen:
        console.print(f"  synth/sft.jsonl, synth/questions.jsonl, synth/manifest.json (cache: {gen['cache_dir']})")
    if tr:
        console.print("  hf_export/ (save_pretrained model + tokenizer), checkpoints/last.ckpt, train_result.json")
    if ev is not None:
        console.print("  eval/results.json, eval/summary.md, eval/summary.png, eval/samples_*.jsonl")


def _print_eval(console: Console, results_path: str) -> None:
    from crescent.eval.report import summary_rows
    from crescent.utils.io import read_json

    result = read_json(results_path)
    models, rows = summary_rows(result["rows"])
    names = ", ".join(f"{tag} = {m['name']}" for tag, m in result["models"].items())
    t = Table(title=f"crescent eval ({names}; limit={result['settings'].get('limit')})")
    for col in ["benchmark", "shots", "score", "n"] + [f"{m} (%)" for m in models] + (["Δ (pts)"] if len(models) > 1 else []):
        t.add_column(col, justify="left" if col in ("benchmark", "score") else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)
