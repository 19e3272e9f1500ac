"""The import arrows of the layout: pipelines → curate → schemas; curate may use pretrain's backbones;
pretrain knows nothing of curation nor of features (the uses of its backbones, which may import pretrain);
only the pipelines package imports Dask and pipelines itself; core (storage, typed configs) imports none of
the others, so every one of them may use it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"core", "schemas", "curate", "pipelines", "pretrain", "features"}
FORBIDDEN = {
    "core": OURS - {"core"} | {"torch", "dask", "distributed"},
    "schemas": {"curate", "pipelines", "pretrain", "features", "torch", "dask", "distributed"},
    "curate": {"pipelines", "features", "dask", "distributed"},
    "pretrain": {"curate", "pipelines", "schemas", "features", "dask", "distributed"},
    "features": {"curate", "pipelines", "schemas", "dask", "distributed"},
}


def _root(module: str) -> str:
    """The layer a module belongs to: ``dinolab.curate.stages`` -> ``curate``, ``torch.nn`` -> ``torch``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "dinolab" and len(parts) > 1 else parts[0]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {_root(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(_root(node.module))
            if node.module == "dinolab":  # from dinolab import curate
                roots |= {alias.name for alias in node.names}
    return roots


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_layout_allows(package):
    assert modules(package), f"{package}/ holds no modules"
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package]) for path in modules(package)
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_no_src_layout_is_left():
    assert not (ROOT / "src").exists()
