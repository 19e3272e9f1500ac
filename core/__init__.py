"""Foundations shared by every package of dinolab: storage (:mod:`core.storage`) and typed configs
(:mod:`core.config`). It imports none of the other packages, so curation, pretraining and the schemas
may all import it."""
