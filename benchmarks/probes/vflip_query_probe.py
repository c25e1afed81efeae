# Probe (session 9, issue 26): of the default search's chain3 misses, how many would the vertically
# flipped query's top-1 k-NN recover, verified with the query's own features? Paths are the session's
# /tmp sets (BENCHMARKS.md issue 26, "What chain3 still misses"). Result: 2 of 34 (seed 7), 1 of 12.
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cbir.bench.copy_search import original_ids
from cbir.copies import local_features as lf
from cbir.index.gallery import Gallery, faiss_index

g = Gallery("/tmp/c26/idx4")
key = original_ids(g, "/work/shared/datasets/corel1k")
cpu, _ = g._snapshot()
for suite in ("/tmp/s9/suite7", "/tmp/c26/suite"):
    base = Path(suite, "copies", "chain3")
    fs = sorted(base.rglob("*.jpg"))
    miss = fixed = 0
    for f in fs:
        r = g.search([str(f)], k=10)[0]["results"]
        want = key[str(f.relative_to(base).with_suffix(""))]
        if r and r[0]["id"] == want:
            continue
        miss += 1
        img = Image.open(f).convert("RGB")
        v = ImageOps.flip(img)
        res = g.embedder().embed_files([v])
        s, ids = faiss_index.search(cpu, g.postprocess_queries(res.vectors), 3)
        feats = lf.extract_query(img, str(f))
        recs = g.features.get(np.array(ids[0], np.int64))
        inl = [max(len(lf.matched(q, rc)[0]) for q in feats) if rc is not None else 0 for rc in recs]
        ok = [int(i) == want and n >= 15 for i, n in zip(ids[0], inl)]
        fixed += ok[0]
        print(f.relative_to(base), "top3", list(ids[0]), "want", want, "inl", inl, "fix@1", ok[0], "fix@3", any(ok))
    print(suite, "misses", miss, "fixed by vflip top1", fixed)
