"""LVD-142M-style data curation (DINOv2, Sec. 3): embed, deduplicate, cluster, select, report.

Modules, one step each: :mod:`~dinolab.curate.embed` (chunked, resumable features),
:mod:`~dinolab.curate.dedup` (copy detection), :mod:`~dinolab.curate.kmeans` (hierarchical k-means and
balanced sampling), :mod:`~dinolab.curate.select` (retrieval), :mod:`~dinolab.curate.report`,
:mod:`~dinolab.curate.manifest` (atomic plain-file outputs) and :mod:`~dinolab.curate.pipeline`
(the steps over one work folder, used by ``dinolab curate``).
"""
