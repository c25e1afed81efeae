"""IVF search on a GPU with PyTorch, for IVF-Flat and IVF-SQ8 galleries, where faiss-gpu is not
installed: the inverted lists of a trained FAISS index copied to ``device`` once and scanned there.

``TorchIVF(index, device)`` takes a FAISS ``IndexIVFFlat`` or ``IndexIVFScalarQuantizer`` (8-bit,
per-dimension ranges; by residual or not) and keeps on the device: the coarse centroids, and the
lists' vectors in **blocks** of ``BLOCK`` rows (a list of n rows owns ceil(n / BLOCK) blocks, the
last one padded with id -1), so that any set of lists is a gather of whole blocks. IVF-Flat is
stored in FP16 on CUDA (FP32 on the CPU, where it exists to be tested), IVF-SQ8 as its uint8 codes
(a quarter of FP32's memory) decoded on the fly: a vector is ``vmin + (code + 0.5) / 255 · vdiff``
per dimension (plus its list's centroid when encoded by residual), as FAISS decodes it, so
q · x = q · vmin + (q · vdiff / 255) · (code + 0.5) [+ q · centroid] is one matmul on the codes.

``search(queries, k, params)``: the ``nprobe`` nearest centroids of each query (``params.nprobe``,
else the FAISS index's ``nprobe`` when copied — the value ``cbir index tune`` chose), the blocks of
those lists gathered per query (compacted to the most any query of the batch needs), scored, top-k.
The candidates are exactly FAISS's for the same ``nprobe``, so recall equals FAISS CPU's at the
same setting up to FP16 near-ties. Queries run in chunks so the gathered blocks stay under
``GATHER_BYTES``. Concurrent searches are combined as ``TorchFlat``'s are (``torch_flat.Combining``).
"""

from __future__ import annotations

import math

import numpy as np

from cbir.errors import CbirError
from cbir.index.ann.torch_flat import Combining, TorchFlat, import_torch

BLOCK = 64  # rows per block of an inverted list
GATHER_BYTES = 1 << 30  # the most one chunk of queries gathers at once


