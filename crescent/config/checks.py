"""Cross-field config checks (files exist, batch sizes divide, benchmarks' loaders and files, what this machine can
run) and validate(): the group models of schema.py plus these rules, every error at once in one ConfigError.

Errors are lines "  key=value is invalid: expected <allowed>" (or "  key: missing (expected ...)")."""
from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from crescent.config import schema as S
from crescent.config.choices import ALLOWED_PY, EVAL_FILTERS as FILTERS, GEN_METRICS, LOADER_CHOICES, VERIFY_NAMES
from crescent.config.fields import MISSING, Unresolved, errors_of, is_int as _int, is_str as _str
from crescent.utils.targets import is_target_path, user_target

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and what is allowed."""


def _py_refs(value: Any) -> list[str]:
    """Every 'py:module.attr' string in a (nested) value."""
    if isinstance(value, str):
        return [value] if value.startswith("py:") else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for v in items for ref in _py_refs(v)]


def _loader_option_errors(loader: Callable, options: dict, key: str) -> list[str]:
    """loader_options must be keyword arguments of the shipped loader, of their default's type."""
    params = inspect.signature(loader).parameters
    errors = []
    for name, value in options.items():
        p = params.get(name)
        if p is None:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected an option of {loader.__name__} "
                          f"(one of {list(params)})")
        elif p.default not in (p.empty, None) and type(value) is not type(p.default):
            errors.append(f"  {key}.{name}={value!r} is invalid: expected a {type(p.default).__name__}")
        elif (loader.__name__, name) in LOADER_CHOICES and value not in LOADER_CHOICES[(loader.__name__, name)]:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected one of "
                          f"{list(LOADER_CHOICES[(loader.__name__, name)])}")
        elif p.default is None and value is not None and not _str(value):
            errors.append(f"  {key}.{name}={value!r} is invalid: expected null or a file path")
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            errors.append(f"  {key}.{name}={value!r} is invalid: expected an integer >= 0")
    return errors


def benchmark_errors(spec: Any, key: str, data_roots: Any = ()) -> list[str]:
    """One benchmark config (eval.benchmarks.<name>, gap.benchmark): fields, loader, files, answer; Jinja strings
    (sandbox rules) and file paths (under the launch dir or eval.data_roots), see crescent/utils/{templates,paths}.py."""
    from crescent.data.benchmarks import SHIPPED
    from crescent.utils.paths import benchmark_path_errors
    from crescent.utils.templates import template_errors

    if not isinstance(spec, dict):
        return [f"  {key}={spec!r} is invalid: expected a benchmark config"]
    errors = errors_of(S.Benchmark, spec, key) + template_errors(spec, key)
    errors += benchmark_path_errors(spec, key, Path.cwd(), data_roots if isinstance(data_roots, list) else ())
    loader = spec.get("loader")
    if _str(loader) and loader not in (*SHIPPED, "file"):
        errors.append(f"  {key}.loader={loader!r} is invalid: expected one of {sorted(SHIPPED)} or 'file'")
    if loader == "file":
        for field in ("path", "fewshot_path"):
            path = spec.get(field)
            if (field == "path" or path) and not _is_file(path):
                errors.append(f"  {key}.{field}={path!r} is invalid: expected an existing .jsonl/.json/.csv "
                              "file (absolute, or relative to the directory crescent runs from)")
    if _str(loader) and loader in SHIPPED and isinstance(spec.get("loader_options"), dict):
        errors += _loader_option_errors(SHIPPED[loader], spec["loader_options"], f"{key}.loader_options")
    if spec.get("answer_field") is None and spec.get("target") is None:
        errors.append(f"  {key}: needs answer_field (a field name) or target (a template)")
    filters = spec.get("filters")
    if spec.get("kind") == "generate" and isinstance(filters, list):
        bad = [f for f in filters if f not in FILTERS]
        if bad:
            errors.append(f"  {key}.filters={filters!r} is invalid: {bad} unknown; expected a list drawn from "
                          f"{list(FILTERS)}")
        if "custom-regex" in filters and not spec.get("regex"):
            errors.append(f"  {key}.regex: missing (filter custom-regex needs a regex whose first group is the answer)")
    metric = spec.get("metric")
    if spec.get("kind") == "generate" and not spec.get("process_results") and metric is not None:
        bad = [m for m in ([metric] if isinstance(metric, str) else metric if isinstance(metric, list) else [])
               if m not in GEN_METRICS]
        if bad:
            errors.append(f"  {key}.metric={metric!r} is invalid: {bad} unknown; expected "
                          f"{' and/or '.join(GEN_METRICS)}")
    if spec.get("kind") == "multiple_choice" and spec.get("choices") is None:
        errors.append(f"  {key}.choices: missing (a multiple-choice benchmark needs its choices)")
    for field, value in spec.items():
        errors += [f"  {key}.{field}={ref!r} is invalid: expected a py: reference under {list(ALLOWED_PY)}"
                   for ref in _py_refs(value) if not ref[3:].startswith(ALLOWED_PY)]
    return errors


