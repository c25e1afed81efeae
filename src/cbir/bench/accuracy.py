"""``cbir bench accuracy``: retrieval metrics of a model on a labelled data set.

Every image is embedded once; the gallery is the whole set in a FAISS Flat inner-product index
(the same search path as ``cbir search``); queries are the test split of each seed (``protocol``)
or every 10th image (``--queries every10``). A fine-tuned model (its metadata names the split seed it
was trained with) is evaluated on that seed's test split only; ``--queries all`` uses every image as
a query once. The full ranking is used for mAP. ``rerank`` (``cbir.index.query.rerank.Rerank``) re-ranks
exactly as ``cbir search`` does; with verification, local features of every image are extracted first.
The query itself stays in its ranking unless ``exclude_self`` (both are reported by the sweep).

Copy detection (``copies``: a folder ``<edit>/<path of the original relative to data>``, as
``cbir bench copies`` writes it): every copy is a query against the whole data set, and the figure
is the fraction whose original comes first (rank-1), overall and per edit kind; a copy whose
original is not in the data set is an error. Both report search ms/query (re-ranking and
verification included, query embedding and query feature extraction not). Regional re-ranking
needs a model exported with ``--regions`` (the regional descriptors come from the same pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cbir.errors import CbirError
from cbir.eval.protocol import load_dataset, stratified_split
from cbir.eval.ranking import evaluate, rank
from cbir.index.ann import faiss_index
from cbir.index.query.rerank import PRESETS, Rerank
from cbir.vectors import l2_normalize


def extract_features(paths: list, progress: bool = False, query: bool = False):
    """Local-feature records of images [n] on all cores (an unreadable one verifies nothing); with
    ``query``, a list of each image's variants as ``cbir search`` extracts them (the image and its
    mirror, ``local_features.extract_query``)."""
    from concurrent.futures import ThreadPoolExecutor

    from cbir.copies import local_features
    from cbir.cores import all_cores
    from cbir.engine.preprocess import ImageError

    def one(p):
        try:
            return (local_features.extract_query if query else local_features.extract)(str(p), str(p))
        except ImageError:
            return (local_features.empty(),) if query else local_features.empty()

    with ThreadPoolExecutor(all_cores()) as pool:
        got = list(pool.map(one, paths))
    return got if query else np.stack(got)


def mean_std(runs: list[dict]) -> dict:
    return {
        k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))} for k in runs[0]
    }


# The re-ranking axis of ``--rerank-axis``: ``base``, a preset name, or stages joined by ``+``
# (``dba+aqe+regional``), each stage with the setting below on top of plain k-NN.
AXIS_STAGES = {
    "aqe": {"qe": 30},
    "dba": {"shortlist_dba": 20},
    "diffusion": {"diffusion": 30},
    "regional": {"regional": 100},
    "verify": {"verify": 10},
}


def axis_config(name: str) -> Rerank:
    """The ``Rerank`` of one ``--rerank-axis`` entry; CbirError naming an unknown part."""
    if name == "base":
        return Rerank()
    if name in PRESETS:
        return PRESETS[name]
    settings: dict = {}
    for part in name.split("+"):
        if part not in AXIS_STAGES:
            raise CbirError(
                f"--rerank-axis {name}: unknown part {part!r}; use base, a preset "
                f"({', '.join(PRESETS)}) or stages joined by + ({', '.join(AXIS_STAGES)})"
            )
        settings.update(AXIS_STAGES[part])
    return Rerank(**settings)


def bench_accuracy(
    model: str,
    data: str,
    seeds: int = 3,
    rerank: Rerank | None = None,
    queries: str = "split",
    exclude_self: bool = False,
    embedder=None,
    progress: bool = False,
    whiten_dim: int | None = None,
    whiten_force: bool = False,
    copies: str | None = None,
    axis: dict[str, Rerank] | None = None,
    pad_to: int | None = None,
) -> dict:
    """``whiten_dim``: fit PCA-whitening on the searched set itself and apply it (shows why fitting on
    the gallery with few vectors per dim hurts; refused below 10 per dim unless ``whiten_force``).
    ``pad_to``: grow the gallery to this many items with ``distractors`` (never relevant, no local
    features); rankings then stop at depth 1,000 (mAP a lower bound)."""
    from cbir.engine.embedder import Embedder

    ds = load_dataset(data)
    emb = embedder or Embedder(model)
    configs = axis or {"rerank": rerank or Rerank()}
    needs_regions = any(c.regional for c in configs.values())
    t0 = time.perf_counter()
    res = emb.embed_files([str(p) for p in ds.paths], progress=progress, regions=needs_regions)
    embed_s = time.perf_counter() - t0
    if res.errors:
        bad = ", ".join(f"{s} ({r})" for _, s, r in res.errors[:3])
        raise CbirError(f"--data {data}: {len(res.errors)} images failed to decode: {bad}")
    vectors, labels = res.vectors, ds.labels
    if whiten_dim:
        from cbir.vectors import fit

        wt = fit(vectors, dim=whiten_dim, force=whiten_force)
        vectors = wt.apply(vectors)
        if res.regions is not None:
            n, r, d = res.regions.shape
            res.regions = wt.apply(res.regions.reshape(n * r, d)).reshape(n, r, -1)
    n_real = len(vectors)
    depth = None
    if pad_to and pad_to > n_real:
        vectors = np.concatenate([l2_normalize(vectors), distractors(vectors, pad_to - n_real)])
        labels = np.concatenate([labels, np.full(pad_to - n_real, -1, labels.dtype)])
        depth = 1000
    index, _ = faiss_index.build(l2_normalize(vectors), np.arange(len(vectors)), "Flat")
    t0 = time.perf_counter()
    needs_features = any(c.verify for c in configs.values())
    features = extract_features(ds.paths) if needs_features else None
    features_s = time.perf_counter() - t0
    if features is not None and len(vectors) > n_real:
        from cbir.copies import local_features

        features = np.concatenate([features, np.repeat(local_features.empty()[None], len(vectors) - n_real)])
    split_seed = emb.info.extra.get("split_seed")
    splits = query_splits(queries, labels[:n_real], emb.info.extra, seeds)
    copy_queries = copy_set(emb, ds, data, copies, needs_features) if copies is not None else None
    searched = _Searched(vectors, labels, res.regions, index, features, depth, splits, ds.classes, exclude_self)
    results = {name: _score(searched, cfg, copy_queries) for name, cfg in configs.items()}
    first = next(iter(results.values()))
    return {
        "model": emb.info.public(),
        "data": str(data),
        "images": n_real,
        "gallery": len(vectors),
        "ranking_depth": depth or len(vectors),
        "classes": len(ds.classes),
        "queries": queries,
        "seeds": len(splits),
        "split_seed": split_seed,
        "queries_per_run": int(len(splits[0])),
        "exclude_self": exclude_self,
        "whiten_dim": whiten_dim,
        **first,
        "axis": results if axis else None,
        "embed_seconds": round(embed_s, 2),
        "embed_images_per_s": round(len(vectors) / embed_s, 1),
        "features_ms_per_image": round(features_s / n_real * 1e3, 3) if features is not None else None,
    }


def query_splits(queries: str, labels: np.ndarray, model_extra: dict, seeds: int) -> list[np.ndarray]:
    """The query sets: ``all`` images, ``every10``th, or the test split of each of ``seeds`` seeds —
    only its own seed's for a fine-tuned model (it saw the train split)."""
    n = len(labels)
    if queries == "all":
        return [np.arange(n)]
    if queries == "every10":
        return [np.arange(0, n, 10)]
    split_seed = model_extra.get("split_seed")
    if split_seed is not None:
        return [stratified_split(labels, int(split_seed), float(model_extra.get("split", 0.8)))[1]]
    return [stratified_split(labels, seed)[1] for seed in range(seeds)]


