"""Gallery index (torch-free): FAISS vectors + SQLite metadata, resumable sharded builds, search.

- ``walk``: which files of a folder are images.
- ``store``: the SQLite metadata store (items, shards, settings), transactional.
- ``shards``: atomic per-shard vector files.
- ``faiss_index``: building/searching FAISS indexes from a factory string (GPU copy when available).
- ``gallery``: the index directory: build / resume / add / remove / info / search.
- ``qe``: average and α query expansion, database-side augmentation.
"""
