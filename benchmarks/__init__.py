"""dinolab's benchmarks: one module per benchmark, each run from the repository root as
``python -m benchmarks.NAME --help``; code two or more of them share lives in :mod:`benchmarks._shared`,
and their image lakes are written by :mod:`pipelines.lake_writer` (the demo's and the tests' writer).

Every benchmark prints what it measured next to a named peer or baseline from the same run; the numbers
quoted in docs/ name the command that produced them.
"""
