"""Metrics against hand-computed rankings; protocol splits; bench commands on a tiny real set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.eval import metrics
from cbir.eval.protocol import load_dataset, stratified_split
from conftest import make_gallery


def test_ap_by_hand():
    # ranking: R N R N N, R_q = 3 (one relevant item never retrieved in this list)
    rel = np.array([[1, 0, 1, 0, 0]], bool)
    ap = metrics.average_precision(rel, np.array([3]))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert metrics.average_precision_at(rel, 3)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.precision_at(rel, 2)[0] == 0.5
    assert metrics.recall_at(rel, np.array([3]), 5)[0] == pytest.approx(2 / 3)


def test_no_relevant_items_gives_zero_not_nan():
    rel = np.zeros((1, 4), bool)
    assert metrics.average_precision(rel, np.array([0]))[0] == 0.0
    assert metrics.average_precision_at(rel, 4)[0] == 0.0
    assert metrics.recall_at(rel, np.array([0]), 4)[0] == 0.0


def test_ties_keep_gallery_order_and_exclude_self():
    scores = np.array([[0.5, 0.9, 0.5, 0.1]])
    ranking = metrics.rank_by_score(scores)
    np.testing.assert_array_equal(ranking, [[1, 0, 2, 3]])
    labels = np.array([0, 0, 1, 0])
    rel, n_rel = metrics.relevance(np.array([0]), labels, ranking)
    np.testing.assert_array_equal(rel, [[1, 1, 0, 1]])
    assert n_rel[0] == 3
    rel_x, n_rel_x = metrics.relevance(np.array([0]), labels, ranking, exclude=np.array([1]))
    np.testing.assert_array_equal(rel_x, [[1, 0, 1]])
    assert n_rel_x[0] == 2
    s = metrics.summarize(rel_x, n_rel_x, ks=(2,))
    assert s["mAP"] == pytest.approx((1 + 2 / 3) / 2) and s["P@2"] == 0.5 and s["R@2"] == 0.5


def test_stratified_split_is_per_class_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    tr, te = stratified_split(labels, 0)
    assert len(te) == 200 and all((labels[te] == c).sum() == 20 for c in range(10))
    assert not set(tr) & set(te)
    np.testing.assert_array_equal(te, stratified_split(labels, 0)[1])
    assert not np.array_equal(te, stratified_split(labels, 1)[1])


def test_dataset_layouts(tmp_path, photos):
    make_gallery(tmp_path / "folders", photos, 8)
    ds = load_dataset(tmp_path / "folders")
    assert ds.classes == ["a", "b"] and len(ds.paths) == 8
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in (0, 5, 100, 150):
        (flat / f"{n}.jpg").write_bytes(ds.paths[0].read_bytes())
    fds = load_dataset(flat)
    assert {p.stem: int(l) for p, l in zip(fds.paths, fds.labels)} == {"0": 0, "5": 0, "100": 1, "150": 1}
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    (one / "x.jpg").write_bytes(ds.paths[0].read_bytes())
    with pytest.raises(CbirError, match="at least 2 classes"):
        load_dataset(tmp_path / "one")


def test_bench_accuracy_and_latency_cli(lite0_onnx, photos, tmp_path, capsys):
    from cbir.cli import main

    data = tmp_path / "data"
    make_gallery(data, photos, 12)
    assert main(["bench", "accuracy", "--model", str(lite0_onnx), "--data", str(data), "--seeds", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seeds"] == 2 and r["images"] == 12 and set(r["per_class"]) == {"a", "b"}
    # 12 images, 6 per class, the query kept in its own ranking: every relevant image is in the
    # top 100, at most 6 of the top 10 can be relevant, and the query itself is first (AP > 1/6)
    m = r["metrics"]
    assert m["R@100"]["mean"] == 1.0 and m["P@10"]["mean"] <= 0.6 + 1e-9 and m["mAP"]["mean"] > 1 / 6
    assert (
        main(
            [
                "bench",
                "latency",
                "--model",
                str(lite0_onnx),
                "--batch-sizes",
                "1,4",
                "--concurrency",
                "1,4",
                "--data",
                str(data),
                "--repeats",
                "2",
                "--json",
            ]
        )
        == 0
    )
    lat = json.loads(capsys.readouterr().out)
    assert set(lat["model_only_images_per_s"]) == {"1", "4"} and lat["model_only_images_per_s"]["4"]["median"] > 0
    assert lat["end_to_end"]["files"] == 12 and lat["batch1_latency_ms"]["api"]["p99"] > 0
    assert [b["concurrency"] for b in lat["batcher"]] == [1, 4] and lat["peak_rss_mb"] > 0


def test_sweep_writes_reports_and_resumes(photos, tmp_path, capsys):
    from cbir.bench.sweep import sweep

    data = tmp_path / "data"
    make_gallery(data, photos, 10)
    out = tmp_path / "sweep"
    r = sweep(str(data), out, ["lite0"], [6], seeds=1, repeats=1, progress=False, backends=("openvino:fp32",))
    cell = r["cells"][0]
    ov = cell["backends"]["openvino:fp32"]
    assert ov["img_s_bs8"] > 0 and ov["ratio_vs_onnxruntime_bs8"] > 0 and abs(ov["delta_mAP"]) < 1e-3  # same FP32 maths
    assert cell["d"] == 192 and cell["weights"] == "imagenet" and cell["mAP"] > 0
    assert cell["img_s_bs32"] > 0 and cell["speedup_vs_torch"] > 0 and 0.5 < cell["gflops_per_image"] < 1.0
    for name in ("report.json", "report.csv", "report.md", "pareto.png", "cells/lite0_b6_gap.json"):
        assert (out / name).is_file(), name
    assert "| lite0 | 6 | 192 | imagenet |" in (out / "report.md").read_text()
    assert "| model | block | openvino:fp32 |" in (out / "report.md").read_text()
    assert r["machine"]["cores"] >= 1 and "onnxruntime" in r["machine"]["versions"]
    cell_file = out / "cells/lite0_b6_gap.json"
    written = cell_file.stat().st_mtime_ns
    again = sweep(str(data), out, ["lite0"], [6], seeds=1, repeats=1, progress=False)
    assert again["cells"][0] == cell and cell_file.stat().st_mtime_ns == written  # finished cell not redone


def test_onnx_flops_counts_convs(lite0_onnx):
    from cbir.bench.flops import onnx_flops

    # Lite0 to Block 7 at 224: ~0.36 GMAC (timm's full Lite0 is 0.41 GMAC including the 1280-ch head)
    assert 0.6e9 < onnx_flops(str(lite0_onnx)) < 0.8e9


def test_bench_search_reports_the_auto_choice(tmp_path, capsys):
    from cbir.cli import main

    assert (
        main(
            [
                "bench",
                "search",
                "--sizes",
                "25000",
                "--queries",
                "50",
                "--target-recall",
                "0.9",
                "--shard-size",
                "10000",
                "--workdir",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    (r,) = json.loads(capsys.readouterr().out)
    assert r["n"] == 25_000 and r["auto_choice"] == "IVF512,Flat" and r["search"]["nprobe"] >= 1
    assert r["tuning"]["recall_at_10"] >= 0.9 and r["recall_at_k"] >= 0.8  # fresh queries, not tuned on
    assert r["bytes"]["index.faiss"] > 25_000 * 320 * 4 and r["bytes"]["shards"] > 25_000 * 320 * 4
    assert r["peak_rss_mb"] > 0 and r["ms_per_query_batch1"] > 0 and r["ms_per_query_batch"] > 0
    assert not (tmp_path / "n25000").exists()  # removed unless --keep


def test_distractors_are_seeded_crops_of_the_sources_and_resume(tmp_path, photos, monkeypatch):
    """``cbir bench distractors --from``: n crops spread over the sources, inside them, at most
    ``SIDE`` px, the same for a seed; a killed run resumes without rewriting what exists; no
    source at all is one clear error."""
    from PIL import Image

    from cbir.bench import distractors
    from cbir.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(photos[:3]):
        Image.open(p).convert("RGB").resize((900, 600)).save(src / f"p{i}.png")
    out = tmp_path / "d"
    assert main(["bench", "distractors", str(out), "-n", "10", "--from", str(src), "--json"]) == 0
    files = sorted(out.rglob("*.jpg"))
    assert len(files) == 10 and sorted(len(list(d.iterdir())) for d in out.iterdir()) == [3, 3, 4]
    assert all(max(Image.open(f).size) <= distractors.SIDE for f in files)
    again = distractors.make(tmp_path / "d2", 10, [str(src)])
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "d2").rglob("*.jpg"))]
    files[0].unlink()
    assert distractors.make(out, 10, [str(src)])["written"] == 1 and again["written"] == 10
    rng = np.random.default_rng(0)
    for _ in range(200):  # every box lies inside the image, at least 64 px a side
        x0, y0, x1, y1 = distractors.crop_box(rng, 300, 200)
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200 and x1 - x0 >= 64 and y1 - y0 >= 64
    monkeypatch.setattr(distractors, "DEFAULT_SOURCES", (str(tmp_path / "none"),))
    with pytest.raises(CbirError, match="no distractor sources"):
        distractors.make(tmp_path / "d3", 1)


def test_bench_build_names_each_stage_its_bound_and_builds_both_ways(lite0_onnx, photos, tmp_path, capsys):
    """Every CPU stage at 1 and 2 workers, the model alone, the bound and what limits it, and two real
    builds of the same files (features apart / in the decode workers) indexing every one of them."""
    from cbir.cli import main

    make_gallery(tmp_path / "g", photos, 8)
    args = ["bench", "build", "--model", str(lite0_onnx), "--data", str(tmp_path / "g"), "--repeats", "1"]
    assert main([*args, "--images", "12", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["stages_images_per_s"]) == {"read", "decode", "local_features"} and r["images"] == 12
    assert all(set(v) == {"1", "2"} and min(v.values()) > 0 for v in r["stages_images_per_s"].values())
    assert r["files"] == 8 and r["model_images_per_s"] > 0 and r["limited_by"].startswith("cpu cores")
    b = r["bound_images_per_s"]
    assert b["cpu_cores_shared"] < min(b["model"], b["decode_and_local_features_pool"])
    apart, fused = r["builds"]
    assert apart["images"] == fused["images"] == 12  # the cycled inputs, one symlink each
    assert apart["separate_features_s"] > 0 and fused["timings"]["local_features_in_decode"] > 0
    assert main([*args, "--workers", "1"]) == 0 and "limited by cpu cores" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["bench", "build", "--model", str(lite0_onnx), "--data", str(tmp_path / "empty")]) != 0
    assert "--data" in capsys.readouterr().err


def test_sweep_device_builds_each_cell_from_its_spec_beside_the_cpu_report(tmp_path, capsys):
    """No export: each cell's model is built in torch from its spec; the CPU report's columns and the
    paper's mAP stand beside it; report.json / report.md / pareto.png are written."""
    from cbir.cli import main

    cpu = {"cells": [{"model": "b0", "block": 7, "img_s_bs32": 170.0, "p50_ms_bs1": 4.0, "mAP": None}]}
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    args = ["bench", "sweep-device", "--out", str(tmp_path / "sd"), "--device", "cpu", "--archs", "b0"]
    args += [
        "--image-size",
        "64",
        "--batch",
        "4",
        "--repeats",
        "1",
        "--runs",
        "3",
        "--cpu-report",
        str(tmp_path / "cpu.json"),
    ]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    b6, b7 = r["cells"]
    assert (b6["block"], b7["block"], b6["d"], b7["d"]) == (6, 7, 192, 320)
    assert b7["cpu_img_s_bs32"] == 170.0 and b6["cpu_img_s_bs32"] is None and b7["paper_mAP"] == 0.913
    assert b7["img_s_bs4"] > 0 and 0 < b7["p50_ms_bs1"] <= b7["p99_ms_bs1"] and b7["providers"] == ["torch-cpu-fp32"]
    assert {p.name for p in (tmp_path / "sd").iterdir()} >= {"report.json", "report.md"}
    assert "| b0 | 7 | 320 | 64 |" in (tmp_path / "sd" / "report.md").read_text()
