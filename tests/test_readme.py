"""The README is a front door that cannot go stale: its first screen fits 60 lines, every `crescent ...` command in
the README and docs/ composes (as `crescent ... --cfg job` would), its links resolve, and docs/config.md is what
`python -m crescent.docs` generates from conf/ (every group, every option, every key)."""
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from crescent import docs
from helpers import CONF, ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…|\bPATH\b|\bNAME\b|ENTITY")
FLAGS = {"-m", "--multirun", "--cfg", "job", "--help", "-h", "--resolve"}


def _code(text: str) -> list[str]:
    """Lines of fenced code blocks and inline code spans, backslash continuations joined."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    return [*lines, *spans]


def commands() -> list[tuple[str, str]]:
    """(page, command line) for every `crescent` invocation (also after torchrun/srun/python -m)."""
    found = []
    for page in PAGES:
        for line in _code(page.read_text()):
            line = re.split(r"\s+\((?=[^)]*\s)", line.split("  #", 1)[0])[0].strip()  # drop "(about 4 min)"
            if line.startswith("$") or PLACEHOLDER.search(line):
                continue  # shown with its output, or with a placeholder to fill in
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            if "crescent" in words:
                found.append((page.name, " ".join(words[words.index("crescent"):])))
    return found


def jobs(command: str) -> tuple[list[str], list[list[str]]]:
    """(extra config dirs, the override list of every job) of one command line; a sweep gives one job per point."""
    words, config_dirs, overrides = shlex.split(command)[1:], [], []
    while words:
        word = words.pop(0)
        if word in ("--config-dir", "-cd"):
            config_dirs.append(str(ROOT / words.pop(0)))
        elif word not in FLAGS:
            overrides.append(word)
    parsed = OverridesParser.create().parse_overrides(overrides)
    if not any(o.is_sweep_override() for o in parsed):
        return config_dirs, [overrides]
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return config_dirs, [list(job) for job in batch]


COMMANDS = commands()


def test_the_pages_have_commands_to_check():
    pages = {page for page, _ in COMMANDS}
    assert {"README.md", "usage.md", "sweeps.md", "scale.md", "evaluation.md", "benchmarks.md"} <= pages, pages
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:70]}" for p, c in COMMANDS])
def test_every_command_composes(page, command):
    config_dirs, job_list = jobs(command)
    search = [f"hydra.searchpath=[{','.join('file://' + d for d in config_dirs)}]"] if config_dirs else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in job_list:
            cfg = compose(config_name="config", overrides=[*overrides, *search])
            assert cfg.stages and cfg.teacher.name, (page, command, overrides)


def test_jobs_expand_sweeps_and_keep_plain_commands_whole():
    assert jobs("crescent -m experiment=smoke seed=0,1,2 voting.k=1,3")[1][-1] == [
        "experiment=smoke", "seed=2", "voting.k=3"]
    assert len(jobs("crescent -m experiment=smoke seed=0,1,2 voting.k=1,3")[1]) == 6
    assert jobs("crescent --config-dir examples/x stages=[eval] --cfg job") == (
        [str(ROOT / "examples/x")], [["stages=[eval]"]])


def test_a_command_that_does_not_compose_fails():
    with pytest.raises(Exception, match="no_such_option"):
        test_every_command_composes("README.md", "crescent backend=no_such_option")


def test_readme_first_screen_fits_60_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    after_map = next(i for i, line in enumerate(lines) if line.startswith("| folder |"))
    end = next((i for i in range(after_map, len(lines)) if lines[i].startswith("## ")), len(lines))
    assert end <= 60, f"the README's first screen (up to the first section after the code map) is {end} lines"


def test_readme_links_resolve_and_cite_the_three_papers():
    text = (ROOT / "README.md").read_text()
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)
    for arxiv in ("2502.13441", "2210.11610", "2412.02674"):
        assert f"https://arxiv.org/abs/{arxiv}" in text
    for folder in ("conf", "crescent/synth", "crescent/train", "crescent/eval", "crescent/backends", "experiments"):
        assert f"`{folder}/`" in text


def test_config_reference_is_generated_from_conf():
    assert (ROOT / "docs" / "config.md").read_text() == docs.render(CONF), "run `python -m crescent.docs`"


def test_config_reference_lists_every_group_option_and_key():
    text = (ROOT / "docs" / "config.md").read_text()
    for group in docs.groups(CONF):
        assert f"\n## {group}\n" in text, group
        for path in sorted((CONF / group).glob("*.yaml")):
            section = text.split(f"\n### {group}: `{path.stem}`\n", 1)[1].split("\n### ", 1)[0]
            for key, _ in docs.option_keys(path):
                assert f"| `{key}` |" in section, (group, path.stem, key)
    for key, _ in docs.option_keys(CONF / "config.yaml"):
        assert f"| `{key}` |" in text


def test_comments_attach_to_their_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text('# Header line.\n#   crescent x=y\nname: x\n# above\na: 1  # after\nb:\n  c: "#1"  # nested\n'
                    "defaults:\n  - z\nd: 2\n")
    header, keys = docs.comments(path)
    assert header == "Header line.\n\n```bash\ncrescent x=y\n```"
    assert keys == {"a": "above after", "b.c": "nested"}
    assert docs.option_keys(path) == [("name", "x"), ("a", 1), ("b.c", "#1"), ("d", 2)]
