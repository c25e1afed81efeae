"""Gallery index (torch-free): FAISS vectors + SQLite metadata, resumable sharded builds, search.

Parts, each importing only the ones before it (``tests/test_layering.py``):
- ``storage``: what an index directory stores — index.json (``config``), SQLite (``store``), shard
  vector files (``shards``), local features (``features``), regional descriptors (``regions``), the
  writer lock (``lock``).
- ``ann``: the FAISS index derived from the shards (``faiss_index``, ``maintain``) and its tuning.
- ``query``: k-NN search with re-ranking (``search``, ``rerank``: stages, presets, work budget).
- ``build``: getting items in — images (``pipeline``), existing vectors (``vectors``), Ray (``ray``).
- ``check`` (verify / repair), ``dedup`` (copy groups), ``gallery`` (the index directory as one object).
Presentation lives with its users: thumbnails in ``cbir.serve.thumbs``, contact sheets in
``cbir.cli.contact_sheet``.
"""
