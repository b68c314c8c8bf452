"""Jinja templates from user files render in Jinja's sandbox, never as code.

Benchmark files (`question_template`, `target`, `fewshot_target`, `choices`, `description`, every string under
`lm_eval:`), prompt templates in configs and the gap stage's prompts are Jinja over a document's fields. They come
from users and strangers, so they render in `jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute or item
whose name starts with an underscore, no method that mutates a list or dict, no call of an unsafe callable.
`{{ cycler.__init__.__globals__.os.popen('id').read() }}` raises `jinja2.sandbox.SecurityError` instead of
running a shell.

Two guards, both here:

- `template_errors(value, key)`: a config-time check (crescent.config.benchmark_errors) that parses every Jinja
  string of a benchmark and rejects syntax errors and underscore attributes / items by name, before a model loads.
- `lm_eval_sandbox()`: lm-eval renders task templates with its module-level `lm_eval.utils.env`, a plain
  `jinja2.Environment`. While crescent's simple_evaluate call runs (crescent.eval.harness.evaluate), that object
  is swapped for the sandbox below (same settings: StrictUndefined, keep_trailing_newline, the regex_replace
  filter) and put back afterwards, so every template lm-eval renders for crescent's tasks — doc_to_text,
  doc_to_target, doc_to_choice, gen_prefix, description, fewshot_config's — is sandboxed whatever its key.
"""
from __future__ import annotations

import contextlib
import re
from functools import lru_cache
from typing import Any, Iterator, Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

__all__ = ["SecurityError", "sandbox", "render", "is_template", "template_errors", "lm_eval_sandbox"]

_MARKERS = ("{{", "{%", "{#")


def regex_replace(string, pattern, repl, count: int = 0):
    """lm-eval's `regex_replace` filter (re.sub), which its task templates may use."""
    return re.sub(pattern, repl, string, count=count)


@lru_cache(maxsize=2)
def sandbox(strict: bool = False) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment (strict: an undefined field raises, as in lm-eval)."""
    env = ImmutableSandboxedEnvironment(keep_trailing_newline=True, undefined=StrictUndefined if strict else Undefined)
    env.filters["regex_replace"] = regex_replace
    return env


@lru_cache(maxsize=256)
def _compiled(source: str, strict: bool):
    return sandbox(strict).from_string(source)


def render(source: str, doc: Mapping[str, Any], strict: bool = False) -> str:
    """`source` rendered over the fields of `doc`, in the sandbox."""
    return _compiled(source, strict).render(**doc)


def is_template(value: Any) -> bool:
    return isinstance(value, str) and any(m in value for m in _MARKERS)


def _unsafe_names(tree: nodes.Node) -> list[str]:
    """Underscore attributes / items a template reads (`x.__init__`, `x['_y']`, `x|attr('__class__')`)."""
    found = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            name = node.args[0].value if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const) \
                else None
        if isinstance(name, str) and name.startswith("_"):
            found.append(name)
    return found


def template_errors(value: Any, key: str) -> list[str]:
    """Config errors for every Jinja string in `value` (a benchmark config, walked through dicts and lists):
    syntax errors, and reads of underscore attributes, which the sandbox refuses at render time anyway."""
    if isinstance(value, Mapping):
        return [e for k, v in value.items() for e in template_errors(v, f"{key}.{k}")]
    if isinstance(value, (list, tuple)):
        return [e for i, v in enumerate(value) for e in template_errors(v, f"{key}[{i}]")]
    if not is_template(value):
        return []
    try:
        tree = sandbox().parse(value)
    except TemplateSyntaxError as err:
        return [f"  {key}={value!r} is invalid: Jinja syntax error ({err.message}, line {err.lineno})"]
    unsafe = _unsafe_names(tree)
    if unsafe:
        return [f"  {key}={value!r} is invalid: it reads {sorted(set(unsafe))}; templates from benchmark files "
                "render in Jinja's sandbox, which allows no attribute or item starting with '_' "
                "(use the document's fields, e.g. {{question}})"]
    return []


@contextlib.contextmanager
def lm_eval_sandbox() -> Iterator[None]:
    """Within this block lm-eval renders every task template (lm_eval.utils.apply_template) in the sandbox."""
    import lm_eval.utils as lm_utils

    saved = lm_utils.env
    lm_utils.env = sandbox(strict=True)
    try:
        yield
    finally:
        lm_utils.env = saved
