"""Issue 21 item 1: nothing in a benchmark file runs as code, and its paths stay under allowed roots.

Templates: a config-time check names the key of a template that reads underscore attributes; whatever gets past it
(or comes through a path that skips validation) renders in Jinja's sandbox, which raises SecurityError: no shell
command runs. Paths: `path`, `fewshot_path`, `loader_options.path` resolve under the launch dir or eval.data_roots.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from jinja2 import TemplateError
from omegaconf import open_dict

from crescent.config import ConfigError, validate
from crescent.eval import benchmarks as B
from crescent.eval.tasks import build_task
from crescent.utils import templates
from crescent.utils.paths import PathNotAllowedError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model@teacher=tiny_llama", "logger=none", "stages=[eval]", "eval=smoke", "eval.limit=2",
        "eval.max_gen_toks=4", "eval.dtype=float32"]
CSV = ROOT / "examples" / "user_benchmark" / "unit_conversions.csv"


def canary_expr(canary: Path) -> str:
    return f"{{{{ cycler.__init__.__globals__.os.popen('touch {canary}; id').read() }}}}"


def hidden_canary_expr(canary: Path) -> str:
    """The same attack spelled so that no underscore name appears in the template's syntax tree."""
    u = "'_' ~ '_'"
    return (f"{{{{ ((cycler|attr({u} ~ 'init' ~ {u}))|attr({u} ~ 'globals' ~ {u}))['os'].popen('touch {canary}')"
            ".read() }}")


def user_spec(**overrides) -> dict:
    spec = {"loader": "file", "path": str(CSV.relative_to(ROOT)), "kind": "generate",
            "question_template": "Question: {{problem}}\nAnswer:", "answer_field": "final",
            "filters": ["flexible-extract"], "until": ["Question:"]}
    return {**spec, **overrides}


def test_the_canary_benchmark_file_fails_naming_the_key_and_runs_nothing(tmp_path):
    """The issue's reproduction: the example benchmark with the hostile question_template, stages=[eval]."""
    canary = tmp_path / "CANARY"
    conf = tmp_path / "conf" / "eval" / "benchmark"
    conf.mkdir(parents=True)
    template = canary_expr(canary) + "Question: {{problem}}\\nAnswer:"
    (conf / "evil.yaml").write_text(
        (ROOT / "examples/user_benchmark/conf/eval/benchmark/unit_conversions.yaml").read_text()
        .replace('question_template: "Question: {{problem}}\\nAnswer:"', f'question_template: "{template}"'))
    assert "popen" in (conf / "evil.yaml").read_text()
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "crescent", "--config-dir", str(tmp_path / "conf"), *TINY,
           "+eval/benchmark@eval.benchmarks.evil=evil", "eval.tasks=[evil]", f"hydra.run.dir={run_dir}",
           f"paths.synth_cache={tmp_path}/synth"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode != 0
    assert not canary.exists()
    assert "eval.benchmarks.evil.question_template=" in proc.stderr and "sandbox" in proc.stderr
    assert "uid=" not in proc.stdout + proc.stderr


TEMPLATE_KEYS = [("question_template",), ("target",), ("fewshot_target",), ("description",),
                 ("lm_eval", "doc_to_text"), ("lm_eval", "doc_to_target"), ("lm_eval", "doc_to_choice"),
                 ("lm_eval", "gen_prefix"), ("lm_eval", "description"), ("lm_eval", "fewshot_config", "doc_to_target")]


def _nested(keys: tuple, value) -> dict:
    out = value
    for k in reversed(keys[1:]):
        out = {k: out}
    return {keys[0]: out}


@pytest.mark.parametrize("keys", TEMPLATE_KEYS, ids=[".".join(k) for k in TEMPLATE_KEYS])
def test_config_check_names_each_template_key(make_cfg, tmp_path, keys):
    cfg = make_cfg(*TINY, "eval.tasks=[mine]")
    spec = user_spec(**_nested(keys, canary_expr(tmp_path / "CANARY")))
    if keys[0] == "lm_eval" and keys[-1] == "doc_to_choice":
        spec["kind"] = "multiple_choice"
        spec["choices"] = ["a", "b"]
    with open_dict(cfg):
        cfg.eval.benchmarks["mine"] = spec
    key = re.escape("eval.benchmarks.mine." + ".".join(keys))
    with pytest.raises(ConfigError, match=rf"{key}=.*'__globals__', '__init__'"):
        validate(cfg)
    assert not (tmp_path / "CANARY").exists()