@dataclass
class _Searched:
    """The searched set of one ``bench_accuracy`` and how it is queried."""

    vectors: np.ndarray
    labels: np.ndarray
    regions: np.ndarray | None
    index: object
    features: np.ndarray | None
    depth: int | None
    splits: list[np.ndarray]
    classes: list[str]
    exclude_self: bool


def _score(s: _Searched, cfg: Rerank, copy_queries) -> dict:
    """Metrics of every split under ``cfg`` (mean ± std), per class, the search time per query,
    the time of a user's query (k = 10, one at a time) and, with ``copy_queries``, copy detection."""
    runs, per_class_runs, search_s, n_queries = [], [], 0.0, 0
    for q in s.splits:
        t0 = time.perf_counter()
        overall, pc = evaluate(s.vectors, s.labels, q, s.exclude_self, cfg, s.index, s.features, s.depth, s.regions)
        search_s += time.perf_counter() - t0
        n_queries += len(q)
        runs.append(overall)
        per_class_runs.append(pc)
    per_class = {s.classes[int(c)]: mean_std([pc[c] for pc in per_class_runs]) for c in per_class_runs[0]}
    sample = s.splits[0][:200]  # a user's query: k = 10, one at a time (the loop above ranks deeper)
    qf = s.features[sample] if s.features is not None else None
    gallery = l2_normalize(s.vectors)
    t0 = time.perf_counter()
    for i in range(len(sample)):
        one = None if qf is None else qf[i : i + 1]
        rank(s.index, gallery, gallery[sample[i : i + 1]], 10, cfg, one, s.features, s.regions)
    k10_ms = (time.perf_counter() - t0) / len(sample) * 1e3
    copies = copy_detection(copy_queries, s.vectors, s.index, cfg, s.features, s.regions) if copy_queries else None
    return {
        "rerank": cfg.to_dict(),
        "metrics": mean_std(runs),
        "per_class": per_class,
        "search_ms_per_query": round(search_s / max(n_queries, 1) * 1e3, 3),
        "k10_ms_per_query": round(k10_ms, 3),
        "copies": copies,
    }


