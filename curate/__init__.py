"""The curation stages of the LVD-142M pipeline (DINOv2, Sec. 3) as plain functions; nothing here knows Dask.

One module per job: :mod:`~curate.lakes.sets` (listing sets, keys), :mod:`~curate.ingest` (decode, hash,
metadata), :mod:`~curate.embed`, :mod:`~curate.dedup` (copies and leaks), :mod:`~curate.kmeans`
(hierarchical k-means, balanced sampling), :mod:`~curate.sample` (retrieval), :mod:`~curate.shards`
(webdataset shards of the original bytes), :mod:`~curate.report`, :mod:`~curate.tables` (parts on
disk) and :mod:`~curate.stages` (each stage's unit of work over an output folder).
"""