def _user_data_errors(spec: Any, key: str) -> list[str]:
    """A selected benchmark whose data cannot ship (MNLI, DROP) needs the user's file before any model loads."""
    from crescent.data.benchmarks import DATA_DIR, USER_DATA

    if not isinstance(spec, dict) or spec.get("loader") not in ("mnli", "drop"):
        return []
    options = spec.get("loader_options") if isinstance(spec.get("loader_options"), dict) else {}
    name = f"mnli_{options.get('split', 'matched')}" if spec["loader"] == "mnli" else "drop"
    path = options.get("path") or str(DATA_DIR / USER_DATA.get(name, "?"))
    if _str(path) and Path(path).expanduser().is_file():
        return []
    return [f"  {key}.loader_options.path={options.get('path')!r} is invalid: {path} does not exist; this benchmark's "
            "data cannot ship with crescent: put the canonical file there (crescent/data/README.md), set "
            f"{key}.loader_options.path, or leave {key.rsplit('.', 1)[-1]} out of eval.tasks"]


def _eval_errors(cfg: Mapping) -> list[str]:
    """eval.tasks and callback tasks name benchmarks; each benchmark; the fast generator runs on CPU only."""
    benchmarks = get_key(cfg, "eval.benchmarks")
    if not isinstance(benchmarks, dict):
        return []
    errors, every = [], get_key(cfg, "eval.callback.every_n_epochs")
    for key in ("eval.tasks", *(["eval.callback.tasks"] if _int(every) and every > 0 else [])):
        tasks = get_key(cfg, key)
        unknown = [t for t in tasks if isinstance(t, str) and t not in benchmarks] if isinstance(tasks, list) else []
        errors += [f"  {key}={tasks!r} is invalid: {t!r} is not in eval.benchmarks (available: {sorted(benchmarks)})"
                   for t in unknown]
    for name, spec in benchmarks.items():
        errors += benchmark_errors(spec, f"eval.benchmarks.{name}", get_key(cfg, "eval.data_roots"))
    tasks = get_key(cfg, "eval.tasks")
    for name in tasks if isinstance(tasks, list) and tasks else list(benchmarks):
        errors += _user_data_errors(benchmarks.get(name), f"eval.benchmarks.{name}")
    if get_key(cfg, "eval.vllm") is not MISSING or get_key(cfg, "eval.engine") == "vllm":
        errors += _eval_vllm_errors(get_key(cfg, "eval.vllm"))
    generator, dev = get_key(cfg, "eval.generator"), get_key(cfg, "eval.device")
    if generator == "fast" and isinstance(dev, str) and dev != "cpu":
        errors.append(f"  eval.generator='fast' is invalid with eval.device={dev!r}: expected eval.device=cpu "
                      "(or eval.generator=hf|auto)")
    trained, models = get_key(cfg, "eval.trained_path"), get_key(cfg, "eval.models")
    if _str(trained) and isinstance(models, list) and "trained" in models and not _is_dir(trained):
        errors.append(f"  eval.trained_path={trained!r} is invalid: expected an existing folder (an hf_export/)")
    return errors


def _eval_vllm_errors(vllm_cfg: Any) -> list[str]:
    """eval.engine=vllm: eval.vllm.* (the arguments of lm-eval's VLLM model)."""
    if not isinstance(vllm_cfg, Mapping):
        return [f"  eval.vllm={vllm_cfg!r} is invalid: expected a mapping of lm-eval VLLM arguments "
                f"({', '.join(S.EvalVllm.model_fields)})"]
    return errors_of(S.EvalVllm, vllm_cfg, "eval.vllm")


