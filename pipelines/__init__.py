"""Where and how the curation stages run: Dask clusters, task sets per stage, resume, progress, the CLI.

``curate/`` holds the stage logic as plain functions; this package submits them as Dask tasks
(:mod:`pipelines.run`), connects to or starts a cluster (:mod:`pipelines.cluster`), loads the embedding
model once per worker (:mod:`pipelines.plugins`), records what a run is (:mod:`pipelines.state`) and
shows progress (:mod:`pipelines.progress`). Named configs live in ``pipelines/configs/``.
"""
