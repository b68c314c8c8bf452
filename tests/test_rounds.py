"""rounds=R: one W&B run per job with `round` as its step axis (not R runs), and a rounds table that says which
model each column measures (pass@k of the model a round starts from, accuracy of the model it ends with), with a
`final` row measuring the last round's model."""
import json

from crescent import pipeline
from crescent.utils.io import read_json


def _sft(path):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                                      {"role": "assistant", "content": f"{i} + 1 = {i + 1}. #### {i + 1}"}]})
                            + "\n" for i in range(8)))
    return path


def test_two_rounds_log_into_one_wandb_run_on_a_round_axis_and_label_the_models(make_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, axes, inits = [], [], []
    real_init = wandb.init

    def init(**kw):
        run = real_init(**kw)
        inits.append(kw)
        real_log, real_define = run.log, run.define_metric
        run.log = lambda data, *a, **k: logged.append(dict(data)) or real_log(data, *a, **k)
        run.define_metric = lambda name, *a, **k: axes.append((name, k.get("step_metric"))) or real_define(name, *a, **k)
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = make_cfg("debug=default", "logger=wandb", "rounds=2", "stages=[train,eval,gap]",
                   f"train.data={_sft(tmp_path / 'sft.jsonl')}", "train.epochs=1", "train.max_seq_len=64",
                   "eval=smoke", "eval.tasks=[arc_challenge]", "eval.limit=2", "eval.dtype=float32",
                   "gap.limit=2", "gap.n_samples=2", "gap.max_new_tokens=8", "gap.pass_k=[1,2]", "gap.num_fewshot=1")
    out = pipeline.run(cfg)["rounds"]
    root = tmp_path / "run"
    assert len(inits) == 1 and len(list(root.rglob("offline-run-*"))) == 1  # one run, not one per round
    assert ("round/*", "round") in axes
    rounds = [d for d in logged if "round" in d]
    assert [d["round"] for d in rounds] == [0, 1, 2]  # two rounds, then the final model
    assert "round/end/arc_challenge/acc" in rounds[0] and "round/start/pass@1" in rounds[0]
    assert "round/start/pass@1" in rounds[2] and not any(k.startswith("round/end/") for k in rounds[2])
    assert wandb.run is None  # finished once, at the end
    # the table: which model each column measures, and the final model's pass@k
    assert [s["round"] for s in out.record["rounds"]] == [0, 1, "final"]
    assert [(s["starts_from"], s["ends_with"]) for s in out.record["rounds"]] == [
        ("tiny_llama", "tiny_llama-round1"), ("tiny_llama-round1", "tiny_llama-round2"), ("tiny_llama-round2", None)]
    md = (root / "rounds" / "summary.md").read_text()
    header = md.splitlines()[2]
    assert "| starts from | ends with |" in header and "pass@1 (start model)" in header
    assert "arc_challenge/acc (end model)" in header
    final_row = [line for line in md.splitlines() if line.startswith("| final |")]
    assert len(final_row) == 1 and "tiny_llama-round2" in final_row[0]
    assert read_json(root / "final" / "gap" / "results.json")["model"] == "tiny_llama-round2"
    assert "final/start/pass@1" in out.metrics and "round1/arc_challenge/acc" in out.metrics
