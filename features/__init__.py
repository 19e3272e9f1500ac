"""Frozen-backbone features: extraction and the shared feature file format."""

from dinolab.features.extract import extract_features
from dinolab.features.store import (
    FeatureFileError,
    Features,
    load_features,
    read_feature_metadata,
    save_features,
)

__all__ = [
    "FeatureFileError",
    "Features",
    "extract_features",
    "load_features",
    "read_feature_metadata",
    "save_features",
]
