"""Fine-tuning a tiny real model for a step or two; the checkpoint exports and embeds; resume; bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbir.errors import CbirError
from cbir.finetune.recipe import Recipe, finetune, parameter_layers
from conftest import make_gallery


@pytest.fixture
def data(tmp_path, photos):
    root = tmp_path / "data"
    make_gallery(root, photos, 12)
    (root / "c").mkdir()
    for i, p in enumerate(sorted((root / "a").iterdir())[:3]):  # an imbalanced third class
        (root / "c" / f"x{i}.jpg").write_bytes(p.read_bytes())
    return root


def test_finetune_exports_and_embeds(data, tmp_path):
    from cbir.engine.embedder import Embedder
    from cbir.export.onnx import export_onnx

    out = tmp_path / "ft.pt"
    meta = finetune(
        Recipe(
            "tf_efficientnet_lite0",
            str(data),
            str(out),
            head_epochs=1,
            ft_epochs=1,
            batch_size=4,
            image_size=64,
            unfreeze_top=10,
        ),
        progress=False,
    )
    assert [h["phase"] for h in meta["history"]] == ["head", "ft"] and meta["classes"] == ["a", "b", "c"]
    assert meta["unfrozen_layers"] == 10 and meta["input_size"] == 64 and meta["split_seed"] == 0
    ck = torch.load(out, weights_only=False)
    assert ck["meta"]["arch"] == "tf_efficientnet_lite0" and "classifier.weight" in ck["state_dict"]
    assert not (tmp_path / "ft.pt.resume.pt").exists()
    s = export_onnx(None, tmp_path / "ft.onnx", block=6, weights=out)
    assert s["arch"] == "tf_efficientnet_lite0" and s["input"]["shape"][1] == 64 and s["min_cosine"] >= 0.99999
    vecs = Embedder(tmp_path / "ft.onnx").embed([str(p) for p in sorted(data.rglob("*.jpg"))[:3]])
    assert vecs.shape == (3, 192) and np.isfinite(vecs).all()
    from cbir.bench.accuracy import bench_accuracy

    acc = bench_accuracy(str(tmp_path / "ft.onnx"), str(data), seeds=3)
    assert acc["split_seed"] == 0 and acc["seeds"] == 1  # only the held-out split of its own seed


def test_training_changes_only_unfrozen_layers(data, tmp_path):
    import timm

    out = tmp_path / "ft.pt"
    finetune(
        Recipe(
            "tf_efficientnet_lite0",
            str(data),
            str(out),
            head_epochs=0,
            ft_epochs=1,
            batch_size=4,
            image_size=64,
            unfreeze_top=6,
            ft_lr=1e-3,
        ),
        progress=False,
    )
    state = torch.load(out, weights_only=False)["state_dict"]
    ref = timm.create_model("tf_efficientnet_lite0", num_classes=3)
    from cbir.models.weights import load_pretrained

    src = timm.create_model("tf_efficientnet_lite0")
    load_pretrained(src, "tf_efficientnet_lite0")
    assert torch.equal(state["conv_stem.weight"], src.state_dict()["conv_stem.weight"])  # frozen
    for k in ("bn1.running_mean", "blocks.6.0.bn1.running_var"):  # BatchNorm statistics never move
        assert torch.equal(state[k], src.state_dict()[k]), k
    assert not torch.equal(state["conv_head.weight"], src.state_dict()["conv_head.weight"])  # unfrozen, trained
    layers = parameter_layers(ref)
    assert type(layers[-1]).__name__ == "Linear" and layers[0] is ref.conv_stem and layers[1] is ref.bn1


def test_killed_run_resumes_from_last_epoch(data, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ft.pt"
    resume = tmp_path / "ft.pt.resume.pt"
    cmd = [
        sys.executable,
        "-m",
        "cbir",
        "finetune",
        "--arch",
        "tf_efficientnet_lite0",
        "--data",
        str(data),
        "--out",
        str(out),
        "--head-epochs",
        "1",
        "--ft-epochs",
        "12",
        "--image-size",
        "96",
        "--batch-size",
        "4",
        "--unfreeze-top",
        "20",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if resume.is_file():
            ck = torch.load(resume, weights_only=False)
            if ck["phase"] == "ft" and ck["epoch"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                done_before = ck["epoch"]
                break
        time.sleep(0.05)
    proc.wait()
    assert done_before is not None and not out.exists(), "the run finished before it could be killed"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    meta = torch.load(out, weights_only=False)["meta"]
    ft = [h["epoch"] for h in meta["history"] if h["phase"] == "ft"]
    assert ft == list(range(1, 13))  # every epoch exactly once
    assert [h["phase"] for h in meta["history"]].count("head") == 1
    assert not resume.exists()
    torch.save({"recipe": {"arch": "efficientnet_b0"}, "phase": "ft", "epoch": 1}, resume)
    with pytest.raises(CbirError, match="different finetune command"):
        finetune(Recipe("tf_efficientnet_lite0", str(data), str(out), image_size=96), progress=False)


def test_bad_data(tmp_path, photos):
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    for p in photos[:3]:
        (one / p.name).write_bytes(p.read_bytes())
    with pytest.raises(CbirError, match="at least 2 classes"):
        finetune(
            Recipe("tf_efficientnet_lite0", str(one.parent), str(tmp_path / "x.pt"), image_size=64), progress=False
        )
    two = tmp_path / "two"
    make_gallery(two, photos, 6)
    (two / "empty").mkdir()
    with pytest.raises(CbirError, match="no images: empty"):
        finetune(Recipe("tf_efficientnet_lite0", str(two), str(tmp_path / "x.pt"), image_size=64), progress=False)
    (two / "empty").rmdir()
    (two / "c").mkdir()
    (two / "c" / "broken.jpg").write_bytes(b"no")
    with pytest.raises(CbirError, match="fewer than 2 readable images: c"):
        finetune(Recipe("tf_efficientnet_lite0", str(two), str(tmp_path / "x.pt"), image_size=64), progress=False)
