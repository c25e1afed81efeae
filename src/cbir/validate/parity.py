"""Parity gate: an artifact's vectors vs the reference vectors on the same real photos.

``compare`` is pure NumPy: min/mean cosine per vector, and top-k agreement of the rankings the
two sets of vectors induce among themselves (each vector queried against all). ``parity_gate``
runs an exported FP32 ONNX file on ONNX Runtime against its PyTorch module (torch imported lazily).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cbir.errors import CbirError

FP32_MIN_COSINE = 0.99999


@dataclass
class Fidelity:
    n: int
    min_cosine: float
    mean_cosine: float
    topk_agreement: float
    k: int

    def as_dict(self) -> dict:
        return asdict(self)


def compare(ref: np.ndarray, test: np.ndarray, k: int = 10) -> Fidelity:
    """Cosine of matching rows and the mean overlap of their top-k neighbour sets (k capped at n−1)."""
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    if ref.shape != test.shape:
        raise CbirError(f"parity: shapes differ: reference {ref.shape}, artifact {test.shape}")
    cos = np.sum(ref * test, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(test, axis=1) + 1e-12)
    n = len(ref)
    kk = min(k, n - 1)
    agree = 1.0
    if kk > 0:

        def topk(v: np.ndarray) -> np.ndarray:
            s = v @ v.T
            np.fill_diagonal(s, -np.inf)
            return np.argsort(-s, axis=1, kind="stable")[:, :kk]

        a, b = topk(ref), topk(test)
        agree = float(np.mean([len(set(x) & set(y)) / kk for x, y in zip(a, b)]))
    return Fidelity(n, float(cos.min()), float(cos.mean()), agree, kk)


def reference_vectors(model, batch: np.ndarray) -> np.ndarray:
    """The PyTorch module's output for a uint8 batch (the parity reference)."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def _photo_batch(info, images: list | None) -> np.ndarray:
    from cbir.engine.preprocess import Preprocess
    from cbir.samples import sample_photos

    pp = Preprocess.for_model(info)
    return np.stack([pp(img) for img in (list(images) if images else sample_photos())])


def _check(fid: Fidelity, got: np.ndarray, info, threshold: float, what: str) -> Fidelity:
    if not np.isfinite(got).all() or fid.min_cosine < threshold:
        raise CbirError(
            f"parity gate failed for {info.arch} Block {info.block} {info.pooling}: min cosine of the {what} "
            f"{fid.min_cosine:.7f} < {threshold} between ONNX Runtime and PyTorch on {fid.n} vectors"
        )
    return fid


def parity_gate(model, onnx_path, info, images: list | None = None, min_cosine: float | None = None):
    """ONNX Runtime vs PyTorch on real photos; raises CbirError below ``min_cosine`` (0.99999)."""
    from cbir.engine.backends.onnxruntime import OrtRunner, load_session

    batch = _photo_batch(info, images)
    ref = reference_vectors(model, batch)
    runner = OrtRunner(load_session(onnx_path), source=str(onnx_path))
    got = np.concatenate([runner.run(batch[i : i + 8]) for i in range(0, len(batch), 8)])
    return _check(compare(ref, got), got, info, FP32_MIN_COSINE if min_cosine is None else min_cosine, "embeddings")


def regions_gate(model, onnx_path, info, images: list | None = None, min_cosine: float | None = None):
    """The ``regions`` output of ONNX Runtime vs ``model.forward_with_regions`` (every regional vector)."""
    import torch

    from cbir.engine.backends.onnxruntime import OrtRunner, load_session

    batch = _photo_batch(info, images)
    with torch.no_grad():
        ref = model.forward_with_regions(torch.from_numpy(batch))[1].numpy()
    runner = OrtRunner(load_session(onnx_path), source=str(onnx_path))
    got = np.concatenate([runner.run_regions(batch[i : i + 8])[1] for i in range(0, len(batch), 8)])
    d = ref.shape[-1]
    return _check(
        compare(ref.reshape(-1, d), got.reshape(-1, d)),
        got,
        info,
        FP32_MIN_COSINE if min_cosine is None else min_cosine,
        "regional vectors",
    )
