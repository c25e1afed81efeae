"""Re-ranking stages against independent NumPy formulas on small hand-made galleries; ORB + RANSAC
verification against known OpenCV warps; verification, features and dedup through a real index."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cbir.errors import CbirError
from cbir.index.ann import faiss_index
from cbir.index.gallery import Gallery
from cbir.index.query.rerank import Rerank, conjugate_gradient, diffusion, rerank, resolve, shortlist_dba
from cbir.index.query.search import search
from conftest import make_gallery


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(3, 8)))
    x = unit(np.repeat(centres, 5, axis=0) + 0.3 * rng.normal(size=(15, 8)))
    q = unit(centres[0] + 0.3 * rng.normal(size=8))
    return x.astype(np.float32), q.astype(np.float32)


def test_shortlist_dba_matches_the_formula(toy):
    x, _ = toy
    got = shortlist_dba(x.astype(np.float64), 4, 3.0)
    for i in range(len(x)):
        sims = x @ x[i]
        nn = np.argsort(-sims)[:4]  # x_i itself is its own nearest
        want = sum(max(sims[j], 0) ** 3 * x[j] for j in nn)
        np.testing.assert_allclose(got[i], want / np.linalg.norm(want), atol=1e-6)


def test_alpha_qe_matches_the_formula(toy):
    x, q = toy
    ids = np.arange(len(x))
    got_ids, got_s, _, q2 = rerank(q, ids, x, Rerank(qe=3, qe_alpha=2.0))
    s = x @ q
    top = np.argsort(-s)[:3]
    want_q = q + sum(max(s[j], 0) ** 2 * x[j] for j in top)
    want_q /= np.linalg.norm(want_q)
    np.testing.assert_allclose(q2, want_q, atol=1e-6)
    np.testing.assert_array_equal(got_ids, np.argsort(-(x @ want_q), kind="stable"))
    np.testing.assert_allclose(got_s, np.sort(x @ want_q)[::-1], atol=1e-5)


def test_conjugate_gradient_and_diffusion_match_a_dense_solve(toy):
    x, q = toy
    rng = np.random.default_rng(1)
    m = rng.normal(size=(6, 6))
    a = m @ m.T + 6 * np.eye(6)
    b = rng.normal(size=6)
    np.testing.assert_allclose(conjugate_gradient(lambda v: a @ v, b, iters=50), np.linalg.solve(a, b), atol=1e-8)
    x64, s = x.astype(np.float64), x.astype(np.float64) @ q
    k, alpha, gamma = 4, 0.9, 3.0
    aff = np.maximum(x64 @ x64.T, 0) ** gamma
    np.fill_diagonal(aff, 0)
    knn = np.zeros_like(aff, bool)
    for i in range(len(x)):
        knn[i, np.argsort(-aff[i])[:k]] = True
    w = np.where(knn & knn.T, aff, 0)
    d = w.sum(1)
    sn = w / np.sqrt(np.outer(d, d))
    y = np.zeros(len(x))
    top = np.argsort(-s)[:k]
    y[top] = np.maximum(s[top], 0) ** gamma
    want = np.linalg.solve(np.eye(len(x)) - alpha * sn, y)
    np.testing.assert_allclose(diffusion(x64, s, k, alpha, gamma), want, rtol=1e-4, atol=1e-8)


def test_verified_first_by_inliers_then_score(toy):
    x, q = toy
    ids = np.arange(10, 10 + len(x))
    inl = np.full(len(x), -1)
    inl[[7, 2, 9]] = [40, 90, 5]  # 9 has too few inliers: not verified
    got_ids, _, got_inl, _ = rerank(q, ids, x, Rerank(verify=10, min_inliers=15), inl)
    assert list(got_ids[:2]) == [12, 17] and list(got_inl[:2]) == [90, 40]
    rest = got_ids[2:]
    s = {int(i): float(v) for i, v in zip(ids, x @ q)}
    assert [s[int(i)] for i in rest] == sorted((s[int(i)] for i in rest), reverse=True)


def test_search_tail_and_plain_path(toy):
    x, q = toy
    index, _ = faiss_index.build(x, np.arange(len(x)), "Flat")
    plain_s, plain_i, plain_v = search(index, q[None], 5)
    want = np.argsort(-(x @ q))[:5]
    np.testing.assert_array_equal(plain_i[0], want)
    assert (plain_v == -1).all()  # plain k-NN checks no inliers
    # k beyond the shortlist: the shortlist re-ranked, then the rest from a second search, each id once
    _, ids, _ = search(index, q[None], len(x), Rerank(shortlist=4, qe=2), lambda i: x[i])
    assert sorted(ids[0].tolist()) == list(range(len(x)))


def test_resolve_refuses_bad_names_and_values():
    assert resolve(preset="copy").verify == 10 and resolve({"qe": 5}, qe=7).qe == 7
    with pytest.raises(CbirError, match="--rerank bogus: unknown"):
        resolve(preset="bogus")
    with pytest.raises(CbirError, match="qe=5000: must be between 0 and 1000"):
        resolve(qe=5000)
    with pytest.raises(CbirError, match="verify='x': not a number"):
        resolve(verify="x")
    with pytest.raises(CbirError, match="shortlist=2.5: must be an integer"):
        resolve(shortlist=2.5)
    with pytest.raises(CbirError, match="'colour': unknown"):
        resolve(colour=1)
    # a stored setting from a newer cbir (an index.json this version did not write) is ignored
    assert resolve({"qe": 5, "some_future_stage": 3}).qe == 5


# -- local features ------------------------------------------------------------------------------
def test_orb_ransac_recovers_a_known_warp(photos, tmp_path):
    import cv2

    from cbir.copies import local_features as lf

    img = np.asarray(Image.open(photos[0]).convert("RGB").resize((320, 240)))
    m = cv2.getRotationMatrix2D((160, 120), 10.0, 0.8)  # rotate 10°, scale 0.8: a known affine map
    warped = cv2.warpAffine(img, m, (320, 240), borderValue=(255, 255, 255))
    a, b = lf.extract(img), lf.extract(warped)
    assert a["n"] > 100 and b["n"] > 100
    n, model = lf.match(a, b)
    assert n >= 50
    # keypoints are at SIDE = 320 on the longer side for both: the recovered map is the applied one
    np.testing.assert_allclose(model[:, :2], m[:, :2], atol=0.03)
    np.testing.assert_allclose(model[:, 2], m[:, 2], atol=4.0)
    other = lf.extract(np.asarray(Image.open(photos[3]).convert("RGB")))
    assert lf.inliers(a, other) < 15
    flat = lf.extract(np.full((200, 200, 3), 128, np.uint8))
    assert flat["n"] == 0 and lf.inliers(a, flat) == 0
    tiny = lf.extract(np.asarray(Image.fromarray(img).resize((64, 48))))
    assert tiny["n"] > 50  # upscaled to 320 px: a 64-px thumbnail still has keypoints


def edited_copy(src, dst):
    img = Image.open(src).convert("RGB")
    w, h = img.size
    img.crop((int(w * 0.2), int(h * 0.15), int(w * 0.85), int(h * 0.8))).rotate(
        8, expand=True, fillcolor=(255, 255, 255)
    ).save(dst, quality=60)


def test_copy_is_verified_first_and_features_are_resumable(verified_index, tmp_path):
    from cbir.index.storage.features import feature_path

    g, files = verified_index
    assert g.config["local_features"] == "orb" and g.config["rerank"]["verify"] == 10
    q = tmp_path / "copy.jpg"
    edited_copy(files[2], q)  # chelsea: no near-duplicate among the photos
    hits = g.search([str(q)], k=5)[0]["results"]
    assert hits[0]["path"] == os.path.abspath(files[2]) and hits[0]["verified"] and hits[0]["inliers"] >= 15
    assert not any(h["verified"] for h in hits[1:])
    plain = g.search([str(q)], k=5, rerank="none")[0]["results"]
    assert not any(h["verified"] for h in plain) and all(h["inliers"] is None for h in plain)
    by_id = g.search_items([hits[0]["id"]], k=3)[0]
    assert by_id[0].id == hits[0]["id"] and by_id[0].verified  # stored features verify stored items
    # a lost feature file is rewritten by the next ensure, alone
    shard = g.store.done_shards()[0]
    feature_path(g.root, shard).unlink()
    assert g.extract_features() == 1 and g.extract_features() == 0
    # a removed item is never verified, nor shown
    g.remove([files[2]])
    after = Gallery(g.root).search([str(q)], k=5)[0]["results"]
    assert all(h["path"] != os.path.abspath(files[2]) and not h["verified"] for h in after)


def test_index_without_features_says_how_to_add_them(tmp_path, embedder, photos, capsys):
    from cbir.cli import main

    make_gallery(tmp_path / "g", photos, 6)
    g = Gallery.create(tmp_path / "idx", embedder, local_features="none")
    g.build([tmp_path / "g"])
    assert g.config["rerank"]["verify"] == 0 and not list((tmp_path / "idx" / "shards").glob("*.orb.npy"))
    with pytest.raises(CbirError, match="cbir index features"):
        g.search([str(sorted((tmp_path / "g").rglob("*.jpg"))[0])], rerank="copy")
    assert main(["index", "features", str(tmp_path / "idx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards_written"] == 1
    assert main(["index", "rerank", str(tmp_path / "idx"), "--rerank", "default", "--qe", "5", "--json"]) == 0
    stored = json.loads(capsys.readouterr().out)
    assert stored["verify"] == 10 and stored["qe"] == 5
    hits = Gallery(tmp_path / "idx").search([str(sorted((tmp_path / "g").rglob("*.jpg"))[0])], k=2)[0]["results"]
    assert hits[0]["verified"]


def test_http_rerank_params_and_verified_answer(verified_index, tmp_path):
    import httpx

    from cbir.serve.app import create_app
    from test_serve import Server

    g, files = verified_index
    q = tmp_path / "copy.jpg"
    edited_copy(files[3], q)
    with Server(create_app(str(g.root), max_delay_ms=1)) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/search", params={"k": 3}, content=q.read_bytes()).json()
        assert r["results"][0]["path"] == os.path.abspath(files[3]) and r["results"][0]["verified"]
        assert r["rerank"]["verify"] == 10
        plain = c.post("/search", params={"k": 3, "rerank": "none"}, content=q.read_bytes()).json()
        assert not plain["results"][0]["verified"] and plain["rerank"]["qe"] == 0
        for bad in ({"rerank": "bogus"}, {"qe": 100000}, {"verify": "x"}, {"min_inliers": 1}):
            resp = c.post("/search", params=bad, content=q.read_bytes())
            assert resp.status_code == 422 and "\n" not in resp.json()["error"], bad
        assert c.get("/search", params={"id": 0, "rerank": "bogus"}).status_code == 422


def test_dedup_finds_exact_and_near_groups(tmp_path, embedder, photos, capsys):
    from cbir.cli import main

    files = make_gallery(tmp_path / "g", photos, 10)
    shutil.copy(files[1], tmp_path / "g" / "exact_copy.jpg")
    edited_copy(files[2], tmp_path / "g" / "edited_copy.jpg")
    Gallery.create(tmp_path / "idx", embedder).build([tmp_path / "g"])
    out_csv = tmp_path / "groups.csv"
    assert main(["dedup", str(tmp_path / "idx"), "--json", "--csv", str(out_csv)]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    as_sets = {(grp["kind"], frozenset(grp["paths"])) for grp in groups}
    assert (
        "exact",
        frozenset({os.path.abspath(files[1]), str((tmp_path / "g" / "exact_copy.jpg").resolve())}),
    ) in as_sets
    assert (
        "near",
        frozenset({os.path.abspath(files[2]), str((tmp_path / "g" / "edited_copy.jpg").resolve())}),
    ) in as_sets
    # and scikit-image's stereo pair, motorcycle_left/right: the same scene, rightly a near group
    assert ("near", frozenset({os.path.abspath(files[4]), os.path.abspath(files[5])})) in as_sets
    assert len(groups) == 3
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"exact", "near"}
    g2 = Gallery.create(tmp_path / "idx2", embedder, local_features="none")
    g2.build([tmp_path / "g"])
    assert main(["dedup", str(tmp_path / "idx2")]) == 2
    assert "cbir index features" in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "idx2"), "--no-verify", "--threshold", "0.99", "--json"]) == 0
    assert [grp["kind"] for grp in json.loads(capsys.readouterr().out)["groups"]] == ["exact"]


def test_bench_copies_and_copy_detection(lite0_onnx, photos, tmp_path, capsys):
    from cbir.cli import main

    data = tmp_path / "data"
    make_gallery(data, photos, 10)
    assert (
        main(["bench", "copies", str(data), str(tmp_path / "copies"), "-n", "4", "--edits", "crop,jpeg,caption"]) == 0
    )
    capsys.readouterr()
    assert len(list((tmp_path / "copies").rglob("*.jpg"))) == 12
    assert (
        main(
            [
                "bench",
                "accuracy",
                "--model",
                str(lite0_onnx),
                "--data",
                str(data),
                "--queries",
                "all",
                "--copies",
                str(tmp_path / "copies"),
                "--rerank-axis",
                "base,aqe,verify,default",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert set(r["axis"]) == {"base", "aqe", "verify", "default"}
    assert r["axis"]["verify"]["copies"]["rank1"] == 1.0  # each copy's original verified first
    assert set(r["axis"]["verify"]["copies"]["rank1_per_edit"]) == {"crop", "jpeg", "caption"}
    assert r["axis"]["verify"]["metrics"]["mAP"]["mean"] > 0 and r["features_ms_per_image"] > 0
    assert main(["bench", "accuracy", "--model", str(lite0_onnx), "--data", str(data), "--rerank-axis", "bogus"]) == 2


def test_star_groups_do_not_chain_through_a_shared_overlay():
    from cbir.copies.dedup import star_groups

    # A, B originals; cA, cB their captioned copies (the same caption text links cA and cB); bA a bordered copy
    A, B, cA, cB, bA = 1, 2, 3, 4, 5
    pairs = [(A, cA, 300), (cA, cB, 40), (B, cB, 300), (A, bA, 200)]
    assert sorted(star_groups(pairs)) == [[A, cA, bA], [B, cB]]
    assert star_groups([]) == [] and star_groups([(7, 9, 20)]) == [[7, 9]]


def test_star_groups_attach_a_copy_left_out_only_through_two_of_its_neighbours():
    from cbir.copies.dedup import star_groups

    # A with copies c1, c2 (both verify with A); p matches c1 and c2 but not A (a pip of a copy);
    # q matches only c1 (one shared caption): p joins A's group, q stays out
    A, c1, c2, p, q = 1, 2, 3, 4, 5
    pairs = [(A, c1, 300), (A, c2, 300), (p, c1, 30), (p, c2, 30), (q, c1, 20)]
    assert star_groups(pairs) == [[A, c1, c2, p]]
    assert star_groups(pairs, attach=3) == [[A, c1, c2]]