def _questions_errors(cfg: Mapping) -> list[str]:
    """Source-specific question settings: the bait prompt, or a readable dataset, and few-shot exemplars."""
    source, errors = get_key(cfg, "questions.source"), []
    prompt = get_key(cfg, "questions.prompt")
    if source == "bait" and not _str(prompt):
        errors.append(f"  questions.prompt={prompt!r} is invalid: questions.source=bait needs a non-empty bait prompt")
    seeded = isinstance(prompt, str) and "{seed_questions}" in prompt
    dataset = get_key(cfg, "questions.dataset")
    if dataset is MISSING and (source in ("dataset", "seed_augment") or seeded):
        errors.append(f"  questions.dataset: missing (questions.source={source} needs loader, path, question_field)")
    if isinstance(dataset, dict):
        if dataset.get("loader") == "file" and not _is_file(dataset.get("path")):
            errors.append(f"  questions.dataset.path={dataset.get('path')!r} is invalid: expected an existing "
                          ".jsonl/.json/.csv file")
    if seeded and get_key(cfg, "questions.seed_count") is MISSING:
        errors.append("  questions.seed_count: missing ({seed_questions} in questions.prompt needs an integer >= 1)")
    prompts = get_key(cfg, "questions.augment_prompts")
    if source == "seed_augment" and prompts is MISSING:
        errors.append("  questions.augment_prompts: missing (questions.source=seed_augment needs style -> prompt)")
    formats = get_key(cfg, "questions.formats")
    fewshot = [f for f in formats if isinstance(f, str) and f.endswith("_fewshot")] if isinstance(formats, list) else []
    answer_prompt = get_key(cfg, "questions.answer_prompt")
    if isinstance(answer_prompt, str) and "{exemplars}" in answer_prompt:
        fewshot.append("answer_prompt with {exemplars}")
    exemplars = get_key(cfg, "questions.exemplars")
    if fewshot and not (S.exemplars_ok(exemplars) and exemplars):
        errors.append(f"  questions.exemplars={None if exemplars is MISSING else exemplars!r} is invalid: "
                      f"{fewshot} need exemplars with question, cot, answer")
    rounds, stages = get_key(cfg, "rounds"), get_key(cfg, "stages")
    if _int(rounds) and rounds > 1 and not (isinstance(stages, list) and "train" in stages):
        errors.append(f"  rounds={rounds} is invalid without the train stage: each round's export is the next "
                      f"round's model (stages={stages!r})")
    if get_key(cfg, "voting.reflect") is True and get_key(cfg, "voting.reflect_prompt") is MISSING:
        errors.append("  voting.reflect_prompt: missing (voting.reflect=true needs a string with {question} and "
                      "{response})")
    return errors


def _is_file(x: Any) -> bool:
    return _str(x) and Path(x).expanduser().is_file()


def _is_dir(x: Any) -> bool:
    return _str(x) and Path(x).expanduser().is_dir()


def _folder_error(key: str, value: Any) -> str | None:
    """A folder crescent writes into: an existing folder, or a path whose nearest existing parent is a writable
    folder (it is created)."""
    if not _str(value):
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return f"  {key}={value!r} is invalid: expected a folder (or a path where one can be created); it is a file"
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"  {key}={value!r} is invalid: expected a folder; {str(parent)!r} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"  {key}={value!r} is invalid: expected a writable folder; {str(parent)!r} is not writable"
    return None


def _readable_error(key: str, value: str, suffixes: tuple[str, ...], what: str) -> str | None:
    """An existing file (checked before) that crescent cannot open, or of the wrong kind."""
    path = Path(value).expanduser()
    if path.suffix.lower() not in suffixes:
        return f"  {key}={value!r} is invalid: expected {what} (a file ending in {'/'.join(suffixes)})"
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        return f"  {key}={value!r} is invalid: the file cannot be read ({e.strerror or e}); expected {what}"
    return None


def _chat_jsonl_error(key: str, value: str) -> str | None:
    """train.data: a .jsonl whose first row is an object with a `messages` list (the chat format train reads)."""
    error = _readable_error(key, value, (".jsonl",), "a chat `messages` jsonl")
    if error:
        return error
    with Path(value).expanduser().open("rb") as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        row = json.loads(first)
    except ValueError:
        row = None
    if not (isinstance(row, dict) and isinstance(row.get("messages"), list)):
        return (f"  {key}={value!r} is invalid: its first row is not a JSON object with a `messages` list "
                "(expected a chat `messages` jsonl, one {\"messages\": [...]} per line)")
    return None


