"""cbir: image embedding and retrieval with EfficientNet trunks, ONNX Runtime and FAISS.

The inference path (``cbir.engine``, ``cbir.copies``, ``cbir.index``, ``cbir.eval``) never imports
torch; ``cbir.models``, ``cbir.export`` and ``cbir.finetune`` do.

Three lines to embed images::

    import cbir
    emb = cbir.Embedder("model.onnx")
    vecs = emb.embed(["a.jpg", "b.png"])
"""

from __future__ import annotations

import os

# NumPy's own BLAS does only small products here (re-ranking a 400-item shortlist, metrics); with
# its threads spinning beside FAISS's OpenMP threads a re-ranked query took several times longer
# (BENCHMARKS.md). Set before NumPy loads; an explicit setting wins. FAISS, ONNX Runtime
# and torch keep their own thread pools.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from cbir.version import __version__

__all__ = ["Embedder", "Gallery", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import cbir` stays cheap and never pulls in onnxruntime/faiss by itself.
    if name == "Embedder":
        from cbir.engine.embedder import Embedder

        return Embedder
    if name == "Gallery":
        from cbir.index.gallery import Gallery

        return Gallery
    raise AttributeError(name)
