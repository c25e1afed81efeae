"""Getting items in: ``pipeline`` (scan files into shards, embed a shard, commit, adopt finished
outputs), ``from_vectors`` (``--from-vectors``: existing embeddings), ``ray`` (shards embedded on Ray Data
workers)."""
