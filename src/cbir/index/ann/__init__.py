"""The FAISS index derived from the shards: ``faiss_index`` (create, train, save/load, GPU copy,
search), ``maintain`` (rebuild, update in place, tune from the shards), ``tuning`` (factory choice,
nprobe / efSearch to a recall target)."""
