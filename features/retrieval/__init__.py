"""Nearest-neighbour search over image embeddings: a faiss index saved with its names and model."""

from dinolab.features.retrieval.index import INDEX_KINDS, FeatureIndex, RetrievalIndexError, SearchHit

__all__ = ["INDEX_KINDS", "FeatureIndex", "RetrievalIndexError", "SearchHit"]