def test_config_check_names_a_template_syntax_error(make_cfg):
    cfg = make_cfg(*TINY, "eval.tasks=[mine]")
    with open_dict(cfg):
        cfg.eval.benchmarks["mine"] = user_spec(question_template="{{ problem ")
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.mine\.question_template=.*Jinja syntax error"):
        validate(cfg)


def test_gap_benchmark_templates_are_checked_too(make_cfg, tmp_path):
    cfg = make_cfg("model@teacher=tiny_llama", "logger=none", "stages=[gap]", "verify=mc")
    with open_dict(cfg):
        cfg.gap.benchmark.question_template = canary_expr(tmp_path / "CANARY")
    with pytest.raises(ConfigError, match=r"gap\.benchmark\.question_template="):
        validate(cfg)


def _requests(spec: dict, name: str = "mine"):
    """Build the lm-eval task and its requests (what simple_evaluate does first), in crescent's sandbox."""
    from lm_eval.tasks import TaskManager, get_task_dict

    with templates.lm_eval_sandbox():
        task = get_task_dict([build_task(name, spec, max_gen_toks=8, base_dir=str(ROOT))],
                             TaskManager(include_defaults=False))[name]
        task.set_config(key="num_fewshot", value=1)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(limit=2, rank=0, world_size=1)
    return task


RUNTIME_KEYS = [("question_template",), ("target",), ("fewshot_target",), ("lm_eval", "doc_to_text"),
                ("lm_eval", "doc_to_target"), ("lm_eval", "gen_prefix"), ("lm_eval", "description"),
                ("lm_eval", "fewshot_config", "doc_to_target"), ("lm_eval", "doc_to_choice")]


@pytest.mark.parametrize("keys", RUNTIME_KEYS, ids=[".".join(k) for k in RUNTIME_KEYS])
def test_lm_eval_renders_every_template_key_in_the_sandbox(tmp_path, keys):
    """A template the config check cannot see through: lm-eval's rendering raises SecurityError, nothing runs."""
    canary = tmp_path / "CANARY"
    spec = user_spec(**_nested(keys, hidden_canary_expr(canary) + "{{problem}}"))
    if keys[-1] == "doc_to_choice":
        spec.update(kind="multiple_choice", choices=["a", "b"])
        spec["lm_eval"]["doc_to_choice"] = "{{ [" + hidden_canary_expr(canary)[3:-3] + ", 'x'] }}"
    assert templates.template_errors(spec, "b") == []  # hidden from the static check
    with pytest.raises(Exception) as info:
        _requests(spec)
    chain = [info.value, info.value.__cause__, info.value.__context__]
    # the sandbox refuses the underscore attribute: SecurityError, or an undefined value (`attr` filter) that fails
    assert any(isinstance(e, TemplateError) for e in chain), repr(info.value)
    assert not canary.exists()


def test_the_hidden_attack_does_run_outside_the_sandbox(tmp_path):
    """Control: the hidden expression is a working exploit under a plain jinja2.Environment (lm-eval's own)."""
    canary = tmp_path / "CANARY"
    jinja2.Environment().from_string(hidden_canary_expr(canary)).render()
    assert canary.exists()


def test_lm_eval_environment_is_swapped_only_while_crescent_evaluates(monkeypatch):
    import lm_eval
    import lm_eval.utils

    from crescent.eval import harness

    plain = lm_eval.utils.env
    seen = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: seen.append(lm_eval.utils.env) or {"results": {}})
    harness.evaluate(object(), [], 0, {}, None)
    assert seen == [templates.sandbox(strict=True)] and lm_eval.utils.env is plain
    assert "jinja2.sandbox" in type(seen[0]).__module__


