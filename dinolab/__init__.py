"""dinolab, the LVD-142M builder: one import root over the repository's top-level folders.

``dinolab.curate`` is ``curate/``, ``dinolab.pipelines`` is ``pipelines/``, ``dinolab.pretrain`` is ``pretrain/``,
``dinolab.features`` is ``features/`` and ``dinolab.schemas`` is ``schemas/`` (``package-dir`` in pyproject.toml),
so generic names such as ``schemas`` or ``pipelines`` from other distributions can be installed beside it.
"""
