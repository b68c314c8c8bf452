"""The package installs as a package (issue 19): `pip wheel .` carries the config tree and the kernel source, and the
wheel, installed with --no-deps into a fresh venv on top of the project's installed dependencies, runs
`crescent debug=default` from a directory outside the repo."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def _source_files() -> list[str]:
    """What `pip wheel .` on this checkout sees: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the build leaves build/ and *.egg-info next to its source)."""
    work = tmp_path_factory.mktemp("wheel")
    for name in _source_files():
        (work / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / "src" / name)
    # --no-build-isolation: build with this environment's setuptools (pyproject's build-system), no download
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(work / "dist"), str(work / "src")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (work / "dist").glob("crescent-*.whl")
    return path


def test_the_wheel_carries_the_config_tree_the_kernel_source_and_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = _source_files()
    conf = [f for f in sources if f.startswith("conf/") and f.endswith(".yaml")]
    assert "conf/config.yaml" in conf and len(conf) > 50
    assert {f"crescent/{f}" for f in conf} <= names  # conf/X.yaml -> crescent/conf/X.yaml
    assert "crescent/backends/fast_kernels.c" in names
    # every file of the package that is not Python code (benchmark data, licences, the C source) is in the wheel
    shipped = {f for f in sources if f.startswith("crescent/") and not f.endswith(".py")}
    assert shipped and shipped <= names, sorted(shipped - names)[:20]
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def test_the_installed_wheel_runs_outside_the_repo(wheel, tmp_path, cache_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the project's dependencies, as a plain path entry: its .pth files (the editable crescent) are not processed
    Path(site, "project_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # no PYTHONPATH (a checkout on it, with its crescent.egg-info, would make pip skip the wheel as installed)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", CRESCENT_CACHE=str(cache_dir), WANDB_MODE="disabled")
    code = "import crescent, crescent.cli as c; print(crescent.__file__); print(c.CONF_DIR)"
    proc = subprocess.run([python, "-c", code], cwd=run_dir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = proc.stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's package and config tree
    proc = subprocess.run([venv / "bin" / "crescent", "debug=default"], cwd=run_dir, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    (status,) = run_dir.glob("outputs/*/*/status.json")
    assert json.loads(status.read_text())["status"] == "ok"
    assert list(Path(cache_dir, "synth").glob("*/sft.jsonl"))  # the generate stage wrote its rows
    hydra_cfg = (status.parent / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {where[1]}" in hydra_cfg and str(ROOT / "conf") not in hydra_cfg  # composed from the wheel's tree
