"""The named pipeline configs (``pipelines/configs/NAME.yaml``) and how a ``--config`` value is resolved."""

from __future__ import annotations

from pathlib import Path

from dinolab.schemas.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "lvd"


def named_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str) -> Path:
    """A named config (``pipelines/configs/NAME.yaml``) or a YAML file."""
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"no config {name_or_path!r}: give a YAML file or one of {', '.join(named_configs())}")
    return path
