"""Query time: ``search`` (k-NN with re-ranking, shared by ``Gallery`` and the benchmarks) and
``rerank`` (shortlist DBA, α-QE, diffusion, regional re-ranking, verified-first ordering; presets,
limits and the work budget)."""
