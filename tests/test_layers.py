"""The import contract of tests/import_contract.toml: imports point down the layers; stages never import each other.

A small `ast` walk over every module of the package (imports inside functions count too)."""
from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = Path(__file__).with_name("import_contract.toml")


def load_contract(path: Path = CONTRACT) -> dict:
    return tomllib.loads(path.read_text())


def module_name(file: Path, package_dir: Path) -> str:
    parts = list(file.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(file: Path, package_dir: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, relative ones resolved, at any depth."""
    name = module_name(file, package_dir)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from crescent.x import y` may import the module crescent.x.y: count the most specific name
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names] if base else []
    return out


def _unit(module: str, contract: dict) -> tuple[str, str] | None:
    """(layer, package prefix) a module belongs to: the longest matching prefix of the contract."""
    best = None
    for layer, prefixes in contract["layers"].items():
        for p in prefixes:
            # a dotted prefix covers what lies below it; the root package's name stands for its __init__ only
            if (module == p or "." in p and module.startswith(p + ".")) and (best is None or len(p) > len(best[1])):
                best = (layer, p)
    return best


def _resolve(imported: str, contract: dict) -> tuple[str, str] | None:
    """The unit of an imported name: `crescent.answers.extract_answer` -> the unit of crescent.answers."""
    while imported:
        unit = _unit(imported, contract)
        if unit is not None:
            return unit
        imported = imported.rpartition(".")[0]
    return None


def violations(package_dir: Path, contract: dict) -> tuple[list[str], set[tuple[str, str]]]:
    """(the contract's violations as readable lines, the (importer, imported) pairs the exceptions allowed)."""
    order = list(contract["layers"])
    independent = set(contract.get("independent", {}).get("layers", []))
    allowed = {(e["importer"], e["imported"]) for e in contract.get("exceptions", [])}
    found, used = [], set()
    for file in sorted(package_dir.rglob("*.py")):
        importer = module_name(file, package_dir)
        here = _unit(importer, contract)
        if here is None:
            found.append(f"{file.relative_to(package_dir.parent)}: module {importer} is in no layer of the contract")
            continue
        for imported, line in imports(file, package_dir):
            if not (imported == package_dir.name or imported.startswith(package_dir.name + ".")):
                continue
            there = _resolve(imported, contract)
            if there is None or there[1] == here[1]:
                continue
            upward = order.index(there[0]) < order.index(here[0])
            sideways = there[0] == here[0] and here[0] in independent
            if not (upward or sideways):
                continue
            pair = next(((i, m) for i, m in allowed if importer == i and (imported == m or imported.startswith(m + "."))),
                        None)
            if pair is not None:
                used.add(pair)
                continue
            kind = "upward" if upward else f"{here[0]} -> {here[0]}"
            found.append(f"{file.relative_to(package_dir.parent)}:{line}: {importer} ({here[0]}) imports {imported} "
                         f"({there[0]}): {kind}")
    return found, used


def test_crescent_keeps_the_import_contract():
    contract = load_contract()
    found, used = violations(ROOT / "crescent", contract)
    assert found == [], "imports against tests/import_contract.toml:\n" + "\n".join(found)
    stale = [e for e in contract.get("exceptions", []) if (e["importer"], e["imported"]) not in used]
    assert stale == [], f"exceptions whose import is gone (remove them from import_contract.toml): {stale}"


def _copy(tmp_path: Path) -> Path:
    """The package's modules (no data files) in tmp_path/crescent."""
    shutil.copytree(ROOT / "crescent", tmp_path / "crescent",
                    ignore=lambda d, names: [n for n in names if not n.endswith(".py") and not (Path(d) / n).is_dir()])
    return tmp_path / "crescent"


@pytest.mark.parametrize("module,line,kind", [
    ("utils/io.py", "from crescent.eval.report import metric_dict", "(utils) imports crescent.eval.report.metric_dict "
                                                                     "(stages): upward"),
    ("answers/numeric.py", "    from crescent.pipeline import run", "(services) imports crescent.pipeline.run (entry)"),
    ("train/stage.py", "from crescent.eval import callback", "(stages) imports crescent.eval.callback (stages): "
                                                             "stages -> stages"),
    ("synth/generate.py", "import crescent.verify.core", "imports crescent.verify.core (stages): stages -> stages"),
    ("backends/hf.py", "from ..synth import voting", "(services) imports crescent.synth.voting (stages): upward"),
])
def test_an_injected_bad_import_fails_the_contract(tmp_path, module, line, kind):
    package = _copy(tmp_path)
    assert violations(package, load_contract())[0] == []  # the copy keeps the contract
    target = package / module
    text = target.read_text()
    if line.startswith("    "):  # a lazy import inside a function
        text += f"\n\ndef _injected():\n{line}\n"
    else:
        text += f"\n{line}\n"
    target.write_text(text)
    found, _ = violations(package, load_contract())
    assert len(found) == 1 and kind in found[0] and found[0].startswith(f"crescent/{module}:"), found


def test_a_module_outside_every_layer_is_reported(tmp_path):
    package = _copy(tmp_path)
    (package / "plugins").mkdir()
    (package / "plugins" / "__init__.py").write_text("")
    found, _ = violations(package, load_contract())
    assert found == ["crescent/plugins/__init__.py: module crescent.plugins is in no layer of the contract"]
