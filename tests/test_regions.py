"""Regional descriptors and regional re-ranking: the window pooling against NumPy loops, the
re-scoring against the formula on a hand-made gallery, and a real ``--regions`` model through
export (ONNX Runtime vs an independent pooling of the trunk's feature map), an index and a search."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cbir.errors import CbirError
from cbir.index.gallery import Gallery
from cbir.index.query.rerank import Rerank, regional_scores, rerank
from cbir.models import functional as F
from conftest import make_gallery


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_windows_leave_out_the_whole_map_and_pool_like_a_loop():
    wins = F.window_regions(7, 7)
    assert len(wins) == 13 and all((s, t) != (7, 7) for _, _, s, t in wins)
    assert sorted({s for _, _, s, _ in wins}) == [3, 4]  # levels 2 and 3 of the R-MAC grid
    wide = F.window_regions(7, 10)
    assert any(s == 7 for _, _, s, _ in wide)  # on a wide map, level 1 windows are smaller than the map
    x = torch.randn(2, 5, 7, 7)
    got = F.pool_windows(x, F.mac, wins).numpy()
    xn = x.numpy()
    for r, (t, l, sh, sw) in enumerate(wins):
        for n in range(2):
            want = np.array([xn[n, c, t : t + sh, l : l + sw].max() for c in range(5)])
            np.testing.assert_allclose(got[n, r], want, rtol=1e-6)


def test_regional_rescoring_matches_the_formula():
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(8, 6)))
    q = unit(rng.normal(size=6))
    regions = unit(rng.normal(size=(8, 3, 6)))
    regions[5, 1] = q  # item 5 holds the query as one of its windows
    want = np.array([max(float(x[i] @ q), max(float(g @ q) for g in regions[i])) for i in range(8)])
    np.testing.assert_allclose(regional_scores(q, x, regions), want, rtol=1e-5)

    ids = np.arange(100, 108)
    order0 = np.argsort(-(x @ q), kind="stable")
    has = np.ones(8, bool)
    has[order0[1]] = False  # the second candidate has no regions: keeps q·x
    asked = []

    def regions_of(sel):
        asked.append(sel.copy())
        pos = sel - 100
        return regions[pos], has[pos]

    n = 6 if 5 in order0[:6] else 8
    got_ids, got_s, _, _ = rerank(q, ids, x, Rerank(regional=n), None, regions_of)
    assert len(asked) == 1 and sorted(asked[0] - 100) == sorted(order0[:n])  # only the top n are looked up
    assert got_ids[0] == 105 and got_s[0] == pytest.approx(1.0, abs=1e-5)
    score = {int(i): float(s) for i, s in zip(got_ids, got_s)}
    for p in order0[:n]:
        exp = float(x[p] @ q) if not has[p] else want[p]
        assert score[100 + int(p)] == pytest.approx(exp, abs=1e-5)
    assert list(got_s[:n]) == sorted(got_s[:n], reverse=True)
    assert set(got_ids[:n] - 100) == set(order0[:n])  # the re-scored stay ahead of the rest
    # verified candidates still come first
    inl = np.full(8, -1)
    inl[order0[2]] = 50
    v_ids, _, _, _ = rerank(q, ids, x, Rerank(regional=n, verify=8), inl, regions_of)
    assert v_ids[0] == 100 + order0[2] and v_ids[1] == 105


@pytest.fixture(scope="module")
def lite0_regions_onnx(tmp_path_factory):
    from cbir.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("models") / "lite0_b7_gap_regions.onnx"
    summary = export_onnx("tf_efficientnet_lite0", out, block=7, pooling="gap", pretrained=True, regions=True)
    assert summary["regions"] == 13 and summary["regions_min_cosine"] > 0.99999
    return out


def test_regions_output_is_window_gap_of_the_trunk(lite0_regions_onnx, lite0_onnx, photos):
    from cbir.engine.embedder import Embedder
    from cbir.models.trunk import build_trunk

    model = onnx.load(str(lite0_regions_onnx), load_external_data=False)
    assert [o.name for o in model.graph.output] == ["embeddings", "regions"]
    emb = Embedder(lite0_regions_onnx)
    assert emb.num_regions == 13
    res = emb.embed_files(photos[:3], regions=True)
    assert res.regions.shape == (3, 13, emb.dim)
    # the global vectors are those of the same model without --regions
    np.testing.assert_allclose(res.vectors, Embedder(lite0_onnx).embed(photos[:3]), atol=1e-5)
    # independent: trunk feature map in torch, window means and L2 in NumPy
    trunk = build_trunk("tf_efficientnet_lite0", 7, pretrained=True)
    x = torch.from_numpy(np.stack([emb.preprocess(p) for p in photos[:3]])).float()
    mean, std = torch.tensor(emb.info.mean), torch.tensor(emb.info.std)
    with torch.no_grad():
        fmap = trunk.module(((x / 255.0 - mean) / std).permute(0, 3, 1, 2)).numpy()
    wins = F.window_regions(*fmap.shape[2:])
    want = np.stack([[fmap[n, :, t : t + sh, l : l + sw].mean(axis=(1, 2)) for t, l, sh, sw in wins] for n in range(3)])
    cos = (unit(want) * unit(res.regions)).sum(-1)
    assert cos.min() > 0.9999
    with pytest.raises(CbirError, match="--regions"):
        Embedder(lite0_onnx).embed_files(photos[:1], regions=True)


def test_regional_search_through_an_index(lite0_regions_onnx, embedder, photos, tmp_path, capsys):
    from cbir.cli import main
    from cbir.index.storage.regions import regions_path

    files = make_gallery(tmp_path / "g", photos, 10)
    g = Gallery.create(tmp_path / "idx", __import__("cbir").Embedder(lite0_regions_onnx), local_features="none")
    g.build([tmp_path / "g"])
    shard = g.store.done_shards()[0]
    stored = np.load(regions_path(g.root, shard))
    assert stored.dtype == np.float16 and stored.shape == (10, 13, g.config["dim"])
    img = Image.open(files[4]).convert("RGB")
    w, h = img.size
    crop = tmp_path / "crop.jpg"
    img.crop((0, 0, int(w * 0.55), int(h * 0.55))).save(crop, quality=80)
    hits = g.search([str(crop)], k=10, rerank={"regional": 10, "qe": 0, "shortlist_dba": 0})[0]["results"]
    assert hits[0]["path"] == os.path.abspath(files[4])
    # the scores are the formula over the stored vectors and regional descriptors
    q = unit(g.embedder().embed_one(str(crop)))
    ids = np.array([h["id"] for h in hits])
    with np.load(g.root / "shards" / f"shard-{shard:06d}.npz") as z:
        row = {int(i): r for r, i in enumerate(z["ids"])}
        vecs = unit(z["vectors"])
    rows = [row[int(i)] for i in ids]
    want = regional_scores(q, vecs[rows], stored[rows].astype(np.float32))
    np.testing.assert_allclose([h["score"] for h in hits], want, atol=2e-3)
    # an index whose model has no regions refuses, saying how to get them
    plain = Gallery.create(tmp_path / "plain", embedder, local_features="none")
    plain.build([tmp_path / "g"])
    with pytest.raises(CbirError, match="--regions"):
        plain.search([str(crop)], rerank={"regional": 5})
    assert main(["search", "--index", str(tmp_path / "plain"), str(crop), "--regional", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--regions" in err[0]
    assert main(["search", "--index", str(tmp_path / "idx"), str(crop), "--regional", "-1"]) == 2
    assert "regional=-1" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "idx"), str(crop), "--regional", "20", "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["path"] == os.path.abspath(files[4])
    # over HTTP: the stage is a request parameter; an index without regions answers 422 in one line
    import httpx

    from cbir.serve.app import create_app
    from test_serve import Server

    for root, want in ((tmp_path / "idx", 200), (tmp_path / "plain", 422)):
        with Server(create_app(str(root), max_delay_ms=1)) as url, httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/search", params={"k": 1, "regional": 10}, content=crop.read_bytes())
            assert r.status_code == want
            if want == 200:
                assert r.json()["rerank"]["regional"] == 10 and r.json()["results"][0]["path"] == os.path.abspath(
                    files[4]
                )
            else:
                assert "--regions" in r.json()["error"] and "\n" not in r.json()["error"]