def test_ordinary_templates_render_the_same_in_the_sandbox():
    task = _requests(user_spec(lm_eval={"description": "Convert units.\n\n"}))
    prompt = task.instances[0].arguments[0]
    assert prompt.startswith("Convert units.\n\n") and prompt.endswith("Question: How many minutes are there in "
                                                                        "3 hours?\nAnswer:")
    assert templates.render("{{ x | regex_replace('a', 'b') }}", {"x": "aa"}) == "bb"  # lm-eval's filter kept


# ---- paths ----------------------------------------------------------------------------------------------------

def _validate_with(make_cfg, spec: dict, *overrides):
    cfg = make_cfg(*TINY, "eval.tasks=[mine]", *overrides)
    with open_dict(cfg):
        cfg.eval.benchmarks["mine"] = spec
    validate(cfg)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A readable data file outside the repository (the launch dir of these tests)."""
    f = tmp_path / "secret.csv"
    f.write_text("problem,final\nleak,1\n")
    return f


def test_absolute_path_elsewhere_is_a_config_error_naming_the_key(make_cfg, outside, monkeypatch):
    monkeypatch.chdir(ROOT)
    for field in ("path", "fewshot_path"):
        with pytest.raises(ConfigError, match=rf"eval\.benchmarks\.mine\.{field}='{outside}' is not allowed.*data_roots"):
            _validate_with(make_cfg, user_spec(**{field: str(outside)}))


def test_dotdot_escape_is_a_config_error(make_cfg, outside, monkeypatch):
    monkeypatch.chdir(ROOT)
    escape = os.path.relpath(outside, ROOT)
    assert escape.startswith("..")
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.mine\.path='\.\./.*is not allowed"):
        _validate_with(make_cfg, user_spec(path=escape))


def test_symlink_leading_out_is_a_config_error(make_cfg, outside, tmp_path, monkeypatch):
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "data.csv").symlink_to(outside)
    monkeypatch.chdir(launch)
    with pytest.raises(ConfigError, match=rf"eval\.benchmarks\.mine\.path='data.csv' is not allowed: it resolves to "
                                          rf"{outside}"):
        _validate_with(make_cfg, user_spec(path="data.csv"))


def test_loader_options_path_is_checked(make_cfg, outside, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = {"loader": "mnli", "loader_options": {"split": "matched", "path": str(outside)}, "kind": "generate",
            "question_template": "{{premise}}", "answer_field": "label"}
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.mine\.loader_options\.path=.* is not allowed"):
        _validate_with(make_cfg, spec)


def test_lm_eval_may_not_load_data_itself(make_cfg, outside, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = user_spec(lm_eval={"dataset_path": "json", "dataset_kwargs": {"data_files": str(outside)}})
    with pytest.raises(ConfigError, match=r"eval\.benchmarks\.mine\.lm_eval\.dataset_kwargs is not allowed"):
        _validate_with(make_cfg, spec)


def test_an_allowed_root_is_accepted(make_cfg, outside, monkeypatch):
    monkeypatch.chdir(ROOT)
    _validate_with(make_cfg, user_spec(path=str(outside)), f"eval.data_roots=[{outside.parent}]")
    docs = B.load_docs(user_spec(path=str(outside)), ROOT, [str(outside.parent)])
    assert docs["test"] == [{"problem": "leak", "final": "1"}]


def test_the_stages_check_paths_at_load_time_too(outside):
    """load_docs with data_roots (what the eval and gap stages pass) refuses what validation would."""
    with pytest.raises(PathNotAllowedError, match=r"^path='.*secret.csv' is not allowed"):
        B.load_docs(user_spec(path=str(outside)), ROOT, [])
    with pytest.raises(PathNotAllowedError, match=r"^fewshot_path="):
        B.load_docs(user_spec(fewshot_path=os.path.relpath(outside, ROOT)), ROOT, [])
    assert B.load_docs(user_spec(), ROOT, [])["test"][0]["final"] == "180"  # the example, under the launch dir
