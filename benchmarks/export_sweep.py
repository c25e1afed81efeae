"""Export every B0–B5 × Block 6/7 (random weights) and Lite0 Block 7 × pooling (pretrained); print parity,
export time and size per model, then the Lite0 Block 7 GAP vs an independent timm reference on Corel photos.

    .venv/bin/python benchmarks/export_sweep.py ../shared/datasets/corel1k OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(corel: str, out: str) -> None:
    from cbir.export.onnx import export_onnx

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    configs = [("tf_efficientnet_lite0", 7, p, True) for p in ("gap", "gem", "mac", "spoc", "crow", "rcrow")]
    configs += [(f"efficientnet_b{i}", b, "gap", False) for i in range(6) for b in (6, 7)]
    for arch, block, pooling, pre in configs:
        s = export_onnx(arch, out_dir / f"{arch}_b{block}_{pooling}.onnx", block=block, pooling=pooling, pretrained=pre)
        rows.append(
            {k: s[k] for k in ("arch", "block", "pooling", "dim", "min_cosine", "export_seconds", "size_bytes")}
        )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"timm_reference": timm_reference(out_dir / "tf_efficientnet_lite0_b7_gap.onnx", corel)}))


def timm_reference(model: Path, corel: str, n: int = 200) -> dict:
    """timm's full network run to blocks[6] + GAP, torchvision preprocessing, vs our ONNX on Pillow-decoded input."""
    import timm
    import torch
    from PIL import Image
    from torchvision import transforms

    from cbir.engine.embedder import Embedder
    from cbir.models.weights import load_pretrained
    from cbir.sources import find_images

    paths = find_images([corel])[:: max(1, 1000 // n)][:n]
    net = timm.create_model("tf_efficientnet_lite0").eval()
    load_pretrained(net, "tf_efficientnet_lite0")
    tf = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    with torch.no_grad():
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        ref = torch.nn.functional.normalize(net.blocks(net.bn1(net.conv_stem(x))).mean(dim=(2, 3)), dim=1).numpy()
    out = {}
    for resampling in ("pillow", "opencv"):
        got = Embedder(model, resampling=resampling).embed([str(p) for p in paths])
        cos = np.sum(ref * got, axis=1)
        out[resampling] = {"images": len(paths), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
