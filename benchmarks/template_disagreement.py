"""Why pixel agreement cannot tell a shared template from a caption edit (issue 26, dedup): every k-NN pair
of the planted dedup set that verifies, warped onto each other with its RANSAC map, compared on a 24 x 24 grid
(z-normalised cell means, |diff| > 1): the largest connected block of disagreeing cells, as a fraction of the overlap.

    .venv/bin/python benchmarks/template_disagreement.py   (index /tmp/dd/idx of /tmp/dd/g, BENCHMARKS.md issue 26)
"""

from pathlib import Path

import cv2
import numpy as np

from cbir.copies import local_features as lf
from cbir.index.ann import faiss_index
from cbir.index.gallery import Gallery

g = Gallery("/tmp/dd/idx")
data, copies = Path("/tmp/dd/g/corel").resolve(), Path("/tmp/dd/g/copies").resolve()


def original(p):
    p = Path(p).resolve()
    if p.is_relative_to(copies):
        r = p.relative_to(copies)
        return r.parts[0], str(Path(*r.parts[1:]).with_suffix(""))
    return "orig", str(p.relative_to(data).with_suffix(""))


ids = np.array(sorted(g.store.paths_for_ids(g.store.indexed_ids().tolist())), np.int64)
paths = g.store.paths_for_ids(ids)
sims, nn = faiss_index.search(g.index, g.vectors_for(ids), 11)
pairs = {
    (min(a, b), max(a, b))
    for a, srow, nrow in zip(ids, sims, nn)
    for b, s in zip(nrow, srow)
    if b >= 0 and b != a and s >= 0.5
}
feats = dict(zip(ids.tolist(), g.features.get(ids)))
G = 24


def stats(a_img, b_img, model):
    h, w = b_img.shape
    warped = cv2.warpAffine(a_img, model, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(a_img.shape, 255, np.uint8), model, (w, h), flags=cv2.INTER_NEAREST)
    m = cv2.resize(mask.astype(np.float32), (G, G), interpolation=cv2.INTER_AREA) > 254
    if m.sum() < 0.3 * G * G:
        return None
    x = cv2.resize(warped.astype(np.float32), (G, G), interpolation=cv2.INTER_AREA)
    y = cv2.resize(b_img.astype(np.float32), (G, G), interpolation=cv2.INTER_AREA)
    x = (x - x[m].mean()) / (x[m].std() + 1e-6)
    y = (y - y[m].mean()) / (y[m].std() + 1e-6)
    bad = (np.abs(x - y) > 1.0) & m
    n, lab, st, _ = cv2.connectedComponentsWithStats(bad.astype(np.uint8), connectivity=4)
    if n <= 1:
        return 0.0, 0.0
    k = 1 + int(np.argmax(st[1:, cv2.CC_STAT_AREA]))
    big = st[k, cv2.CC_STAT_AREA] / m.sum()
    rest = (bad & (lab != k)).sum() / m.sum()
    return round(float(big), 3), round(float(rest), 3)


rows = []
for a, b in sorted(pairs):
    n, model = lf.match(feats[a], feats[b])
    if n < 15:
        continue
    ea, oa = original(paths[a])
    eb, ob = original(paths[b])
    ga = lf.gray(paths[a], paths[a])
    gb = lf.gray(paths[b], paths[b])
    st = stats(ga, gb, model)
    st2 = stats(gb, ga, cv2.invertAffineTransform(model))
    rows.append({"same": oa == ob, "edits": sorted([ea, eb]), "n": n, "ab": st, "ba": st2})

same_b = np.array(
    [
        max((x for x in (r["ab"], r["ba"]) if x), key=lambda t: t[0])[0]
        for r in rows
        if r["same"] and (r["ab"] or r["ba"])
    ]
)
tpl_b = np.array(
    [
        max((x for x in (r["ab"], r["ba"]) if x), key=lambda t: t[0])[0]
        for r in rows
        if not r["same"]
        and r["edits"][0] == r["edits"][1]
        and (r["ab"] or r["ba"])
        and r["edits"][0] in ("screenshot", "screenshot_web", "screenshot_mobile", "meme_format")
    ]
)
print(f"{len(rows)} verified pairs, {len(same_b)} of one photo, {len(tpl_b)} of different photos in one template")
for t in (0.1, 0.15, 0.2):
    print(
        f"block >= {t}: same-photo pairs {int((same_b >= t).sum())}/{len(same_b)}, template pairs {int((tpl_b >= t).sum())}/{len(tpl_b)}"
    )