def _lists(ivf) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(ids per list, codes per list as uint8 [n, code_size]) of a FAISS IVF index."""
    import faiss

    inv, cs = ivf.invlists, ivf.code_size
    ids, codes = [], []
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n == 0:
            ids.append(np.zeros(0, np.int64))
            codes.append(np.zeros((0, cs), np.uint8))
            continue
        ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64).copy())
        codes.append(faiss.rev_swig_ptr(inv.get_codes(lst), n * cs).reshape(n, cs).copy())
    return ids, codes


def _kind(index):
    """("flat" | "sq8", the IVF index) — or a clear refusal for anything else."""
    import faiss

    inner = faiss.downcast_index(index)
    name = type(inner).__name__
    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise CbirError("IVF search on the GPU needs an inner-product index")
    if name == "IndexIVFFlat":
        return "flat", inner
    if name == "IndexIVFScalarQuantizer" and inner.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        return "sq8", inner
    raise CbirError(
        f"--search-device: PyTorch searches Flat, IVF…,Flat and IVF…,SQ8 indexes, not {name}; "
        f"rebuild with one of those factories or search on the CPU"
    )


class TorchIVF(Combining):
    """A FAISS IVF-Flat / IVF-SQ8 index's lists on ``device``, scanned by gathered blocks (module docstring)."""

    def __init__(self, index, device: str = "cuda", block: int = BLOCK):
        import faiss

        torch = import_torch(device)
        self.kind, ivf = _kind(index)
        self._torch, self.device, self.block = torch, device, block
        self.d, self.ntotal, self.nlist, self.nprobe = ivf.d, int(ivf.ntotal), ivf.nlist, ivf.nprobe
        self.by_residual = bool(ivf.by_residual) if self.kind == "sq8" else False
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        centroids = ivf.quantizer.reconstruct_n(0, self.nlist).astype(np.float32)
        self._centroids = torch.from_numpy(centroids).to(device)
        ids, codes = _lists(ivf)
        nblocks = np.array([math.ceil(len(i) / block) for i in ids], np.int64)
        first = np.concatenate([[0], np.cumsum(nblocks)[:-1]]).astype(np.int64)
        total = int(nblocks.sum()) + 1  # the last block: all padding, what a masked gather points at
        block_ids = np.full((total, block), -1, np.int64)
        width = self.d * 4 if self.kind == "flat" else self.d
        data = np.zeros((total, block, width), np.uint8)
        owner = np.full(total, -1, np.int64)
        for lst, (i, c) in enumerate(zip(ids, codes)):
            rows = slice(first[lst] * block, first[lst] * block + len(i))
            block_ids.reshape(-1)[rows] = i
            data.reshape(-1, width)[rows] = c
            owner[first[lst] : first[lst] + nblocks[lst]] = lst
        if self.kind == "flat":
            self._blocks = torch.from_numpy(data.view(np.float32)).to(device=device, dtype=self.dtype)
        else:
            self._blocks = torch.from_numpy(data).to(device)
            trained = faiss.vector_to_array(ivf.sq.trained).astype(np.float32).reshape(2, self.d)
            self._vmin, self._vdiff = (torch.from_numpy(t.copy()).to(device) for t in trained)
        self._rows_of_block = torch.from_numpy(block_ids).to(device)
        self._owner = torch.from_numpy(owner).to(device)
        self._first = torch.from_numpy(first).to(device)
        self._nblocks = torch.from_numpy(nblocks).to(device)
        self.max_blocks = int(nblocks.max()) if len(nblocks) else 0
        self._start_combining()

    def _to_ids(self, rows: np.ndarray) -> np.ndarray:
        return rows  # ``_search`` answers the lists' ids

    def _check_params(self, params):
        nprobe = getattr(params, "nprobe", None) if params is not None else None
        if isinstance(params, dict):
            nprobe = params.get("nprobe")
        return int(min(max(int(nprobe or self.nprobe), 1), self.nlist))

    def memory_bytes(self) -> int:
        """Device bytes of the lists, their ids and the centroids."""
        t = (self._blocks, self._rows_of_block, self._centroids)
        return int(sum(x.numel() * x.element_size() for x in t))

    def _search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            q = torch.from_numpy(queries).to(self.device)
            probes = torch.topk(q @ self._centroids.T, min(nprobe, self.nlist), dim=1).indices
            blocks = self._blocks_of(probes)  # [q, m]
            per_query = blocks.shape[1] * self.block * self._blocks.shape[2] * self._blocks.element_size()
            step = max(1, GATHER_BYTES // per_query)
            outs = [self._scan(q[s : s + step], blocks[s : s + step], k) for s in range(0, len(q), step)]
            sims = torch.cat([o[0] for o in outs]).float().cpu().numpy()
            ids = torch.cat([o[1] for o in outs]).cpu().numpy()
        return sims, ids

    def _blocks_of(self, probes):
        """Block numbers [q, m] of each query's probed lists, valid ones first, padded with the
        all-padding block; m = the most any query of the chunk needs."""
        torch = self._torch
        steps = torch.arange(self.max_blocks, device=self.device)
        grid = self._first[probes][..., None] + steps  # [q, p, max_blocks]
        valid = steps < self._nblocks[probes][..., None]
        grid, valid = grid.reshape(len(probes), -1), valid.reshape(len(probes), -1)
        m = int(valid.sum(1).max()) if valid.numel() else 0
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)[:, : max(m, 1)]
        pad = self._blocks.shape[0] - 1
        return torch.where(valid.gather(1, order), grid.gather(1, order), pad)

    def _scan(self, q, blocks, k: int):
        """Top-k (scores, ids) of queries ``q`` over their ``blocks`` [q, m] (``_blocks_of``)."""
        torch = self._torch
        gathered = self._blocks[blocks]  # [q, m, block, w]
        n = blocks.shape[1] * self.block
        if self.kind == "flat":
            scores = torch.bmm(gathered.reshape(len(q), n, self.d), q.to(self.dtype)[:, :, None])[..., 0].float()
        else:
            qs = q * self._vdiff / 255.0
            codes = gathered.reshape(len(q), n, self.d).to(self.dtype)
            scores = torch.bmm(codes, qs.to(self.dtype)[:, :, None])[..., 0].float()
            scores += (q @ self._vmin + 0.5 * qs.sum(1))[:, None]
            if self.by_residual:  # q · its list's centroid, per block
                lists = self._owner[blocks].clamp(min=0)
                qc = torch.einsum("qd,qmd->qm", q, self._centroids[lists])
                scores += qc.repeat_interleave(self.block, dim=1)
        ids = self._rows_of_block[blocks].reshape(len(q), n)
        scores = scores.masked_fill(ids < 0, float("-inf"))
        kk = min(k, n)
        top = torch.topk(scores, kk, dim=1)
        got_s, got_i = top.values, ids.gather(1, top.indices)
        got_i = torch.where(torch.isinf(got_s), torch.full_like(got_i, -1), got_i)
        if kk < k:
            got_s = torch.cat([got_s, torch.full((len(q), k - kk), float("-inf"), device=self.device)], 1)
            got_i = torch.cat([got_i, torch.full((len(q), k - kk), -1, device=self.device)], 1)
        return got_s, got_i


def on_device(index, device: str):
    """The PyTorch searcher of a FAISS index on ``device``: ``TorchFlat`` for Flat indexes,
    ``TorchIVF`` for IVF-Flat / IVF-SQ8; anything else is refused with what to do."""
    import faiss

    if faiss.try_extract_index_ivf(index) is not None:
        return TorchIVF(index, device)
    return TorchFlat(index, device)
