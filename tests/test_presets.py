"""Preset fidelity: every preset names its source (paper + section/table, or 'none' for CPU code paths), values the
papers do not state are marked '# assumption:', and the drifts of issue 20 stay fixed (Mind the Gap on base models,
Crescent's chat template at 0-shot only, LMSI's 8 exemplars and its few-shot-CoT-only ablation)."""
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import CONF, ROOT
from crescent.config import validate

PAPERS = {"Crescent": "2502.13441", "LMSI": "2210.11610", "Mind the Gap": "2412.02674"}
PRESETS = sorted([*(CONF / "experiment").glob("*.yaml"), CONF / "sampling" / "paper.yaml",
                  *(CONF / "questions").glob("*.yaml")])
# keys whose value the papers do not state: each must carry '# assumption: <reason>' on its line
ASSUMED = {
    "experiment/crescent_llama3_8b.yaml": ["train.epochs", "train.global_batch_size", "train.max_seq_len",
                                           "train.packing", "train.optimizer", "eval.apply_chat_template",
                                           "eval.chat_template_shots"],
    "experiment/crescent_llama2_7b.yaml": ["train.max_seq_len"],
    "experiment/crescent_distill_llama3_8b_to_1b.yaml": ["train.kd.alpha"],
    "experiment/seed_augment_distill_llama3_8b_to_1b.yaml": ["questions.max_calls", "sampling.question"],
    "experiment/lmsi_gsm8k.yaml": ["sampling.answer.top_p", "train.max_seq_len"],
    "sampling/paper.yaml": ["rewrite.temperature", "rewrite.top_p", "rewrite.max_new_tokens"],
}


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def commented_keys(path: Path) -> dict[str, str]:
    """{dotted key: its line's comment} for block-style YAML (indentation gives the nesting)."""
    out, stack = {}, []
    for line in path.read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w@/]*):(.*)$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m[2]))
        out[".".join(k for _, k in stack)] = m[3].split("#", 1)[1] if "#" in m[3] else ""
    return out


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_header_names_its_source(path):
    head = header(path)
    source = re.search(r"^# Source: (.*(?:\n# (?!\s*crescent ).*)*)", head, re.M)
    assert source, f"{path}: no '# Source:' line in the header comment"
    text = source[1]
    if text.startswith("none"):  # a CPU code path, not a paper setting
        assert path.parent.name != "experiment" or "paper" not in (OmegaConf.load(path).get("tags") or []), path
        return
    named = [p for p in PAPERS if p in text]
    assert named, f"{path}: the source names none of {list(PAPERS)}"
    assert any(f"arXiv {PAPERS[p]}" in text for p in named) or "LMSI's method" in text, path
    assert re.search(r"§\s*\d|Table \d", text), f"{path}: the source cites no section (§) or table"


@pytest.mark.parametrize("rel,keys", sorted(ASSUMED.items()))
def test_values_the_papers_do_not_state_are_marked_as_assumptions(rel, keys):
    comments = commented_keys(CONF / rel)
    for key in keys:
        assert key in comments, f"{rel}: no key {key}"
        assert re.match(r"\s*assumption: \S", comments[key]), f"{rel}: {key} is not marked '# assumption: <reason>'"


def test_paper_presets_that_state_no_training_recipe_say_so(make_cfg):
    cres = (CONF / "experiment" / "crescent_llama3_8b.yaml").read_text()
    assert "every train.* value is ours" in cres
    # LMSI's stated values are the preset's values
    lmsi = make_cfg("experiment=lmsi_gsm8k")
    assert (lmsi.voting.k, lmsi.sampling.answer.temperature, lmsi.sampling.answer.max_new_tokens) == (32, 0.7, 256)
    assert (lmsi.train.max_steps, lmsi.train.global_batch_size, lmsi.train.optimizer.lr) == (10000, 32, 5e-5)


def test_lmsi_uses_8_exemplars_at_paper_scale_and_the_cpu_group_keeps_4(make_cfg):
    from crescent.synth.sources import answer_prompt

    lmsi = make_cfg("experiment=lmsi_gsm8k")
    ex = list(lmsi.questions.exemplars)
    assert len(ex) == 8 and all(e.cot.endswith(f"The answer is {e.answer}.") for e in ex)
    assert [e.question for e in ex[:4]] == [e.question for e in make_cfg("questions=dataset").questions.exemplars]
    prompt = answer_prompt(lmsi.questions, "How many legs do 2 cats have?")
    assert prompt.count("The answer is") == 8 and lmsi.questions.prompt_version == "lmsi-cot-8shot-v1"
    assert len(make_cfg("experiment=lmsi_smoke").questions.exemplars) == 4
    validate(lmsi)


def test_crescent_scores_0_shot_in_chat_form_and_5_shot_as_plain_few_shot(make_cfg, monkeypatch):
    from crescent.eval import harness, stage

    cfg = make_cfg("experiment=crescent_llama3_8b")
    assert list(cfg.eval.num_fewshot) == [0, 5]
    assert (stage.chat_at(cfg.eval, 0), stage.chat_at(cfg.eval, 5)) == (True, False)
    seen = {}
    monkeypatch.setattr(harness, "evaluate", lambda lm, tasks, shots, settings, limit:
                        seen.setdefault(shots, settings["apply_chat_template"]) and {} or {})
    monkeypatch.setattr(harness, "sample_rows", lambda *a: [])
    gsm = {"gsm8k": OmegaConf.to_container(cfg.eval.benchmarks.gsm8k, resolve=True)}
    for shots in (0, 5):
        stage._score_unit(None, "base", gsm, shots, cfg, str(ROOT))
    assert seen == {0: True, 5: False}
    # the unit key follows: an hf run without chat_template_shots keeps its key
    plain = make_cfg("eval.apply_chat_template=true")
    assert stage.chat_at(plain.eval, 5) is True
    settings = {k: plain.eval.get(k) for k in stage.SETTINGS}
    assert stage.unit_settings(settings, plain.eval, 5) == settings


def test_mind_the_gap_runs_base_models():
    script = (ROOT / "experiments" / "gap_verifiers" / "run.sh").read_text()
    models = re.search(r"MODELS=\$\{MODELS:-([^}]*)\}", script)[1].split(",")
    assert len(models) >= 2
    for name in models:
        cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
        assert "instruct" not in name and "Instruct" not in cfg.hf_id and "chat" not in cfg.hf_id.lower(), name
        assert "base" in header(CONF / "model" / f"{name}.yaml")


def test_mind_the_gap_base_model_composes_for_the_gap_stage(make_cfg):
    from crescent.pipeline import check_launch

    cfg = make_cfg("model@teacher=qwen2_5_7b", "stages=[gap]", "gap.n_samples=128", "gap.max_new_tokens=512")
    validate(cfg)
    check_launch(cfg)
    assert cfg.teacher.hf_id == "Qwen/Qwen2.5-7B" and cfg.gap.chat is False


def test_lmsi_cot_only_ablation_is_few_shot_cot_alone():
    for script in ("run.sh", "smoke.sh"):
        text = (ROOT / "experiments" / "lmsi_formats" / script).read_text()
        rows = re.findall(r"\[[^\]]*\]", re.search(r"'questions\.formats=([^']*)'", text)[1])
        assert rows == ["[cot_fewshot,direct_fewshot,cot_zeroshot,direct_zeroshot]", "[cot_fewshot]",
                        "[direct_fewshot,direct_zeroshot]"], (script, rows)
