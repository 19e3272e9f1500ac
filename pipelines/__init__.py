"""Where and how the curation stages run: Dask clusters, task sets per stage, resume, progress, the CLI.

``curate/`` holds the stage logic as plain functions and declares each stage's steps; this package runs
them: one entry (:func:`pipelines.run.run_curation`), one dispatcher that runs any stage's steps as Dask
tasks or in a loop and loads what a step shares (the embedding model) once per worker
(:mod:`pipelines.dispatch`), a cluster to run them on (:mod:`pipelines.cluster`), what a run is
(:mod:`pipelines.state`) and progress (:mod:`pipelines.progress`). Named configs live in ``pipelines/configs/``.
"""
