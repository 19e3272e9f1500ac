"""One import root: every module is ``dinolab.*``, so PyPI's own ``schemas``, ``features``, ``pipelines`` and
``curate`` install beside dinolab without breaking it, and pyproject.toml lists every package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("core", "curate", "features", "pipelines", "pretrain", "schemas")
CLASHING = ("schemas==0.7.1", "features==0.5.12", "pipelines==0.0.14", "curate==0.15")
"""Distributions on PyPI whose top-level import names are the names of our folders."""


def our_modules() -> list[str]:
    names = []
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.name == "__main__.py":  # runs its command when imported
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(("dinolab",) + (parts[:-1] if parts[-1] == "__init__" else parts)))
    return names


def test_pyproject_lists_every_package_under_the_root():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"dinolab"} | {
        ".".join(("dinolab",) + init.parent.relative_to(ROOT).parts) for top in TOPS for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {"dinolab": "dinolab", **{f"dinolab.{top}": top for top in TOPS}}


@pytest.mark.parametrize("folder", [*TOPS, "tests", "benchmarks", "scripts"])
def test_no_module_imports_a_bare_top_level_name(folder):
    bare = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found = [name for name in names if name.split(".")[0] in TOPS]
            if found:
                bare[str(path.relative_to(ROOT))] = found
    assert bare == {}


@pytest.mark.slow
def test_every_module_imports_beside_the_clashing_pypi_packages(tmp_path):
    """The four clashing distributions installed (without their dependencies) first on ``sys.path``: every
    dinolab module still imports from this repository, and the clashing names are theirs."""
    target = tmp_path / "clashing"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                              "--target", str(target), *CLASHING], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    script = (
        "import importlib, importlib.util, sys\n"
        "bad = {}\n"
        f"for name in {our_modules()!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    if not module.__file__.startswith({str(ROOT)!r}): bad[name] = module.__file__\n"
        "for name in ('schemas', 'features', 'pipelines', 'curate'):\n"
        f"    spec = importlib.util.find_spec(name)\n"
        f"    if spec is None or not spec.origin.startswith({str(target)!r}): bad[name] = spec and spec.origin\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