def distractors(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` plausible vectors of images unrelated to the data set: drawn from a Gaussian with the
    real vectors' mean and full covariance, clipped at 0 (GAP/GeM features are non-negative),
    L2-normalised. On Corel/Lite0 their highest cosine to a real image (median ~0.44 over 5,000) is
    that of another class's nearest image (~0.41), below a same-class neighbour (~0.78)."""
    rng = np.random.default_rng(seed)
    x = l2_normalize(np.asarray(real, np.float64))
    mu, cov = x.mean(0), np.cov(x.T)
    out = np.empty((n, x.shape[1]), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        out[s : s + m] = np.maximum(rng.multivariate_normal(mu, cov, m, method="cholesky" if _spd(cov) else "svd"), 0)
    return l2_normalize(out)


def _spd(cov: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(cov)
        return True
    except np.linalg.LinAlgError:
        return False


def copy_set(emb, ds, data: str, copies: str, with_features: bool) -> dict:
    """The copies under ``copies``: their vectors, originals (data-set positions), edit kinds, features."""
    from pathlib import Path

    from cbir.sources import find_images

    root, croot = Path(data), Path(copies)
    files = sorted(find_images([croot]))
    if not files:
        raise CbirError(f"--copies {copies}: no images")
    where = {str(Path(p).relative_to(root).with_suffix("")): i for i, p in enumerate(ds.paths)}
    originals, edits = [], []
    for f in files:
        rel = Path(f).relative_to(croot)
        key = str(Path(*rel.parts[1:]).with_suffix(""))
        if len(rel.parts) < 2 or key not in where:
            raise CbirError(
                f"--copies {copies}: {f} has no original {key}.* under --data {data} "
                f"(expected <edit>/<path of the original>)"
            )
        originals.append(where[key])
        edits.append(rel.parts[0])
    res = emb.embed_files([str(f) for f in files])
    if res.errors:
        raise CbirError(f"--copies {copies}: {res.errors[0][1]}: {res.errors[0][2]}")
    return {
        "vectors": res.vectors,
        "originals": np.asarray(originals),
        "edits": np.asarray(edits),
        "features": extract_features(files, query=True) if with_features else None,
    }


def copy_detection(
    cq: dict, vectors: np.ndarray, index, rerank: Rerank, features: np.ndarray | None, regions: np.ndarray | None = None
) -> dict:
    """Rank-1 of the original for every copy of ``cq`` (``copy_set``) under ``rerank``."""
    t0 = time.perf_counter()
    ranking = rank(
        index, l2_normalize(vectors), l2_normalize(cq["vectors"]), 10, rerank, cq["features"], features, regions
    )
    search_s = time.perf_counter() - t0
    orig, edits = cq["originals"], cq["edits"]
    hit = ranking[:, 0] == orig
    return {
        "copies": len(orig),
        "rank1": round(float(hit.mean()), 4),
        "in_top10": round(float((ranking == orig[:, None]).any(1).mean()), 4),
        "rank1_per_edit": {str(e): round(float(hit[edits == e].mean()), 4) for e in sorted(set(edits))},
        "search_ms_per_query": round(search_s / len(orig) * 1e3, 3),
    }
