"""GPU decode for bulk embedding (``--decode gpu``): JPEG bytes decoded in batches by nvImageCodec on
the device, resized there with the model's policy, and handed to the runner's ``run_torch`` as one
uint8 [N, H, W, 3] CUDA tensor: no host round trip between the decoder and the model.

Files are read on a thread pool (the next batch is read while this one runs). Per image, what the
GPU decoder refuses (formats it has no codec for, broken or truncated files, images over the
pixel limit) goes through the CPU preprocessing instead, which also produces the precise error
for a broken file: nothing is lost, and the report names the file. Non-path inputs: bytes go to
the decoder, PIL images and arrays to the CPU path.

Resize on the device mirrors ``Preprocess.resample``: centre crop for ``crop``; with the
``opencv`` policy, area averaging with fractional box weights (``area_weights``, as INTER_AREA)
when an axis shrinks, else the model's filter
(bicubic: the same a = -0.75 kernel as OpenCV); with ``pillow``, the antialiased filter. Area
averaging over non-integer ratios and nvJPEG's IDCT/upsampling are close to, not bit-equal with,
OpenCV and libjpeg-turbo: the GPU test gates cosine ≥ 0.99 per image against CPU decode and
``cbir bench latency`` reports both. CPU decode stays the default.

Optional and lazily imported: torch, and nvImageCodec (``nvidia-nvimgcodec-cu13[nvjpeg]``, in the
``gpu`` extra). ``iter_batches_device`` takes any decoder with ``device`` and
``decode(list[bytes]) -> list[tensor | None]``, so its plumbing is tested on the CPU with OpenCV.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from cbir.cores import all_cores
from cbir.engine.bulk import Batch, FileFacts, Side, Timings, read_source
from cbir.engine.preprocess import ImageError, ImageSource, Preprocess, describe
from cbir.errors import CbirError


def _decoder(nv, device_id: int):
    """(an nvImageCodec Decoder, its backends): the hardware JPEG decoder (A100/H100 have one) named
    first, then the CUDA and hybrid CPU-GPU decoders, then the CPU one; a build that refuses that
    list gets the library's default decoder."""
    kinds = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU", "CPU_ONLY")
    try:
        backends = [nv.Backend(getattr(nv.BackendKind, k)) for k in kinds]
        return nv.Decoder(device_id=device_id, backends=backends), list(kinds)
    except Exception:
        return nv.Decoder(device_id=device_id), ["default"]


class NvDecoder:
    """nvImageCodec's batched decoder on CUDA device ``device_id``: bytes -> RGB uint8 [h, w, 3]
    CUDA tensors (EXIF orientation applied), None for an image it cannot decode; ``backends`` says
    which backends it was given (``_decoder``)."""

    device = "cuda"

    def __init__(self, device_id: int = 0):
        try:
            import torch
            from nvidia import nvimgcodec
        except ImportError as e:
            raise CbirError(f"--decode gpu needs torch and nvImageCodec (pip install 'cbir[gpu]'): {e}") from None
        if not torch.cuda.is_available():
            raise CbirError(f"--decode gpu: torch {torch.__version__} sees no CUDA device")
        try:
            self._decoder, self.backends = _decoder(nvimgcodec, device_id)
            # nvImageCodec ≥ 0.6 names it SRGB and takes the channel layout apart (I_RGB: interleaved)
            rgb = getattr(nvimgcodec.ColorSpec, "RGB", None) or nvimgcodec.ColorSpec.SRGB
            layout = {"sample_format": nvimgcodec.SampleFormat.I_RGB} if hasattr(nvimgcodec, "SampleFormat") else {}
            self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True, color_spec=rgb, **layout)
        except Exception as e:
            raise CbirError(f"--decode gpu: nvImageCodec cannot start ({type(e).__name__}: {e})") from None
        self._nv, self._torch, self.device = nvimgcodec, torch, f"cuda:{device_id}"

    def pixels(self, data: bytes) -> int | None:
        """Width × height from the header, or None when nvImageCodec cannot parse it."""
        try:
            cs = self._nv.CodeStream(data)
            return int(cs.width) * int(cs.height)
        except Exception:
            return None

    def decode(self, datas: list[bytes]) -> list:
        try:
            images = self._decoder.decode(datas, params=self._params)
        except Exception:  # a batch the decoder rejects as a whole: every image takes the CPU path
            return [None] * len(datas)
        out = []
        for im in images:
            t = None if im is None else self._torch.as_tensor(im, device=self.device)
            out.append(
                t if t is not None and t.ndim == 3 and t.shape[2] == 3 and t.dtype == self._torch.uint8 else None
            )
        return out


def resize_on_device(img, pp: Preprocess):
    """RGB uint8 [h, w, 3] tensor -> [H, W, 3] with ``pp``'s resize policy, on the tensor's device."""
    import torch
    import torch.nn.functional as F

    h, w = pp.size
    box = pp.crop_box(img.shape[1], img.shape[0])
    if box is not None:
        left, top, right, bottom = (round(v) for v in box)
        img = img[top:bottom, left:right]
    if tuple(img.shape[:2]) == (h, w):
        return img
    x = img.permute(2, 0, 1)[None].float()
    if pp.resampling == "pillow":
        mode = pp.interpolation if pp.interpolation != "lanczos" else "bicubic"
        kw = {"antialias": mode in ("bilinear", "bicubic")} | ({} if mode == "nearest" else {"align_corners": False})
        y = F.interpolate(x, size=(h, w), mode=mode, **kw)
    elif img.shape[0] > h or img.shape[1] > w:
        ry = area_weights(img.shape[0], h, x.device)
        rx = area_weights(img.shape[1], w, x.device)
        y = torch.einsum("oh,nchw,pw->ncop", ry, x, rx)
    else:
        mode = {"lanczos": "bicubic"}.get(pp.interpolation, pp.interpolation)
        y = F.interpolate(x, size=(h, w), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return y.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


def area_weights(n_in: int, n_out: int, device):
    """[n_out, n_in] box-filter weights with fractional overlaps: output i averages input
    [i·s, (i+1)·s), s = n_in / n_out, as OpenCV's INTER_AREA does when it shrinks (separable)."""
    import torch

    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64) * s
    j = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(lo[:, None] + s, j[None, :] + 1) - torch.maximum(lo[:, None], j[None, :])).clamp_(min=0)
    return (overlap / s).to(device=device, dtype=torch.float32)


