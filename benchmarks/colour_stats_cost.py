"""What the colour statistics (``engine.colour.row_stats``, computed in the decode workers for every
image) cost bulk embedding: `Embedder.embed_files` over a folder without them and with the mean colour
(what a build computes; the structure is computed only for queries that verify nothing), interleaved
runs, medians (one process, same model and files).

    .venv/bin/python benchmarks/colour_stats_cost.py ../shared/datasets/corel1k /tmp/c26/lite0.onnx
"""

from __future__ import annotations

import json
import sys

import numpy as np

from cbir.engine import bulk
from cbir.engine.embedder import Embedder
from cbir.sources import find_images


def main() -> int:
    data, model = sys.argv[1], sys.argv[2]
    files = [str(p) for p in find_images([data])]
    emb = Embedder(model, batch_size=8)
    real = bulk.row_stats
    rates: dict[str, list[float]] = {"none": [], "mean": []}
    for _ in range(3):
        for mode in rates:
            bulk.row_stats = real if mode != "none" else (lambda row, structure=False: None)
            res = emb.embed_files(files)
            rates[mode].append(res.timings.as_dict()["images_per_s"])
    bulk.row_stats = real
    med = {k: float(np.median(v)) for k, v in rates.items()}
    json.dump(
        {
            "files": len(files),
            "images_per_s": rates,
            "median": med,
            "ratio_to_none": {k: round(v / med["none"], 3) for k, v in med.items()},
        },
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
