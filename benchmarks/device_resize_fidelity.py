"""How close `--decode gpu`'s device-side resize is to the CPU preprocessing, measured where no GPU
is: OpenCV decodes (as the CPU path does), then ``gpu_decode.resize_on_device`` resizes in torch on
the CPU, and Lite0 embeds both. Isolates the resize; nvJPEG's own decode differences come on top
and are measured by gpu_check.sh's latency step (agreement of torch:fp16+gpudecode).

    .venv/bin/python benchmarks/device_resize_fidelity.py ../shared/datasets/corel1k [--model m.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np
import torch

from cbir.engine.embedder import Embedder
from cbir.engine.gpu_decode import resize_on_device
from cbir.sources import find_images


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--model")
    ap.add_argument("--limit", type=int, default=1000)
    a = ap.parse_args()
    model = a.model
    if model is None:
        from cbir.export.onnx import export_onnx

        model = "/tmp/lite0_fidelity.onnx"
        export_onnx("tf_efficientnet_lite0", model, block=7, pooling="gap", pretrained=True)
    emb = Embedder(model)
    files = [str(p) for p in find_images([a.data])][: a.limit]
    cpu_rows = np.stack([emb.preprocess(f) for f in files])
    dev_rows = np.stack(
        [resize_on_device(torch.from_numpy(cv2.imread(f, cv2.IMREAD_COLOR_RGB)), emb.preprocess).numpy() for f in files]
    )
    pix = np.abs(cpu_rows.astype(int) - dev_rows.astype(int))
    cos = np.sum(emb.run(cpu_rows) * emb.run(dev_rows), axis=1)
    json.dump(
        {
            "images": len(files),
            "policy": emb.preprocess.policy,
            "pixel_abs_diff_mean": round(float(pix.mean()), 4),
            "pixel_abs_diff_max": int(pix.max()),
            "pixels_off_by_more_than_1": round(float((pix > 1).mean()), 6),
            "cos_min": round(float(cos.min()), 6),
            "cos_median": round(float(np.median(cos)), 6),
            "cos_p01": round(float(np.quantile(cos, 0.01)), 6),
        },
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
