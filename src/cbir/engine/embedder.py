"""``Embedder``: the Python API over a backend, the preprocessing, bulk mode and the dynamic batcher.

emb = cbir.Embedder("model.onnx")          # ONNX Runtime CPU, all cores
vecs = emb.embed(["a.jpg", "b.png"])       # paths, bytes, PIL images or NumPy arrays -> [N, D]
res = emb.embed_files(paths)               # bulk: vectors for the good files, errors for the bad
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from cbir.engine.backends import load_backend
from cbir.engine.backends.base import AUTO_BATCH_CANDIDATES
from cbir.engine.batcher import DynamicBatcher
from cbir.engine.bulk import Batch, Side, Timings, iter_batches
from cbir.engine.preprocess import ImageError, ImageSource, Preprocess
from cbir.errors import CbirError
from cbir.modelinfo import ModelInfo


@dataclass
class EmbedResult:
    """Bulk output: ``vectors[i]`` belongs to input ``indices[i]``; ``errors`` = [(index, source, reason)]."""

    vectors: np.ndarray
    indices: np.ndarray
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    regions: np.ndarray | None = None  # [N, R, D] with ``regions=True``


_auto_batch: dict[tuple, int] = {}


def measure_batch_size(
    run, shape: tuple[int, int], candidates=AUTO_BATCH_CANDIDATES, seconds: float = 0.12, rounds: int = 3
) -> dict:
    """Best img/s of ``run`` per candidate batch size over ``rounds`` round-robin passes of ``seconds``
    each (round-robin and best-of: a burst of other load on a shared machine hits one pass, not the
    verdict)."""
    h, w = shape
    x = np.random.default_rng(0).integers(0, 256, (max(candidates), h, w, 3), dtype=np.uint8)
    rates = {b: 0.0 for b in candidates}
    for b in candidates:
        run(x[:b])  # warm-up: allocations for this shape
    for _ in range(rounds):
        for b in candidates:
            n, t0 = 0, time.perf_counter()
            while (dt := time.perf_counter() - t0) < seconds or n == 0:
                run(x[:b])
                n += b
            rates[b] = max(rates[b], n / dt)
    return rates


class Embedder:
    """Embeds images with an exported cbir model. Defaults: ONNX Runtime CPU, threads and decode
    workers = all cores, the model's own resize policy, filter and resampling, and batch size
    ``auto``: the fastest of the runner's ``batch_candidates`` (1, 4, 8, 16, 32 on the CPU; up to
    the engine profile's maximum on TensorRT, 256 for torch on CUDA) images per call, measured
    once per process and model (about a second; on these 2-core CPUs 1–8 beat 32 per image),
    unless ``batch_size`` is given. ``decode``: ``cpu`` (default) or ``gpu`` (bulk mode only:
    nvImageCodec on the device, ``cbir.engine.gpu_decode``; GPU backends)."""

    def __init__(
        self,
        model: str | os.PathLike,
        backend: str = "onnxruntime",
        threads: int | None = None,
        workers: int | None = None,
        batch_size: int | None = None,
        max_pixels: int | None = None,
        resampling: str | None = None,
        precision: str | None = None,
        device: str | None = None,
        decode: str | object = "cpu",
        **backend_options,
    ):
        if threads is not None:
            backend_options["threads"] = threads
        if device is not None:  # backends that run on a chosen device (torch)
            backend_options["device"] = device
        if precision is not None:  # backends that pick a precision at load (openvino)
            backend_options["precision"] = precision
        self.model_path = os.fspath(model)
        self.runner = load_backend(self.model_path, backend, **backend_options)
        self.info: ModelInfo = self.runner.info
        kw = {} if max_pixels is None else {"max_pixels": max_pixels}
        if resampling is not None:  # e.g. to compare policies in a benchmark; an index refuses a mismatch
            kw["resampling"] = resampling
        self.preprocess = Preprocess.for_model(self.info, **kw)
        self.workers = workers
        self.batch_size = batch_size
        self.decoder = self._open_decoder(decode)

    def _open_decoder(self, decode: str | object):
        """None for CPU decode; for ``gpu``, nvImageCodec on the runner's device (a decoder object
        with ``device`` and ``decode`` is taken as it is)."""
        if decode == "cpu":
            return None
        if decode == "gpu":
            if not self.runner.on_gpu:
                raise CbirError(
                    f"--decode gpu: --backend {self.runner.name} runs on the CPU; use torch (cuda), "
                    f"tensorrt or onnxruntime-cuda/-trt"
                )
            from cbir.engine.gpu_decode import NvDecoder

            return NvDecoder(self.runner.gpu_index)
        if isinstance(decode, str):
            raise CbirError(f"--decode {decode!r}: choose cpu or gpu")
        return decode

    @property
    def auto_batch_size(self) -> int:
        """The measured fastest batch size for this model, backend and thread count (cached per process)."""
        key = (
            os.path.abspath(self.model_path),
            self.runner.name,
            self.runner.providers[0] if self.runner.providers else "",
        )
        if key not in _auto_batch:
            rates = measure_batch_size(self.runner.run, tuple(self.info.input_size), self.runner.batch_candidates)
            _auto_batch[key] = max(rates, key=rates.get)
        return _auto_batch[key]

    def resolve_batch_size(self, batch_size: int | None = None) -> int:
        """``batch_size``, else the one given at construction, else ``auto_batch_size``."""
        return batch_size or self.batch_size or self.auto_batch_size

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def num_regions(self) -> int:
        """Regional descriptors per image of a model exported with ``--regions`` (0 otherwise)."""
        return int(self.info.extra.get("regions", 0))

    def _run_for(self, regions: bool):
        if not regions:
            return self.runner.run
        if not self.num_regions:
            raise CbirError(f"{self.model_path}: the model has no regional descriptors (export it with --regions)")
        if not hasattr(self.runner, "run_regions"):
            raise CbirError(f"--backend {self.runner.name}: does not return regional descriptors; use onnxruntime")
        return self.runner.run_regions

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model alone: uint8 [N, H, W, 3] -> float32 [N, D]."""
        return self.runner.run(batch)

    def embed_one(self, image: ImageSource) -> np.ndarray:
        """One image -> [D]. Raises ``ImageError`` for a bad image."""
        h, w = self.preprocess.size
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (h, w, 3):
            row = image  # already model input: no copy, no PIL round trip
        else:
            row = self.preprocess(image)
        return self.runner.run(row[None])[0]

    def embed(self, images: ImageSource | Sequence[ImageSource], batch_size: int | None = None) -> np.ndarray:
        """Images -> float32 [N, D] in input order. Raises ``ImageError`` naming the first bad image
        (use ``embed_files`` to skip bad files instead)."""
        if not isinstance(images, (list, tuple)):
            return self.embed_one(images)[None]
        if len(images) == 1:
            return self.embed_one(images[0])[None]
        res = self.embed_files(images, batch_size=batch_size)
        if res.errors:
            _, source, reason = res.errors[0]
            raise ImageError(source, reason)
        return res.vectors

    def iter_batches(
        self,
        sources: Iterable[ImageSource],
        batch_size: int | None = None,
        hash_files: bool = False,
        timings: Timings | None = None,
        regions: bool = False,
        side: Side | None = None,
    ) -> Iterator[Batch]:
        """Lower-level bulk iterator (see ``cbir.engine.bulk.iter_batches``); ``regions``: batches
        also carry the regional descriptors; ``side``: more work per file in the decode workers."""
        if self.decoder is not None and not regions:
            from cbir.engine.gpu_decode import iter_batches_device

            return iter_batches_device(
                sources,
                self.runner,
                self.preprocess,
                self.decoder,
                self.resolve_batch_size(batch_size),
                self.workers,
                hash_files,
                timings,
                side,
            )
        submit = None if regions else self.runner.submit  # regions come from run_regions, one batch at a time
        return iter_batches(
            sources,
            self._run_for(regions),
            self.preprocess,
            self.resolve_batch_size(batch_size),
            self.workers,
            hash_files=hash_files,
            timings=timings,
            submit=submit,
            in_flight=1 if regions else self.runner.slots,
            side=side,
        )

    def embed_files(
        self,
        sources: Sequence[ImageSource],
        batch_size: int | None = None,
        progress: bool = False,
        regions: bool = False,
    ) -> EmbedResult:
        """Bulk mode: every input ends up in ``indices`` (with a vector) or in ``errors``."""
        timings = Timings()
        vecs, idx, errors, regs = [], [], [], []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(sources), unit="img", file=sys.stderr, dynamic_ncols=True)
        for b in self.iter_batches(sources, batch_size, timings=timings, regions=regions):
            if len(b.indices):
                vecs.append(b.vectors)
                if regions:
                    regs.append(b.regions)
                idx.extend(b.indices)
            errors.extend(b.errors)
            if bar is not None:
                bar.update(len(b.indices) + len(b.errors))
        if bar is not None:
            bar.close()
        vectors = np.concatenate(vecs) if vecs else np.empty((0, self.dim), np.float32)
        reg = None
        if regions:
            reg = np.concatenate(regs) if regs else np.empty((0, self.num_regions, self.dim), np.float32)
        return EmbedResult(vectors, np.asarray(idx, np.int64), errors, timings, reg)

    def batcher(
        self,
        max_batch: int | None = None,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        timeout_s: float | None = None,
    ) -> DynamicBatcher:
        """A dynamic batcher over this model (close it, or use it as a context manager); ``max_batch``
        defaults to the resolved batch size (``auto``: measured)."""
        return DynamicBatcher(
            self.runner.run, self.preprocess, self.resolve_batch_size(max_batch), max_delay_ms, max_queue, timeout_s
        )
