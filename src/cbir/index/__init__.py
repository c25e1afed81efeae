"""The index directory (torch-free): FAISS vectors + SQLite metadata, resumable sharded builds, search.

Parts, each importing only the ones before it (ARCHITECTURE.md; ``tests/test_layering.py``):
- ``storage``: what an index directory stores — index.json (``config``, read as ``Settings``),
  SQLite (``store``), shard vector files (``shards``), local features (``features``), mean colours
  (``colours``), regional descriptors (``regions``), the writer lock (``lock``).
- ``ann``: the FAISS index derived from the shards (``faiss_index``, ``maintain``) and its tuning.
- ``query``: k-NN search with re-ranking (``search``, ``rerank``: stages, presets, work budget).
- ``snapshot``: what one search reads from start to end.
- ``ingest``: getting items in — images (``pipeline``), existing vectors (``from_vectors``), Ray (``ray``).
- ``check`` (verify / repair) and ``Gallery``'s bound parts: ``_create``, ``_writes``, ``_sync``, ``_reading``.
- ``gallery``: the index directory as one object.
Copy detection (verification, the second look, dedup) is ``cbir.copies``; presentation lives with
its users (thumbnails in ``cbir.serve.thumbs``, contact sheets in ``cbir.cli.contact_sheet``).
"""