def _path_errors(cfg: Mapping, run: list[str]) -> list[str]:
    """Path keys checked for existence and type before any model loads (issue 21 item 7)."""
    errors = [e for key in ("paths.cache_dir", "paths.synth_cache", "paths.eval_cache", "paths.output_dir")
              if (e := _folder_error(key, get_key(cfg, key)))]
    data = get_key(cfg, "train.data")
    if "train" in run and _is_file(data):
        errors += [e for e in [_chat_jsonl_error("train.data", data)] if e]
    dataset = get_key(cfg, "questions.dataset")
    if isinstance(dataset, dict) and dataset.get("loader") == "file" and _is_file(dataset.get("path")):
        errors += [e for e in [_readable_error("questions.dataset.path", dataset["path"], (".jsonl", ".json", ".csv"),
                                               "a question dataset (.jsonl/.json/.csv)")] if e]
    return errors


def _model_errors(cfg: Mapping, who: str) -> list[str]:
    """A hub model needs an 'org/name' id or an existing folder; embedded and tiny ones their GGUF file."""
    model = get_key(cfg, who)
    if not isinstance(model, dict):
        return []
    source, hf_id, local = model.get("source"), model.get("hf_id"), model.get("local_path")
    errors = []
    hub_id_ok = isinstance(hf_id, str) and HUB_ID.fullmatch(hf_id) is not None
    if source == "hub" and not (hub_id_ok or _is_dir(hf_id) or _is_dir(local)):
        errors.append(f"  {who}.hf_id={hf_id!r} is invalid: expected a hub id 'org/name' or an existing folder "
                      f"(or {who}.local_path=an existing folder; it is {local!r})")
    package, file = model.get("gguf_package"), model.get("gguf_file")
    if source in ("embedded", "tiny") and _str(package) and _str(file):
        from crescent.models.embedded import find_gguf

        try:
            find_gguf(package, file)
        except FileNotFoundError as e:
            errors.append(f"  {who}.gguf_file={file!r} is invalid: {e}")
    sizes = [model.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads")]
    if source == "tiny" and all(_int(s) and s >= 1 for s in sizes) and (sizes[0] % sizes[1] or sizes[1] % sizes[2]):
        errors.append(f"  {who}.num_attention_heads={sizes[1]!r} is invalid: expected a divisor of hidden_size "
                      f"({sizes[0]}) and a multiple of num_key_value_heads ({sizes[2]})")
    return errors


def _train_errors(cfg: Mapping) -> list[str]:
    errors = []
    data = get_key(cfg, "train.data")
    if _str(data) and not Path(data).is_file():
        errors.append(f"  train.data={data!r} is invalid: no such file (expected a chat `messages` jsonl)")
    devices, nodes = get_key(cfg, "trainer.devices"), get_key(cfg, "trainer.num_nodes")
    gbs, mbs = get_key(cfg, "train.global_batch_size"), get_key(cfg, "train.micro_batch_size")
    if all(_int(v) and v >= 1 for v in (devices, nodes, gbs, mbs)) and gbs % (devices * nodes):
        errors.append(f"  train.global_batch_size={gbs} is invalid: expected a multiple of "
                      f"trainer.devices x trainer.num_nodes = {devices * nodes}")
    elif all(_int(v) and v >= 1 for v in (devices, nodes, gbs, mbs)) and (gbs // (devices * nodes)) % mbs:
        # the README: accumulation = global / (micro x devices x nodes), and a size that does not divide fails
        errors.append(f"  train.micro_batch_size={mbs} is invalid: expected a divisor of the "
                      f"{gbs // (devices * nodes)} sequences per process (train.global_batch_size={gbs} / "
                      f"trainer.devices x trainer.num_nodes = {devices * nodes})")
    lora = get_key(cfg, "train.lora")
    if lora is None and get_key(cfg, "train.name") == "lora":
        errors.append("  train.lora=None is invalid with train.name='lora': expected a LoRA mapping (use train=lora)")
    strategy, ds = get_key(cfg, "trainer.strategy"), get_key(cfg, "trainer.deepspeed")
    if strategy == "deepspeed" and get_key(cfg, "trainer.accelerator") == "cpu":
        errors.append("  trainer.strategy='deepspeed' is invalid with trainer.accelerator='cpu': "
                      "Lightning's DeepSpeed strategy needs CUDA GPUs (use trainer=cpu here)")
    if strategy == "deepspeed" and ds is None:
        errors.append("  trainer.deepspeed=None is invalid with trainer.strategy='deepspeed': expected a DeepSpeed "
                      "mapping (trainer=deepspeed_stage_2, deepspeed_stage_3 or deepspeed_stage_3_offload)")
    ds_errors = errors_of(S.DeepSpeed, ds, "trainer.deepspeed") if isinstance(ds, dict) else []
    if isinstance(ds, dict) and not ds_errors:
        stage, optimizer = ds["stage"], get_key(cfg, "train.optimizer.name")
        if ds["offload_parameters"] and stage != 3:
            errors.append(f"  trainer.deepspeed.offload_parameters=True is invalid with trainer.deepspeed.stage="
                          f"{stage}: expected stage 3")
        if ds["offload_optimizer"] and stage == 0:
            errors.append("  trainer.deepspeed.offload_optimizer=True is invalid with trainer.deepspeed.stage=0: "
                          "expected stage >= 1")
        if ds["offload_optimizer"] and optimizer != "adamw":
            errors.append(f"  train.optimizer.name={optimizer!r} is invalid with trainer.deepspeed.offload_optimizer"
                          "=true: expected 'adamw' (DeepSpeedCPUAdam)")
    return errors


def get_key(cfg: Mapping, key: str) -> Any:
    """The value at a dotted key of a config or plain dict (containers as plain data), or MISSING."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, Container) else node


def _plain(node: Any, keys: Any = None) -> Any:
    """A container as plain data, resolved; a value that fails to resolve becomes Unresolved (errors_of reports it)."""
    if not isinstance(node, Container):
        return node
    if keys is None:
        try:
            return OmegaConf.to_container(node, resolve=True)
        except InterpolationResolutionError:
            keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    out = {}
    for k in keys:
        try:
            out[k] = _plain(node[k])
        except InterpolationResolutionError as e:
            out[k] = Unresolved(str(OmegaConf.to_container(node, resolve=False)[k]), str(e).splitlines()[0])
    return list(out.values()) if isinstance(node, ListConfig) else out


def plain_config(cfg: Mapping) -> dict:
    """The run config as plain data, without Hydra's own `hydra` node."""
    keys = [k for k in cfg if k != "hydra"]
    return _plain(cfg, keys) if isinstance(cfg, DictConfig) else {k: cfg[k] for k in keys}


def _cuda_device_count() -> int:
    """Visible CUDA devices (imports torch: called only for configs that ask for GPUs)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def hardware_errors(cfg: Mapping, cuda_devices: Callable[[], int] | None = None,
                    importable: Callable[[str], bool] | None = None) -> list[str]:
    """What this machine cannot run of the stages in `cfg`: a GPU trainer, DeepSpeed or FlashAttention without
    CUDA, more trainer.devices than visible GPUs, backend=vllm without vllm (or without CUDA), eval on cuda
    without CUDA. Torch is imported (for the device count) only when the config asks for CUDA."""
    cuda_devices, importable = cuda_devices or _cuda_device_count, importable or _importable  # looked up per call
    cfg = plain_config(cfg)
    stages = get_key(cfg, "stages")
    run = set(stages) if isinstance(stages, list) and all(isinstance(x, str) for x in stages) else set()
    count: list[int] = []

    def gpus() -> int:
        if not count:
            count.append(cuda_devices())
        return count[0]

    errors = []
    if "train" in run:
        accelerator, strategy = get_key(cfg, "trainer.accelerator"), get_key(cfg, "trainer.strategy")
        devices = get_key(cfg, "trainer.devices")
        if accelerator in ("gpu", "cuda") and gpus() == 0:
            errors.append(f"  trainer.accelerator={accelerator!r} is invalid on this machine: no CUDA GPU is visible "
                          "(use trainer=cpu, or run on a GPU node)")
        elif strategy == "deepspeed" and gpus() == 0:
            errors.append("  trainer.strategy='deepspeed' is invalid on this machine: DeepSpeed training needs CUDA "
                          "GPUs and none is visible (use trainer=cpu, or run on a GPU node)")
        elif accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus() > 0):
            wanted = len(devices) if isinstance(devices, list) else devices
            if isinstance(devices, list) and any(not _int(d) or d >= gpus() for d in devices):
                errors.append(f"  trainer.devices={devices!r} is invalid on this machine: expected GPU indices below "
                              f"the {gpus()} visible")
            elif _int(wanted) and wanted > gpus():
                errors.append(f"  trainer.devices={wanted!r} is invalid on this machine: only {gpus()} CUDA GPU(s) "
                              f"visible (expected 1..{gpus()}, -1 or 'auto'; CUDA_VISIBLE_DEVICES limits them)")
        attn = get_key(cfg, "train.attn_implementation")
        if attn == "flash_attention_2" and not importable("flash_attn"):
            errors.append("  train.attn_implementation='flash_attention_2' is invalid here: the flash-attn package "
                          "is not installed (pip install flash-attn --no-build-isolation; see requirements-gpu.txt) "
                          "- or use 'sdpa'")
        elif attn == "flash_attention_2" and gpus() == 0:
            errors.append("  train.attn_implementation='flash_attention_2' is invalid on this machine: FlashAttention "
                          "needs a CUDA GPU (use 'sdpa')")
    if run & {"generate", "gap"} and get_key(cfg, "backend.name") == "vllm":
        if not importable("vllm"):
            errors.append("  backend.name='vllm' is invalid here: vllm is not installed (install the GPU lock: pip "
                          "install -r requirements-gpu.txt; or use backend=hf / backend=fast)")
        elif gpus() == 0:
            errors.append("  backend.name='vllm' is invalid on this machine: vLLM needs a CUDA GPU and none is "
                          "visible (use backend=hf or backend=fast)")
        else:
            tp = get_key(cfg, "backend.tensor_parallel_size")
            if _int(tp) and tp > gpus():
                errors.append(f"  backend.tensor_parallel_size={tp} is invalid on this machine: only {gpus()} CUDA "
                              "GPU(s) visible")
    for key in (("eval.device",) if "eval" in run else ()) + \
               (("backend.device",) if run & {"generate", "gap"} and get_key(cfg, "backend.name") == "hf" else ()):
        dev = get_key(cfg, key)
        if isinstance(dev, str) and dev.startswith("cuda") and gpus() == 0:
            errors.append(f"  {key}={dev!r} is invalid on this machine: no CUDA GPU is visible (use 'cpu')")
    return errors


def check_hardware(cfg: Mapping, **kwargs) -> None:
    """Raise ConfigError when this machine cannot run the config (hardware_errors)."""
    errors = hardware_errors(cfg, **kwargs)
    if errors:
        raise ConfigError("config cannot run on this machine:\n" + "\n".join(errors))


def verify_errors(vcfg: Any, prefix: str = "verify", member: bool = False) -> list[str]:
    """Errors of one verify config (an all_of's members are checked as `verify.verifiers.<name>`)."""
    vcfg = _plain(vcfg)
    if vcfg is None:
        return []
    if not isinstance(vcfg, dict):
        return [f"  {prefix}={vcfg!r} is invalid: expected a verify config (verify={'|'.join(VERIFY_NAMES)})"]
    errors = _target_errors(vcfg, prefix)
    if errors or user_target(vcfg):  # a verifier of the user's own (its _target_ outside crescent) checks its own
        return errors  # settings
    name = vcfg.get("name")
    allowed = tuple(n for n in VERIFY_NAMES if n not in ("none", "all_of")) if member else VERIFY_NAMES
    if name not in allowed:
        return [f"  {prefix}.name={name!r} is invalid: expected one of {list(allowed)}"]
    if name == "none":
        return errors_of(S.NoVerify, vcfg, prefix)
    if name == "all_of":
        errors = errors_of(S.AllOfVerify, vcfg, prefix)
        if errors:
            return errors
        members = vcfg.get("verifiers")
        if not isinstance(members, dict) or not members:
            return [f"  {prefix}.verifiers={members!r} is invalid: expected a non-empty mapping of verify configs"]
        return [e for m, c in members.items() for e in verify_errors(c, f"{prefix}.verifiers.{m}", member=True)]
    errors = errors_of(S.JUDGES[name], vcfg, prefix)
    if name == "cot_score" and not errors and not vcfg["score_min"] < vcfg["score_max"]:
        errors.append(f"  {prefix}.score_max={vcfg['score_max']!r} is invalid: expected a number > score_min "
                      f"({vcfg['score_min']!r})")
    return errors


def gap_errors(cfg: Any) -> list[str]:
    """Errors of cfg.gap (the whole run config is passed); gap.benchmark is checked as an eval benchmark."""
    gap = _plain(get_key(cfg, "gap"))
    if gap is MISSING or not isinstance(gap, dict):
        return ["  gap: missing (add `+gap=default`, or `- gap: default` to the defaults list)"]
    bench = gap.get("benchmark")
    errors = errors_of(S.Gap, gap, "gap")
    errors += benchmark_errors(bench, "gap.benchmark", get_key(cfg, "eval.data_roots"))
    if isinstance(bench, dict) and bench.get("kind") == "multiple_choice":
        errors.append("  gap.benchmark.kind='multiple_choice' is invalid: expected 'generate' (answers are extracted "
                      "numbers)")
    return errors


def gap_stage_errors(cfg: Any) -> list[str]:
    """Everything stages=[gap] needs: gap_errors plus the verify group's errors (verify absent = none)."""
    verify = get_key(cfg, "verify")
    return gap_errors(cfg) + verify_errors(None if verify is MISSING else verify)


def _target_errors(group: Any, key: str) -> list[str]:
    """A group built by hydra.utils.instantiate (backend, logger, trainer, verify) names a dotted path in `_target_`
    (not imported here: that may need torch)."""
    target = group.get("_target_") if isinstance(group, dict) else None
    if target is None or is_target_path(target):
        return []
    return [f"  {key}._target_={target!r} is invalid: expected a dotted path module.Name of the class or function "
            "that builds it"]


def _decontam_errors(cfg: Mapping) -> list[str]:
    """decontam=none (policy off) needs nothing else; report / drop name every setting of the decontam step."""
    dc = get_key(cfg, "decontam")
    if dc is MISSING or dc is None:
        return []
    model = S.DecontamOn if isinstance(dc, dict) and dc.get("policy") in ("report", "drop") else S.Decontam
    return errors_of(model, dc, "decontam")


def config_errors(cfg: Mapping) -> list[str]:
    """Every error of the config alone (no hardware check), as lines."""
    cfg = plain_config(cfg)
    stages = get_key(cfg, "stages")
    run = [s for s in stages if isinstance(s, str)] if isinstance(stages, list) else []
    errors = errors_of(S.Run, cfg)
    if user_target(cfg.get("backend")):  # a backend of the user's own (_target_ outside crescent): its own names
        errors = [e for e in errors if not re.match(r"  backend[.=:]", e)]
    errors += [e for group in ("backend", "logger", "trainer") for e in _target_errors(cfg.get(group), group)]
    errors += _decontam_errors(cfg)
    if "train" in run:
        errors += errors_of(S.TrainStage, {k: cfg.get(k, None) for k in ("train", "trainer")})
    if "eval" in run:
        errors += errors_of(S.EvalStage, {"eval": cfg.get("eval", None)})
    errors += _model_errors(cfg, "teacher") + _model_errors(cfg, "student") + _questions_errors(cfg)
    errors += _path_errors(cfg, run)
    errors += _train_errors(cfg) if "train" in run else []
    errors += _eval_errors(cfg) if "eval" in run else []
    errors += verify_errors(cfg["verify"]) if "verify" in cfg else []
    errors += gap_errors(cfg) if "gap" in run else []
    return list(dict.fromkeys(errors))  # the same line from two checks once


def validate(cfg: Mapping, hardware: bool = False) -> None:
    """Raise ConfigError listing every invalid key (key, bad value, allowed values).

    hardware=True (what a run does, before any model loads) also checks that this machine can run it
    (hardware_errors: CUDA, GPU count, vllm / flash-attn installed); False checks the config alone, so a
    GPU preset can be composed and checked on a CPU machine."""
    errors = config_errors(cfg)
    if hardware and not errors:
        errors += hardware_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(errors))
