"""Exact inner-product search on a GPU with PyTorch, for Flat galleries, where faiss-gpu is not
installed (the CUDA 13 install flavour has none: PyPI's faiss-gpu is CUDA 12 only).

``TorchFlat(index, device)`` copies the vectors of a FAISS Flat index (through its IDMap wrapper)
to ``device`` once, in FP16 on CUDA (FP32 on the CPU, where it exists to be tested), and answers
``search(queries, k)`` like a FAISS index: (similarities [q, k] float32, ids [q, k] int64). Scores
are a matmul in row chunks of the gallery (``CHUNK_ROWS``) merged by top-k, so one search needs
O(q × (chunk + k)) extra memory; the FP16 scores are re-computed in FP32 for the k winners of each
chunk, so the returned similarities are exact for the vectors as stored in FP16.

Concurrent searches are batched (flat combining, no extra thread): each caller queues its queries
and waits for the device; whoever gets it runs every queued request as one matmul (at most
``MAX_COMBINED`` query rows, with the largest k asked) and hands each caller its rows. Under
``cbir serve`` many single-query requests thus become one GEMM instead of many GEMVs; ``batches``
and ``requests`` count what happened. Optional and lazily imported: it needs torch, which the
inference path otherwise never imports.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from cbir.errors import CbirError

CHUNK_ROWS = 1 << 20
MAX_COMBINED = 4096  # query rows per combined matmul


def import_torch(device: str):
    """torch, once ``device`` (cuda or cpu) is known to be usable."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CbirError(f"--search-device cuda: torch {torch.__version__} sees no CUDA device")
    return torch


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


class Combining:
    """Flat combining of concurrent searches (see the module docstring): subclasses give ``d``,
    ``ntotal``, ``_ids`` (row → id, or their own ``_to_ids``) and ``_search(queries, k, params)`` →
    (similarities, rows); requests are combined only with others of the same ``params``."""

    d: int
    ntotal: int
    _ids: np.ndarray

    def _start_combining(self) -> None:
        self._run_lock = threading.Lock()  # the device: one combined search at a time
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[np.ndarray, int, object, Future]] = []
        self.batches = self.requests = 0

    def _check_params(self, params):
        """The search parameters ``_search`` takes (default: none)."""
        if params is not None:
            raise CbirError("exact GPU search takes no search parameters (nprobe/efSearch are for approximate indexes)")
        return None

    def search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        params = self._check_params(params)
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.d)
        k = max(1, min(int(k), self.ntotal))
        fut: Future = Future()
        with self._queue_lock:
            self._queue.append((q, k, params, fut))
        with self._run_lock:
            if not fut.done():  # nobody served it while this caller waited: serve everything queued
                self._serve()
        sims, rows = fut.result()
        return sims, self._to_ids(rows)

    def _to_ids(self, rows: np.ndarray) -> np.ndarray:
        """Our ids of the rows ``_search`` answered (-1 stays -1)."""
        return np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)

    def _serve(self) -> None:
        while True:
            with self._queue_lock:
                take, rows = [], 0
                while (
                    self._queue
                    and (not take or rows + len(self._queue[0][0]) <= MAX_COMBINED)
                    and (not take or self._queue[0][2] == take[0][2])
                ):
                    take.append(self._queue.pop(0))
                    rows += len(take[-1][0])
            if not take:
                return
            try:
                k = max(t[1] for t in take)
                sims, rows_ = self._search(np.concatenate([t[0] for t in take]), k, take[0][2])
                self.batches += 1
                self.requests += len(take)
                at = 0
                for q, kq, _, fut in take:
                    fut.set_result((sims[at : at + len(q), :kq], rows_[at : at + len(q), :kq]))
                    at += len(q)
            except BaseException as e:  # every waiting caller hears of it
                for *_, fut in take:
                    if not fut.done():
                        fut.set_exception(e)


class TorchFlat(Combining):
    """A Flat index's vectors on ``device`` (``cuda`` or ``cpu``), searched by matmul + top-k."""

    def __init__(
        self, index=None, device: str = "cuda", vectors: np.ndarray | None = None, ids: np.ndarray | None = None
    ):
        torch = import_torch(device)
        if vectors is None:
            vectors, ids = _flat_vectors(index)
        self._torch, self.device = torch, device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.ntotal, self.d = int(vectors.shape[0]), int(vectors.shape[1])
        self._x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(device=device, dtype=self.dtype)
        self._ids = np.arange(self.ntotal, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self._start_combining()

    def _search(self, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [q, k], row numbers [q, k]) for float32 ``queries``, best first."""
        torch = self._torch
        q = torch.from_numpy(queries).to(self.device)
        with torch.inference_mode():
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
        return sims, rows
