"""Packaging is declared in setup.cfg. This file adds one thing: the top-level `conf/` tree goes into the wheel
as `crescent/conf/`, where `crescent.cli` looks for it when the package is not a source checkout."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    """build_py + conf/**/*.yaml copied to <build_lib>/crescent/conf/ (an editable install reads conf/ in place)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for src in sorted(CONF.rglob("*.yaml")):
            dst = Path(self.build_lib) / "crescent" / "conf" / src.relative_to(CONF)
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))


setup(cmdclass={"build_py": BuildPyWithConf})
