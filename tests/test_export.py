"""ONNX export: graph contract, metadata, parity with PyTorch and timm, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cbir.engine.backends.onnxruntime import OrtRunner, load_session
from cbir.engine.preprocess import Preprocess
from cbir.errors import CbirError
from cbir.export.onnx import export_onnx, graph_fingerprint
from cbir.modelinfo import METADATA_KEY


def test_graph_contract_and_metadata(lite0_onnx):
    model = onnx.load(str(lite0_onnx))
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [224, 224, 3]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["arch"] == "tf_efficientnet_lite0" and meta["block"] == 7 and meta["dim"] == 320
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["interpolation"] == "bicubic" and meta["resize"] == "squash"
    assert meta["fingerprint"] == graph_fingerprint(model)
    assert meta["weights"].startswith("offline:")


def test_dynamic_batch_and_unit_norm(lite0_onnx, photos):
    runner = OrtRunner(load_session(lite0_onnx))
    pp = Preprocess((224, 224))
    batch = np.stack([pp(p) for p in photos[:5]])
    full = runner.run(batch)
    assert full.shape == (5, 320) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    for n in (1, 3):
        np.testing.assert_allclose(runner.run(batch[:n]), full[:n], atol=1e-5)


@pytest.mark.parametrize("resampling,min_cos", [("pillow", 0.9999), ("opencv", 0.985)])
def test_matches_independent_timm_reference(lite0_onnx, photos, resampling, min_cos):
    """Lite0 Block 7 GAP vs timm's own network run to blocks[6] with torchvision preprocessing
    (Pillow antialiased bicubic), on every file of the default path (``Embedder.embed_files``).
    Tolerance: with the ``pillow`` policy the pixels are the reference's, so only float error is
    left (cos ≥ 0.9999); the default ``opencv`` policy resamples with another filter (area
    averaging when shrinking), which moves vectors a little: cos ≥ 0.985, mean ≥ 0.995 (measured
    on these 16 photos: min 0.990, mean 0.996)."""
    import timm
    from PIL import Image
    from torchvision import transforms

    from cbir.engine.embedder import Embedder
    from cbir.models.weights import load_pretrained

    net = timm.create_model("tf_efficientnet_lite0").eval()
    load_pretrained(net, "tf_efficientnet_lite0")
    tf = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        f = net.blocks(net.bn1(net.conv_stem(x))).mean(dim=(2, 3))
    ref = torch.nn.functional.normalize(f, dim=1).numpy()
    res = Embedder(lite0_onnx, resampling=resampling).embed_files([str(p) for p in photos])
    assert not res.errors and len(res.indices) == len(photos)
    cos = np.sum(ref[res.indices] * res.vectors, axis=1)
    assert cos.min() >= min_cos, cos
    if resampling == "opencv":
        assert cos.mean() >= 0.995, cos


@pytest.mark.parametrize("pooling", ["gem", "crow", "rcrow", "mac"])
def test_poolings_export_and_pass_parity(tmp_path, pooling):
    s = export_onnx(
        "tf_efficientnet_lite0", tmp_path / f"{pooling}.onnx", block=7, pooling=pooling, pretrained=True, image_size=160
    )
    assert s["min_cosine"] >= 0.99999 and s["dim"] == 320 and s["input"]["shape"][1:] == [160, 160, 3]


def test_whitening_is_folded_into_the_graph(tmp_path, photos):
    from cbir.vectors import fit

    rng = np.random.default_rng(0)
    w = fit(rng.normal(size=(2000, 192)), dim=64)
    w.save(tmp_path / "w.npz")
    s = export_onnx(
        "tf_efficientnet_lite0",
        tmp_path / "w.onnx",
        block=6,
        pooling="gap",
        image_size=128,
        whitening=tmp_path / "w.npz",
    )
    assert s["dim"] == 64
    runner = OrtRunner(load_session(tmp_path / "w.onnx"))
    assert runner.info.whitening == w.fingerprint and runner.info.dim == 64


def test_parity_gate_failure_is_loud_and_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(CbirError, match="parity gate failed"):
        export_onnx("tf_efficientnet_lite0", out, block=6, pooling="gap", image_size=96, min_cosine=1.0 + 1e-9)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_export_errors(tmp_path):
    with pytest.raises(CbirError, match="--arch 'effnet'"):
        export_onnx("effnet", tmp_path / "a.onnx")
    with pytest.raises(CbirError, match="--pooling 'avg'"):
        export_onnx("tf_efficientnet_lite0", tmp_path / "a.onnx", pooling="avg")
    with pytest.raises(CbirError, match="does not exist"):
        export_onnx("tf_efficientnet_lite0", tmp_path / "nodir" / "a.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(CbirError, match="not writable"):
            export_onnx("tf_efficientnet_lite0", ro / "a.onnx")
    finally:
        ro.chmod(0o700)


def test_cli_export_json(tmp_path, capsys):
    from cbir.cli import main

    out = tmp_path / "b0.onnx"
    assert (
        main(["export", "--arch", "efficientnet_b0", "--block", "6", "--image-size", "96", "-o", str(out), "--json"])
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert s["dim"] == 192 and s["min_cosine"] >= 0.99999 and len(s["sha256"]) == 64 and out.is_file()
    assert main(["export", "--arch", "nope", "-o", str(out)]) == 2
    assert "--arch 'nope'" in capsys.readouterr().err


def test_multi_scale_is_the_power_mean_of_single_scale_vectors(tmp_path, photos, lite0_onnx):
    """GeM multi-scale against an independent formula: each scale's vector from the exported
    single-scale trunk+pooling (torch, images resized the same way), power mean p = 3, L2."""
    from cbir.engine.embedder import Embedder
    from cbir.models.retrieval import RetrievalModel
    from cbir.models.trunk import build_trunk

    out = tmp_path / "ms.onnx"
    s = export_onnx("tf_efficientnet_lite0", out, block=7, pooling="gem", pretrained=True, scales=(1.0, 0.75))
    assert s["scales"] == [1.0, 0.75] and s["min_cosine"] > 0.9999
    emb = Embedder(out)
    assert emb.info.extra["scales"] == [1.0, 0.75]
    got = emb.embed([str(p) for p in photos[:3]])
    model = RetrievalModel(build_trunk("tf_efficientnet_lite0", 7, pretrained=True), "gem").eval()
    x = torch.from_numpy(np.stack([emb.preprocess(str(p)) for p in photos[:3]]))
    with torch.no_grad():
        xn = model.normalize(x)
        small = torch.nn.functional.interpolate(xn, size=(168, 168), mode="bilinear", align_corners=False)
        v1 = torch.nn.functional.normalize(model.pool(model.trunk(xn)), dim=-1)
        v2 = torch.nn.functional.normalize(model.pool(model.trunk(small)), dim=-1)
        want = torch.nn.functional.normalize(((v1**3 + v2**3) / 2) ** (1 / 3), dim=-1).numpy()
    assert (np.sum(got * want, axis=1) > 0.9999).all()
    single = Embedder(lite0_onnx).embed([str(p) for p in photos[:3]])
    assert got.shape == single.shape
    with pytest.raises(CbirError, match="regional CroW"):
        export_onnx("tf_efficientnet_lite0", tmp_path / "r.onnx", pooling="rcrow", scales=(1.0, 0.75))
    with pytest.raises(CbirError, match="between 0.25 and 4"):
        export_onnx("tf_efficientnet_lite0", tmp_path / "z.onnx", scales=(1.0, 9.0))
