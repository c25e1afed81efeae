"""Exact inner-product search on a GPU with PyTorch, for Flat galleries, where faiss-gpu is not
installed (the CUDA 13 install flavour has none: PyPI's faiss-gpu is CUDA 12 only).

``TorchFlat(index, device)`` copies the vectors of a FAISS Flat index (through its IDMap wrapper)
to ``device`` once, in FP16 on CUDA (FP32 on the CPU, where it exists to be tested), and answers
``search(queries, k)`` like a FAISS index: (similarities [q, k] float32, ids [q, k] int64). Scores
are a matmul in row chunks of the gallery (``CHUNK_ROWS``) merged by top-k, so one search needs
O(q × (chunk + k)) extra memory; the FP16 scores are re-computed in FP32 for the k winners of each
chunk, so the returned similarities are exact for the vectors as stored in FP16. Searches from
concurrent threads are serialised by a lock (one stream). Optional and lazily imported: it needs
torch, which the inference path otherwise never imports.
"""
from __future__ import annotations

import threading

import numpy as np

from cbir.errors import CbirError

CHUNK_ROWS = 1 << 20


def _flat_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, d] float32, ids [n] int64) of a Flat index, IDMap/IDMap2 looked through."""
    import faiss

    outer = faiss.downcast_index(index)
    ids = None
    if type(outer).__name__ in ("IndexIDMap", "IndexIDMap2"):
        ids = faiss.vector_to_array(outer.id_map).astype(np.int64)
        outer = faiss.downcast_index(outer.index)
    if type(outer).__name__ not in ("IndexFlat", "IndexFlatIP"):
        raise CbirError(f"exact GPU search needs a Flat index, not {type(outer).__name__}")
    if outer.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CbirError("exact GPU search needs an inner-product Flat index")
    x = faiss.rev_swig_ptr(outer.get_xb(), outer.ntotal * outer.d).reshape(outer.ntotal, outer.d).copy()
    return x, (np.arange(outer.ntotal, dtype=np.int64) if ids is None else ids)


class TorchFlat:
    """A Flat index's vectors on ``device`` (``cuda`` or ``cpu``), searched by matmul + top-k."""

    def __init__(self, index=None, device: str = "cuda", vectors: np.ndarray | None = None,
                 ids: np.ndarray | None = None):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise CbirError(f"--search-device cuda: torch {torch.__version__} sees no CUDA device")
        if vectors is None:
            vectors, ids = _flat_vectors(index)
        self._torch, self.device = torch, device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.ntotal, self.d = int(vectors.shape[0]), int(vectors.shape[1])
        self._x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(device=device, dtype=self.dtype)
        self._ids = np.arange(self.ntotal, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        if params is not None:
            raise CbirError("exact GPU search takes no search parameters (nprobe/efSearch are for approximate indexes)")
        torch = self._torch
        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(self.device)
        k = max(1, min(int(k), self.ntotal))
        with self._lock, torch.inference_mode():
            best_s = torch.full((len(q), 0), float("-inf"), device=self.device)
            best_i = torch.zeros((len(q), 0), dtype=torch.int64, device=self.device)
            qh = q.to(self.dtype)
            for s in range(0, self.ntotal, CHUNK_ROWS):
                x = self._x[s : s + CHUNK_ROWS]
                top = torch.topk(qh @ x.T, min(k, len(x)), dim=1).indices
                exact = torch.einsum("qd,qkd->qk", q, x[top].float())  # the winners' scores in FP32
                best_s = torch.cat([best_s, exact], 1)
                best_i = torch.cat([best_i, top + s], 1)
                if best_s.shape[1] > k:
                    keep = torch.topk(best_s, k, dim=1).indices
                    best_s, best_i = best_s.gather(1, keep), best_i.gather(1, keep)
            order = torch.argsort(best_s, dim=1, descending=True)
            sims = best_s.gather(1, order).cpu().numpy().astype(np.float32)
            rows = best_i.gather(1, order).cpu().numpy()
        return sims, self._ids[rows]
