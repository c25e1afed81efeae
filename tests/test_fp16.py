"""FP16 graphs (checkable on CPU): cast placement, true-FP16 fidelity gate, overflow, TensorRT lint,
engine-cache keys and manifests, `cbir doctor`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cbir.errors import CbirError
from cbir.export.onnx import export_onnx

HEAD_OPS = {"Pow", "ReduceMean", "ReduceSum", "ReduceL2", "MatMul", "Log", "Div", "Greater"}


@pytest.fixture(scope="module")
def fp16_gem(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("fp16") / "gem16.onnx"
    summary = export_onnx(
        "tf_efficientnet_lite0",
        out,
        block=7,
        pooling="gem",
        pretrained=True,
        image_size=96,
        precision="fp16",
        parity_images=[str(p) for p in photos],
        calib=6,
    )
    return out, summary


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def test_fp16_graph_trunk_half_head_float(fp16_gem):
    path, summary = fp16_gem
    model = onnx.load(str(path))
    types = elem_types(model)
    g = model.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)  # trunk weights FP16
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    head = [n for n in g.node if n.op_type in HEAD_OPS]
    assert {n.op_type for n in head} >= {"Pow", "ReduceMean", "ReduceL2", "Div"}
    for n in head:  # the pooling/L2 island is FP32
        assert types[n.input[0]] == TensorProto.FLOAT, (n.op_type, n.name)
    casts = [n for n in g.node if n.op_type == "Cast"]
    to = sorted(a.i for n in casts for a in n.attribute if a.name == "to")
    assert TensorProto.FLOAT16 in to and TensorProto.FLOAT in to
    assert (
        summary["precision"] == "fp16"
        and json.loads({p.key: p.value for p in model.metadata_props}["cbir"])["precision"] == "fp16"
    )


def test_fp16_gate_passes_with_true_fp16_arithmetic(fp16_gem):
    _, summary = fp16_gem
    gate = summary["fp16_gate"]
    assert gate["passed"] and gate["reference"]["finite"]
    assert gate["reference"]["min_cosine"] >= 0.999 and gate["reference"]["topk_agreement"] >= 0.98
    assert 0.999 <= gate["torch_half"]["min_cosine"] and "ReferenceEvaluator" in gate["estimate"]
    assert gate["reference"]["min_cosine"] < 1.0 - 1e-7  # it really computed in FP16
    meta = json.loads({p.key: p.value for p in onnx.load(str(fp16_gem[0])).metadata_props}["cbir"])
    assert meta["extra"]["fidelity"]["min_cosine"] == pytest.approx(gate["reference"]["min_cosine"])


def test_overflowing_fp16_head_fails_the_gate(tmp_path, photos):
    """GeM with p = 8 in FP16 overflows (x^8 > 65504); ORT CPU would not notice."""
    imgs = [str(p) for p in photos[:4]]
    with pytest.raises(CbirError, match="FP16 fidelity gate failed.*non-finite"):
        export_onnx(
            "tf_efficientnet_lite0",
            tmp_path / "bad.onnx",
            block=7,
            pooling="gem",
            pretrained=True,
            image_size=96,
            precision="fp16",
            gem_p=8.0,
            fp16_head=True,
            parity_images=imgs,
            calib=4,
        )
    assert not (tmp_path / "bad.onnx").exists()
    # the same head kept in FP32 passes
    s = export_onnx(
        "tf_efficientnet_lite0",
        tmp_path / "ok.onnx",
        block=7,
        pooling="gem",
        pretrained=True,
        image_size=96,
        precision="fp16",
        gem_p=8.0,
        parity_images=imgs,
        calib=4,
    )
    assert s["fp16_gate"]["passed"]


def test_tensorrt_lint(fp16_gem, lite0_onnx):
    from cbir.export.trt_lint import lint

    assert fp16_gem[1]["tensorrt_lint"]["ok"] and lint(str(lite0_onnx))["tensorrt10"]
    nodes = [helper.make_node("NonZero", ["x"], ["y"]), helper.make_node("Foo", ["y"], ["z"], domain="custom")]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.INT64, [1, None])],
    )
    r = lint(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    assert not r["ok"] and any("NonZero" in p for p in r["problems"]) and any("plugin" in p for p in r["problems"])
    g2 = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    r2 = lint(helper.make_model(g2, opset_imports=[helper.make_opsetid("", 23)]))
    assert r2["tensorrt11"] and not r2["tensorrt10"]


def test_engine_cache_keys_and_staleness(tmp_path):
    from cbir.engine.backends.tensorrt_plan import Profile, cache_key, is_fresh, sha256_file, write_manifest

    base = ("a" * 64, "10.16.0", "NVIDIA H100", "9.0", Profile(), 4.0)
    key = cache_key(*base)
    variants = [
        ("b" * 64,) + base[1:],
        base[:1] + ("11.1.0",) + base[2:],
        base[:2] + ("NVIDIA L4",) + base[3:],
        base[:3] + ("8.9",) + base[4:],
        base[:4] + (Profile(1, 16, 128),) + base[5:],
        base[:5] + (2.0,),
    ]
    assert len({cache_key(*v) for v in variants} | {key}) == 7
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine bytes")
    assert not is_fresh(plan, key)  # no manifest
    write_manifest(plan, {"key": key, "plan_sha256": sha256_file(plan)})
    assert is_fresh(plan, key) and not is_fresh(plan, cache_key(*variants[1]))
    plan.write_bytes(b"tampered")
    assert not is_fresh(plan, key)
    with pytest.raises(CbirError, match="1 ≤ min ≤ opt ≤ max"):
        Profile(8, 4, 16)


def test_tensorrt_paths_fail_clearly_without_tensorrt(lite0_onnx, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: tests/gpu covers it")
    except ImportError:
        pass
    from cbir.cli import main

    assert main(["compile", str(lite0_onnx), "-o", str(tmp_path / "m.plan")]) == 2
    from cbir.engine.embedder import Embedder

    with pytest.raises(CbirError, match="no manifest|TensorRT is not installed"):
        Embedder(tmp_path / "m.plan", backend="tensorrt")


def test_doctor_reports_cpu_ok(capsys):
    from cbir.backend_checks import tiny_reference
    from cbir.cli import main

    rc = main(["doctor", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["cpu_path_ok"]
    by = {b["name"]: b for b in out["backends"]}
    assert by["onnxruntime-cpu"]["available"] and "matches" in by["onnxruntime-cpu"]["check"]
    assert by["faiss-cpu"]["available"]
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "faiss-gpu", "torch-cuda"):
        if not by[name]["available"]:
            assert by[name]["reason"]
    ref = tiny_reference()
    np.testing.assert_allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-6)
