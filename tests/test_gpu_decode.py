"""`--decode gpu` plumbing (issue 27) on the CPU: the device pipeline with an OpenCV stand-in for
nvImageCodec (JPEG only, like nvJPEG, and it refuses what it cannot decode) and the torch runner on
the CPU. The real decoder runs in tests/gpu. What this shows: input order, the per-image CPU
fallback for what the decoder refuses, every bad file reported by name, device-side resizing close
to the CPU preprocessing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cbir.engine.embedder import Embedder
from cbir.errors import CbirError
from conftest import make_broken_files, make_gallery


class CvJpegDecoder:
    device = "cpu"

    def __init__(self):
        self.seen = 0

    def pixels(self, data: bytes):
        if not data.startswith(b"\xff\xd8"):
            return None
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
        return None if a is None else a.shape[0] * a.shape[1] * 64

    def decode(self, datas):
        self.seen += len(datas)
        out = []
        for d in datas:
            a = cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR_RGB) if d.startswith(b"\xff\xd8") else None
            out.append(None if a is None else torch.from_numpy(a))
        return out


def test_device_pipeline_order_fallback_errors(lite0_onnx, embedder, photos, tmp_path):
    files = make_gallery(tmp_path / "g", photos, 9)  # JPEGs and PNGs (the PNGs take the CPU path)
    bad = make_broken_files(tmp_path / "bad", files[1])
    dec = CvJpegDecoder()
    gpu = Embedder(lite0_onnx, backend="torch", device="cpu", decode=dec)
    srcs = [
        str(files[0]),
        str(bad["truncated"]),
        *map(str, files[1:]),
        str(bad["bomb"]),
        files[2].read_bytes(),
        str(bad["dangling"]),
        np.asarray(cv2.imread(str(files[3]))[..., ::-1]),
    ]
    res = gpu.embed_files(srcs, batch_size=4)
    ref = embedder.embed_files(srcs, batch_size=4)
    assert list(res.indices) == list(ref.indices) == [0] + list(range(2, 10)) + [11, 13]
    assert [(i, s) for i, s, _ in res.errors] == [(i, s) for i, s, _ in ref.errors]
    reasons = {s: r for _, s, r in res.errors}
    assert "decompression bomb" in reasons[str(bad["bomb"])] and "no such file" in reasons[str(bad["dangling"])]
    assert (
        dec.seen == 7
    )  # the JPEG files and the JPEG bytes; PNGs, the truncated JPEG's header parse and the array did not go
    cos = np.sum(res.vectors * ref.vectors, axis=1)
    assert cos.min() >= 0.99, cos  # device-side resize vs OpenCV's INTER_AREA
    assert res.timings.images == 11 and res.timings.failed == 3


def test_decode_gpu_refusals(lite0_onnx):
    with pytest.raises(CbirError, match="--decode gpu: --backend onnxruntime runs on the CPU"):
        Embedder(lite0_onnx, decode="gpu")
    with pytest.raises(CbirError, match="--decode 'fpga'"):
        Embedder(lite0_onnx, decode="fpga")


def test_the_hardware_jpeg_decoder_is_asked_for_first_and_refusal_falls_back():
    """``_decoder`` names nvImageCodec's backends in order (hardware JPEG first); a build that refuses
    the list (no such backend kind, an older version) gets the library's default decoder."""
    import types

    from cbir.engine.gpu_decode import _decoder

    made = []

    def fake(refuse: bool):
        class Decoder:
            def __init__(self, device_id=0, backends=None):
                if refuse and backends is not None:
                    raise RuntimeError("unsupported backend")
                made.append((device_id, None if backends is None else [b.kind for b in backends]))

        return types.SimpleNamespace(
            Backend=lambda kind: types.SimpleNamespace(kind=kind),
            BackendKind=types.SimpleNamespace(
                HW_GPU_ONLY="hw", GPU_ONLY="gpu", HYBRID_CPU_GPU="hybrid", CPU_ONLY="cpu"
            ),
            Decoder=Decoder,
        )

    _, kinds = _decoder(fake(False), 1)
    assert kinds[0] == "HW_GPU_ONLY" and made[-1] == (1, ["hw", "gpu", "hybrid", "cpu"])
    _, kinds = _decoder(fake(True), 0)
    assert kinds == ["default"] and made[-1] == (0, None)
