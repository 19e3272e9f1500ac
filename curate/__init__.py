"""LVD-142M-style data curation (DINOv2, Sec. 3): embed, deduplicate, cluster, select, report.

Modules, one step each: :mod:`~curate.embed` (chunked, resumable features),
:mod:`~curate.dedup` (copy detection), :mod:`~curate.kmeans` (hierarchical k-means and
balanced sampling), :mod:`~curate.select` (retrieval), :mod:`~curate.report`,
:mod:`~curate.manifest` (atomic plain-file outputs) and :mod:`~curate.pipeline`
(the steps over one work folder, used by ``dinolab curate``).
"""
