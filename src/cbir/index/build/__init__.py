"""Getting items in: ``pipeline`` (scan files into shards, embed a shard, commit, adopt finished
outputs), ``vectors`` (``--from-vectors``: existing embeddings), ``ray`` (shards embedded on Ray Data
workers)."""
