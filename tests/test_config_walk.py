"""The config walk (issue 8): every leaf of every group option rejects a bad value, naming the key, the value and
what is allowed; validate() is fast and loads no model. Named messages: test_config.py."""
import fnmatch
import json
import subprocess
import sys
import time

from omegaconf import OmegaConf

from helpers import CONF, ROOT, compose_cfg
from crescent.config import ConfigError, validate

ALL_STAGES = "stages=[generate,train,eval,gap]"  # every stage, so every conditional rule table is active
# group dir -> the override that picks its option
GROUPS = {"backend": "backend", "dedup": "dedup", "decontam": "decontam", "eval": "eval", "gap": "gap", "logger": "logger",
          "model": "model@teacher", "paths": "paths", "questions": "questions", "sampling": "sampling",
          "train": "train", "trainer": "trainer", "verify": "verify", "voting": "voting"}
NOT_SELECTABLE = {"eval/common"}  # the eval presets' shared base: it has no benchmarks of its own
# Probes a leaf rightly accepts (fnmatch pattern -> probes, None = all), each with its reason. Keep it short.
ACCEPTS = {
    "eval.benchmarks.*.lm_eval.*": None,  # extra lm-eval task keys, passed through to lm-eval untyped
    "eval.benchmarks.*.target": {12345, "not-a-number"},  # a Jinja template or an integer choice index
    "eval.vllm.batch_size": {12345},  # 'auto' or an integer
}
NEGATIVE_ONE_OK = {"train.max_steps", "trainer.devices"}  # -1 means "use epochs" / "all devices": probe -2
FRACTIONS = {"threshold", "quantile", "top_p", "min_agreement", "alpha", "warmup_ratio", "min_lr_ratio",
             "val_fraction", "gpu_memory_utilization", "dropout"}  # float leaves that must also reject 1.5


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if f"{group}/{p.stem}" not in NOT_SELECTABLE)


def compositions():
    """Option i of every group together (the model group also as student, shifted by one), then debug=default:
    every option of every group is composed at least once."""
    opts = {g: options(g) for g in GROUPS}
    for i in range(max(map(len, opts.values()))):
        picks = [f"{GROUPS[g]}={o[i % len(o)]}" for g, o in opts.items()]
        yield [*picks, f"model@student={opts['model'][(i + 1) % len(opts['model'])]}"]
    yield ["debug=default"]


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of plain config data: scalars, lists and empty mappings."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def probes(key, value):
    """Bad values chosen by the leaf's type."""
    if value is None:
        return [{"bad": 1}]
    if isinstance(value, bool):
        return ["maybe"]
    if isinstance(value, int):
        return ["not-a-number", -2 if key in NEGATIVE_ONE_OK else -1]
    if isinstance(value, float):
        return ["x", -0.5, *([1.5] if key.rsplit(".", 1)[-1] in FRACTIONS else [])]
    if isinstance(value, str):
        return [12345, [12345]]
    if isinstance(value, list):
        numeric = value and all(isinstance(v, (int, float)) for v in value)
        return [{"bad": 1}, ["x"] if numeric else [12345]]
    return [12345]  # an empty mapping


def accepted(key, bad):
    return any(fnmatch.fnmatchcase(key, pat) and (ok is None or (not isinstance(bad, (dict, list)) and bad in ok))
               for pat, ok in ACCEPTS.items())


def rejected(cfg, key, bad):
    """None when validate rejects `bad` at `key` with a line naming the key, the value and what is allowed."""
    try:
        validate(cfg)
    except ConfigError as e:
        lines = str(e).splitlines()
        if any(key in line and repr(bad) in line and ("expected" in line or "allowed" in line) for line in lines):
            return None
        return f"{key}={bad!r}: no line names key, value and allowed values:\n{e}"
    except Exception as e:  # noqa: BLE001 - a crash is a failure too
        return f"{key}={bad!r}: crashed with {type(e).__name__}: {e}"
    return f"{key}={bad!r}: accepted"


