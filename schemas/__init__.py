"""What the pipeline writes and how it is configured: table schemas (versioned), the config model, validation."""

from dinolab.schemas.config import ConfigError, PipelineConfig, load_config
from dinolab.schemas.tables import TABLES, SchemaError, TableSpec, validate

__all__ = ["ConfigError", "PipelineConfig", "SchemaError", "TABLES", "TableSpec", "load_config", "validate"]
