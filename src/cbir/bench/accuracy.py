"""``cbir bench accuracy``: retrieval metrics of a model on a labelled data set.

Every image is embedded once; the gallery is the whole set in a FAISS Flat inner-product index
(the same search path as ``cbir search``); queries are the test split of each seed (``protocol``)
or every 10th image (``--queries every10``). A fine-tuned model (its metadata names the split seed it
was trained with) is evaluated on that seed's test split only. The full ranking is used for mAP. With ``qe`` > 0 the
queries are expanded (average QE, or α-QE with ``qe_alpha``) before the final search.
The query itself stays in its ranking unless ``exclude_self`` (both are reported by the sweep).
"""
from __future__ import annotations

import time

import numpy as np

from cbir.bench.protocol import load_dataset, stratified_split
from cbir.bench.ranking import evaluate
from cbir.index import faiss_index
from cbir.vectors import l2_normalize



def mean_std(runs: list[dict]) -> dict:
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))} for k in runs[0]}


def bench_accuracy(model: str, data: str, seeds: int = 3, qe_n: int = 0, qe_alpha: float = 0.0,
                   queries: str = "split", exclude_self: bool = False, embedder=None, progress: bool = False,
                   whiten_dim: int | None = None, whiten_force: bool = False) -> dict:
    """``whiten_dim``: fit PCA-whitening on the searched set itself and apply it (shows why fitting on
    the gallery with few vectors per dim hurts; refused below 10 per dim unless ``whiten_force``)."""
    from cbir.engine.embedder import Embedder

    ds = load_dataset(data)
    emb = embedder or Embedder(model)
    t0 = time.perf_counter()
    res = emb.embed_files([str(p) for p in ds.paths], progress=progress)
    embed_s = time.perf_counter() - t0
    if res.errors:
        bad = ", ".join(f"{s} ({r})" for _, s, r in res.errors[:3])
        raise_msg = f"--data {data}: {len(res.errors)} images failed to decode: {bad}"
        from cbir.errors import CbirError

        raise CbirError(raise_msg)
    vectors, labels = res.vectors, ds.labels
    if whiten_dim:
        from cbir.vectors import fit

        vectors = fit(vectors, dim=whiten_dim, force=whiten_force).apply(vectors)
    index, _ = faiss_index.build(l2_normalize(vectors), np.arange(len(vectors)), "Flat")
    runs, per_class_runs = [], []
    split_seed = emb.info.extra.get("split_seed")
    if queries == "every10":
        splits = [np.arange(0, len(vectors), 10)]
    elif split_seed is not None:
        # a fine-tuned model saw the train split of its own seed: only that seed's test split is fair
        splits = [stratified_split(labels, int(split_seed), float(emb.info.extra.get("split", 0.8)))[1]]
    else:
        splits = [stratified_split(labels, seed)[1] for seed in range(seeds)]
    for q in splits:
        overall, pc = evaluate(vectors, labels, q, exclude_self, qe_n, qe_alpha, index)
        runs.append(overall)
        per_class_runs.append(pc)
    per_class = {ds.classes[int(c)]: mean_std([pc[c] for pc in per_class_runs]) for c in per_class_runs[0]}
    return {
        "model": emb.info.public(), "data": str(data), "images": len(vectors), "classes": len(ds.classes),
        "queries": queries, "seeds": len(splits), "split_seed": split_seed, "queries_per_run": int(len(splits[0])),
        "exclude_self": exclude_self, "qe": qe_n, "qe_alpha": qe_alpha, "whiten_dim": whiten_dim,
        "metrics": mean_std(runs), "per_class": per_class, "embed_seconds": round(embed_s, 2),
        "embed_images_per_s": round(len(vectors) / embed_s, 1),
    }