def walk(cfg, seen):
    """Set each leaf in turn to each probe (then restore it); returns (cases, failures). The composed config has
    no `hydra` node (compose_cfg leaves it out)."""
    data, raw = OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False)
    cases, failures = 0, []
    for key, value in leaves(data):
        top = key.split(".")[0]
        owner = data[top].get("name", top) if isinstance(data[top], dict) else ""
        if (key, owner, repr(value)) in seen:
            continue
        seen.add((key, owner, repr(value)))
        original = raw
        for part in key.split("."):
            original = original[part]
        for bad in probes(key, value):
            if accepted(key, bad):
                continue
            OmegaConf.update(cfg, key, bad, merge=False)
            try:
                failure = rejected(cfg, key, bad)
            finally:
                OmegaConf.update(cfg, key, original, merge=False)
            cases += 1
            failures += [failure] if failure else []
    return cases, failures


def test_every_leaf_of_every_group_option_rejects_bad_values(tmp_path, capsys):
    seen, cases, failures, benchmarks = set(), 0, [], set()
    runs = list(compositions())
    for overrides in runs:
        cfg = compose_cfg([*overrides, ALL_STAGES], tmp_path)
        validate(cfg)  # the option itself is valid
        benchmarks |= set(cfg.eval.benchmarks)
        n, bad = walk(cfg, seen)
        cases, failures = cases + n, failures + bad
    extra = sorted(set(options("eval/benchmark")) - benchmarks)  # benchmarks no eval preset includes
    if extra:
        shipped = [b for b in extra if not b.startswith("mnli")]  # MNLI needs the user's file to be selected
        runs.append(["eval=smoke", *(f"+eval/benchmark@eval.benchmarks.{b}={b}" for b in extra),
                     f"eval.tasks=[{','.join(shipped)}]"])
        cfg = compose_cfg([*runs[-1], ALL_STAGES], tmp_path)
        validate(cfg)
        n, bad = walk(cfg, seen)
        cases, failures = cases + n, failures + bad
    with capsys.disabled():
        print(f"\nconfig schema walker: {cases - len(failures)} of {cases} invalid-config cases rejected "
              f"({len(seen)} leaves, {len(runs)} compositions)")
    assert not failures, f"{len(failures)} of {cases} cases:\n" + "\n".join(failures[:20])
    assert cases > 300


def test_validate_is_fast(tmp_path):
    cfg = compose_cfg([ALL_STAGES, "eval=all", "verify=all_of"], tmp_path)
    validate(cfg)  # the first call imports the checks' modules
    t0 = time.perf_counter()
    validate(cfg)
    assert time.perf_counter() - t0 < 0.5


def test_validate_loads_no_model_or_heavy_library():
    code = f"""
import json, sys, time
from hydra import compose, initialize_config_dir
from crescent.config import validate
with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
    cfg = compose(config_name="config", overrides=[{ALL_STAGES!r}, "eval=all", "paths.output_dir=/tmp/x"])
t0 = time.perf_counter()
validate(cfg)
heavy = [m for m in ("torch", "transformers", "lm_eval", "datasets", "vllm") if m in sys.modules]
print(json.dumps({{"s": time.perf_counter() - t0, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["s"] < 0.5, result


UNTYPED = ("eval.benchmarks.*.lm_eval", "gap.benchmark.lm_eval")  # extra lm-eval task keys, passed through


def mappings(node, prefix=""):
    """The dotted key of every mapping in plain config data ('' for the root)."""
    yield prefix.rstrip(".")
    for k, v in node.items():
        if isinstance(v, dict):
            yield from mappings(v, f"{prefix}{k}.")


def test_every_mapping_rejects_an_unknown_key(tmp_path):
    """A `+group.key=...` typo anywhere (issue 21 item 7): each mapping of a composition with every stage rejects a
    key it does not know, naming it."""
    cfg = compose_cfg(["debug=default", ALL_STAGES, "verify=all_of"], tmp_path)
    validate(cfg)
    failures, cases = [], 0
    for parent in mappings(OmegaConf.to_container(cfg, resolve=False)):
        if any(fnmatch.fnmatchcase(parent, pat) for pat in UNTYPED):
            continue
        key = f"{parent}.zz_unknown" if parent else "zz_unknown"
        probe = cfg.copy()
        OmegaConf.update(probe, key, 7, force_add=True)
        cases += 1
        failure = rejected(probe, key, 7)
        failures += [failure] if failure else []
    assert not failures, "\n".join(failures[:10])
    assert cases > 30
