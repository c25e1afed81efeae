"""`cbir whiten fit`: PCA-whitening from vectors or an index."""

from __future__ import annotations

import argparse
from pathlib import Path

from cbir.cli.common import print_json
from cbir.errors import CbirError


def cmd_whiten_fit(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.vectors import fit

    src = Path(a.vectors)
    if src.is_dir():
        from cbir.index.gallery import Gallery

        x = Gallery(src).load_vectors()[1]
    else:
        try:
            x = np.load(src)
        except (OSError, ValueError) as e:
            raise CbirError(f"VECTORS {src}: cannot read a .npy array ({e})") from None
    w = fit(x, dim=a.dim, shrinkage=a.shrinkage, min_per_dim=a.min_per_dim, force=a.force)
    w.save(a.output)
    info = {"output": a.output, "fingerprint": w.fingerprint, **w.info}
    print_json(info) if a.json else print(
        f"wrote {a.output}: {w.in_dim} -> {w.out_dim} dims from {len(x)} vectors "
        f"({w.info['per_dim']:.1f} per dim), fingerprint {w.fingerprint}"
    )
    return 0


def register(sub) -> None:
    wh = sub.add_parser("whiten", help="PCA-whitening").add_subparsers(dest="whiten_command", required=True)
    wf = wh.add_parser("fit", help="learn PCA-whitening from vectors (.npy) or an index directory")
    wf.add_argument("vectors")
    wf.add_argument("-o", "--output", required=True)
    wf.add_argument("--dim", type=int, help="output dims (default: input dims)")
    wf.add_argument("--shrinkage", type=float, default=0.1, help="eigenvalue shrinkage toward the mean (default 0.1)")
    wf.add_argument("--min-per-dim", type=int, default=10, help="minimum vectors per output dim (default 10)")
    wf.add_argument("--force", action="store_true", help="fit even with too few vectors")
    wf.add_argument("--json", action="store_true")
    wf.set_defaults(fn=cmd_whiten_fit)
