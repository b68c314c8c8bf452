"""docs/config.md, generated from the config tree: every group, every option, every key with its default and the
comment the YAML gives it.

    python -m crescent.docs           # rewrite docs/config.md
    python -m crescent.docs --check   # exit 1 if docs/config.md is not what the config tree gives (a test runs this)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from crescent.cli import conf_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
# one line per group: what it sets (the options' own header comments say the rest)
GROUP_NOTES = {
    "model": "a model preset; placed twice: `model@teacher` writes and answers the questions, `model@student` is "
             "trained (follows the teacher unless given: distillation when different); there is no plain `model=`",
    "backend": "the generation engine",
    "questions": "where questions come from (bait prompt, a dataset, seed augmentation), the answer prompt, "
                 "cleaning and the call budget",
    "sampling": "decoding per stage (`question`, `rewrite`, `answer`) and `num_questions`",
    "dedup": "embedding dedup with rejection sampling (rewrites, re-checked)",
    "voting": "answers per question (`k`), the vote, ties, agreement filter, reflection",
    "verify": "self-verification of sampled answers (Mind the Gap), applied before the vote and measured by "
              "`stages=[gap]`",
    "gap": "the generation-verification gap stage",
    "train": "data, optimiser, schedule, batch sizes, packing, distillation, LoRA, resume",
    "trainer": "the Lightning Trainer: accelerator, devices, nodes, precision, strategy (DeepSpeed ZeRO fields)",
    "eval": "the benchmark suite and how it is scored (lm-evaluation-harness)",
    "eval/benchmark": "one benchmark each, added to a suite with `+eval/benchmark@eval.benchmarks.NAME=NAME` "
                      "(the suites list theirs in their `defaults`)",
    "logger": "experiment tracking",
    "paths": "where outputs and caches go",
    "experiment": "presets (`# @package _global_`): method, model, scale",
    "hparams_search": "sweep grids (`hydra.sweeper.params`); they set `hydra.mode=MULTIRUN`",
    "debug": "tiny model, tiny budgets",
    "hydra": "run and sweep directories, the --help text",
    "hydra/launcher": "where `-m` jobs run (joblib locally, SLURM via submitit)",
}
# groups whose options land somewhere else than the group's own path
PLACEMENT = {"eval/benchmark": "eval.benchmarks.NAME"}
MAX_VALUE = 70


def groups(conf: Path) -> list[str]:
    """Every folder of the tree that holds options (conf/*/ and nested groups such as eval/benchmark)."""
    return sorted(str(d.relative_to(conf)) for d in conf.rglob("*") if d.is_dir() and any(d.glob("*.yaml")))


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a YAML mapping; lists and empty mappings are leaves."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path, value


def option_keys(path: Path) -> list[tuple[str, Any]]:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    return list(leaves({k: v for k, v in raw.items() if k != "defaults"}))


def _strip_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one YAML line; a '#' inside quotes is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def comments(path: Path) -> tuple[str, dict[str, str]]:
    """The file's header comment and {dotted key: its comment} (the comment lines above a key and the one after
    it on its line), read from the block-style YAML of conf/."""
    header: list[str] = []
    found: dict[str, str] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []
    first_key = True
    block_indent = None  # inside a block scalar (key: |) or a block list: skip its lines
    for line in path.read_text().splitlines():
        code, comment = _strip_comment(line)
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not code.strip() or indent > block_indent):
            continue
        block_indent = None
        if not code.strip():
            if comment and not comment.startswith("@package"):
                # the header keeps its lines (commands are indented: `#   crescent ...`)
                (header if first_key else pending).append(line.lstrip()[1:].rstrip() if first_key else comment)
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w.\-]*)\s*:(.*)$", code)
        if not match or code.lstrip().startswith("-"):
            pending = []
            if code.lstrip().startswith("-"):
                block_indent = indent - 1 if indent else -1
            continue
        first_key = False
        key, rest = match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        text = " ".join(pending + ([comment] if comment else []))
        if text:
            found[dotted] = text
        pending = []
        if rest in ("", "|", ">", "|-", ">-"):
            stack.append((indent, key))
            if rest:
                block_indent = indent
    return _header(header), found


def _header(lines: list[str]) -> str:
    """Comment lines as markdown: prose joined into a paragraph, indented lines (commands) as a code block."""
    out, prose, code = [], [], []
    for line in lines + [""]:
        if line.startswith("  ") and line.strip():
            if prose:
                out.append(" ".join(prose))
                prose = []
            code.append(line.strip())
            continue
        if code:
            out.append("```bash\n" + "\n".join(code) + "\n```")
            code = []
        if line.strip():
            prose.append(line.strip())
    if prose:
        out.append(" ".join(prose))
    return "\n\n".join(out)


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _defaults(conf: Path) -> dict[str, tuple[str, str]]:
    """{group: (how it is selected, default option)} from config.yaml's defaults list."""
    out: dict[str, tuple[str, str]] = {}
    for entry in OmegaConf.to_container(OmegaConf.load(conf / "config.yaml"))["defaults"]:
        if isinstance(entry, dict):
            ((key, option),) = entry.items()
            group = key.split("@")[0]
            name, shown = out.get(group, ("", ""))
            out[group] = (f"{name}, `{key}=NAME`" if name else f"`{key}=NAME`",
                          f"{shown}, {option}" if shown else ("–" if option is None else str(option)))
    return out


def render(conf: Path | None = None) -> str:
    conf = Path(conf or conf_dir())
    selected = _defaults(conf)
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m crescent.docs` from conf/: do not edit; tests/test_readme.py checks it -->",
        "",
        "Every group of `conf/`, every option, and every key with its default and the comment its YAML file gives "
        "it. Select an option with `GROUP=OPTION` (`model@teacher=NAME` for models), set a key with `KEY=VALUE`; "
        "`crescent --cfg job` (with your overrides) prints the composed config, `crescent --help` the groups. Invalid values "
        "fail before anything loads, naming the key, the value and what is allowed. `null` in a default means "
        "\"not set\" (the comment says what happens then); `${...}` is an interpolation.",
        "",
        "| group | selected with | default | options |",
        "|---|---|---|---|",
    ]
    for group in groups(conf):
        how, default = selected.get(group, (f"`{group}=NAME`", "–"))
        if group == "eval/benchmark":
            how = "`+eval/benchmark@eval.benchmarks.NAME=NAME`"
        options = ", ".join(f"`{p.stem}`" for p in sorted((conf / group).glob("*.yaml")))
        lines.append(f"| [`{group}`](#{group.replace('/', '')}) | {how} | {default or '–'} | {options} |")
    header, keys = comments(conf / "config.yaml")
    lines += ["", "## Top level (`conf/config.yaml`)", "", header, "", "| key | default | |", "|---|---|---|"]
    lines += [f"| `{k}` | `{_value(v)}` | {_cell(keys.get(k, ''))} |" for k, v in option_keys(conf / "config.yaml")]
    for group in groups(conf):
        files = sorted((conf / group).glob("*.yaml"))
        package = PLACEMENT.get(group)
        if package is None:
            globals_ = all("@package _global_" in f.read_text() for f in files)
            package = "the top level (`# @package _global_`)" if globals_ else None
        if package is None:
            homes = [k.split("@")[1] for k in re.findall(r"`([\w/]+@\w+)=NAME`", selected.get(group, ("",))[0])]
            package = " / ".join(f"`{h}.*`" for h in homes) or f"`{group.replace('/', '.')}.*`"
        elif not package.startswith("the"):
            package = f"`{package}.*`"
        note = GROUP_NOTES.get(group, "")
        lines += ["", f"## {group}", "", (f"{note[:1].upper()}{note[1:]}. " if note else "") + f"Keys go to {package}."]
        for path in files:
            header, keys = comments(path)
            lines += ["", f"### {group}: `{path.stem}`", ""]
            if header:
                lines += [header, ""]
            rows = option_keys(path)
            if not rows:
                lines.append("(no keys of its own: see its `defaults`)")
                continue
            lines += ["| key | default | |", "|---|---|---|"]
            lines += [f"| `{k}` | `{_value(v)}` | {_cell(keys.get(k, ''))} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is out of date")
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run `python -m crescent.docs`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
