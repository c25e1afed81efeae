"""What an index directory stores, and nothing that reads it for search: ``config`` (index.json),
``store`` (SQLite items, shards, generation), ``shards`` (per-shard vector files), ``features``
(ORB records per shard), ``regions`` (regional descriptors per shard), ``shard_rows`` (id → row of a
per-shard side file), ``lock`` (one writer across processes)."""
