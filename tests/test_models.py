"""Trunks: dims for every arch × block, weight loading, checkpoint errors."""

from __future__ import annotations

import pytest
import torch

from cbir.errors import CbirError
from cbir.models.archs import ARCHS, get_arch
from cbir.models.trunk import build_trunk

EXPECTED = {  # DESIGN.md §2
    "b0": (224, 192, 320),
    "b1": (240, 192, 320),
    "b2": (260, 208, 352),
    "b3": (300, 232, 384),
    "b4": (380, 272, 448),
    "b5": (456, 304, 512),
}


@pytest.mark.parametrize("variant", list(EXPECTED))
@pytest.mark.parametrize("block", [6, 7])
def test_b0_b5_trunk_dims(variant, block):
    size, d6, d7 = EXPECTED[variant]
    trunk = build_trunk(f"efficientnet_{variant}", block)
    with torch.no_grad():
        out = trunk.module(torch.zeros(1, 3, 64, 64))
    assert out.shape[1] == (d6 if block == 6 else d7) == trunk.dim
    assert get_arch(f"efficientnet_{variant}").input_size == size
    assert get_arch(f"tf_efficientnet_{variant}").dims == {6: d6, 7: d7}


def test_all_names_registered():
    for v in EXPECTED:
        assert f"efficientnet_{v}" in ARCHS and f"tf_efficientnet_{v}" in ARCHS
    for v, size in (("lite0", 224), ("lite1", 240), ("lite2", 260)):
        assert ARCHS[f"tf_efficientnet_{v}"].input_size == size
        assert ARCHS[f"tf_efficientnet_{v}"].mean == (0.5, 0.5, 0.5)


def test_trunk_stops_before_head_conv():
    trunk = build_trunk("tf_efficientnet_lite0", 7)
    names = [type(m).__name__ for m in trunk.module]
    assert len(trunk.module) == 2 + 7
    convs = [m for m in trunk.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].out_channels == 320 and all(c.out_channels != 1280 for c in convs)  # 1280 = conv_head
    with torch.no_grad():
        assert trunk.module(torch.zeros(1, 3, 64, 64)).shape[1] == 320
    assert names[0].startswith("Conv2d")


def test_lite0_offline_weights_classify_a_cat(photos):
    """The key mapping is right when the full Lite0 network recognises Chelsea the cat."""
    import timm

    from cbir.engine.preprocess import Preprocess
    from cbir.models.weights import load_pretrained

    model = timm.create_model("tf_efficientnet_lite0").eval()
    assert load_pretrained(model, "tf_efficientnet_lite0").startswith("offline:")
    cat = next(p for p in photos if p.name == "chelsea.png")
    x = torch.from_numpy(Preprocess((224, 224), resampling="pillow")(cat)).float().permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & set(range(281, 286)), top5  # ImageNet cat classes (tabby, tiger cat, Persian, ...)


def test_timm_state_dict_checkpoint_roundtrip(tmp_path):
    import timm

    src = timm.create_model("tf_efficientnet_lite0", num_classes=7)
    path = tmp_path / "ck.pth"
    torch.save(src.state_dict(), path)
    trunk = build_trunk("tf_efficientnet_lite0", 6, weights=path)
    own = trunk.module.state_dict()
    assert torch.equal(own["0.weight"], src.conv_stem.weight)
    assert trunk.weights == str(path)


def test_checkpoint_for_another_arch_is_refused(tmp_path):
    import timm

    path = tmp_path / "b3.pth"
    torch.save(timm.create_model("efficientnet_b3").state_dict(), path)
    with pytest.raises(CbirError, match="not a checkpoint for efficientnet_b0"):
        build_trunk("efficientnet_b0", 7, weights=path)
    meta_path = tmp_path / "meta.pth"
    torch.save({"meta": {"arch": "efficientnet_b3"}, "state_dict": {"x": torch.zeros(1)}}, meta_path)
    with pytest.raises(CbirError, match="checkpoint is for efficientnet_b3"):
        build_trunk("efficientnet_b0", 7, weights=meta_path)


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint"])
def test_unloadable_weights_file(tmp_path, content):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(CbirError, match=r"--weights .*w\.pth"):
        build_trunk("efficientnet_b0", 7, weights=path)


def test_bad_arch_and_block():
    with pytest.raises(CbirError, match="--arch 'resnet50'"):
        build_trunk("resnet50", 7)
    with pytest.raises(CbirError, match="--block 5"):
        build_trunk("efficientnet_b0", 5)