def _fetch(source: ImageSource, hash_files: bool) -> tuple[bytes | None, FileFacts]:
    if isinstance(source, (str, os.PathLike)):
        return read_source(source, hash_files)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), FileFacts()
    return None, FileFacts()  # PIL image or array: the CPU path


def iter_batches_device(
    sources: Iterable[ImageSource],
    runner,
    pp: Preprocess,
    decoder,
    batch_size: int = 64,
    workers: int | None = None,
    hash_files: bool = False,
    timings: Timings | None = None,
    side: Side | None = None,
) -> Iterator[Batch]:
    """Like ``bulk.iter_batches``, decoding on ``decoder.device`` and running ``runner.run_torch``;
    ``side`` runs in the read workers, on the file's bytes, before the device decodes them."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be ≥ 1")
    timings = timings if timings is not None else Timings()
    it = iter(enumerate(sources))
    pending: deque = deque()
    last = time.perf_counter()

    def cpu_row(src, data):
        """The CPU preprocessing of one image the decoder did not take (or its precise error)."""
        t0 = time.perf_counter()
        try:
            row = pp(data if data is not None else src)
        except ImageError as e:
            raise ImageError(describe(src), e.reason) from None
        timings.add(0.0, time.perf_counter() - t0)
        return row

    with ThreadPoolExecutor(max_workers=workers or all_cores(), thread_name_prefix="cbir-read") as pool:

        def read_next() -> None:
            chunk = [x for _, x in zip(range(batch_size), it)]
            if chunk:
                pending.append((chunk, [pool.submit(_timed_fetch, src, hash_files, timings, side) for _, src in chunk]))

        read_next()
        while pending:
            chunk, futs = pending.popleft()
            read_next()
            t0 = time.perf_counter()
            got, errors, facts = [], [], {}
            for (pos, src), fut in zip(chunk, futs):
                try:
                    data, facts[pos] = fut.result()
                    got.append((pos, src, data))
                except ImageError as e:
                    errors.append((pos, e.source, e.reason))
            timings.wait += time.perf_counter() - t0
            t1 = time.perf_counter()
            rows, ok = _rows_on_device(got, decoder, pp, pool, cpu_row, errors)
            t2 = time.perf_counter()
            timings.decode += t2 - t1
            vectors = np.empty((0, 0), np.float32)
            if rows:
                out = runner.run_torch(torch.stack(rows))
                vectors = out.cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)
            now = time.perf_counter()
            timings.infer += now - t2
            timings.images += len(ok)
            timings.failed += len(errors)
            timings.wall += now - last
            last = now
            yield Batch(ok, vectors, sorted(errors), {p: facts[p] for p in ok if p in facts})


def _rows_on_device(got: list, decoder, pp: Preprocess, pool, cpu_row, errors: list) -> tuple[list, list[int]]:
    """(device rows, their positions) of one batch: JPEGs the decoder takes decoded and resized on the
    device, the rest preprocessed on the CPU (``cpu_row``) and copied; failures appended to ``errors``."""
    import torch

    to_gpu = [
        i
        for i, (_, _, data) in enumerate(got)
        if data is not None and (decoder_pixels(decoder, data) or pp.max_pixels + 1) <= pp.max_pixels
    ]
    decoded = dict(zip(to_gpu, decoder.decode([got[i][2] for i in to_gpu]))) if to_gpu else {}
    cpu = {i: pool.submit(cpu_row, got[i][1], got[i][2]) for i in range(len(got)) if decoded.get(i) is None}
    rows, ok = [], []
    for i, (pos, src, _) in enumerate(got):
        if i in cpu:
            try:
                rows.append(torch.from_numpy(cpu[i].result()).to(decoder.device))
            except ImageError as e:
                errors.append((pos, e.source, e.reason))
                continue
            except Exception as e:  # a decoder bug must not kill the job: report it for this input
                errors.append((pos, describe(src), f"{type(e).__name__}: {e}"))
                continue
        else:
            rows.append(resize_on_device(decoded[i], pp))
        ok.append(pos)
    return rows, ok


def decoder_pixels(decoder, data: bytes) -> int | None:
    """The image's pixel count from the decoder's header parse (None: unknown, take the CPU path)."""
    fn = getattr(decoder, "pixels", None)
    return fn(data) if fn is not None else None


def _timed_fetch(source: ImageSource, hash_files: bool, timings: Timings, side: Side | None = None):
    t0 = time.perf_counter()
    data, facts = _fetch(source, hash_files)
    t1 = t2 = time.perf_counter()
    if side is not None:
        facts.side = side(data if data is not None else source, describe(source))
        t2 = time.perf_counter()
    timings.add(t1 - t0, 0.0, t2 - t1)
    return data, facts
