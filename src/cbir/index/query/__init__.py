"""Query time: ``search`` (k-NN with re-ranking, shared by ``Gallery`` and the benchmarks),
``rerank`` (shortlist DBA, α-QE, diffusion, regional re-ranking, verified-first ordering; presets,
limits and the work budget), ``votes`` and ``vote_cache`` (the descriptor-vote index and keeping it
in step with the indexed set) and ``cascade`` (the order of a search's stages, their error
boundaries and the deadline check)."""
