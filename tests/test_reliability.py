"""Never lose a user's file, never let one input stop a job: folders that are not indexes are refused
and left as they were, a failed first build removes only what it made (also when two start at once),
odd-but-valid images go through build, add, search, serve and dedup, removed items stay removed, and
a writer that waited for the lock never writes back settings another writer changed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main
from cbir.index.gallery import Gallery
from conftest import make_gallery


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "cbir", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- 1. a command deletes only what it created -------------------------------------------------------


def test_a_folder_that_is_not_an_index_is_refused_and_left_intact(lite0_onnx, gallery_dir, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(lite0_onnx, proj / "m.onnx")
    (proj / "notes.txt").write_text("mine")
    before = tree(proj)
    for extra in ([], ["--files-from", str(tmp_path / "missing.txt")]):
        r = run_cli("index", "build", str(gallery_dir), "--model", str(proj / "m.onnx"), "--index", str(proj), *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert tree(proj) == before
    assert (
        "not a cbir index"
        in run_cli("index", "build", str(gallery_dir), "--model", str(proj / "m.onnx"), "--index", str(proj)).stderr
    )
    from cbir.index.storage.config import foreign_entries, is_own_name

    hidden = tmp_path / "hidden"  # names that look like cbir's temporary files but are not
    hidden.mkdir()
    for name in (".settings.json", ".notes.tmp", ".index.json.backup", "ivflists-mine.bin"):
        (hidden / name).write_text("mine")
    assert foreign_entries(hidden) == sorted(p.name for p in hidden.iterdir())
    assert all(
        is_own_name(n)
        for n in (
            ".index.json.1234.tmp",
            "ivflists-0123456789ab.bin",
            ".blocks-0123abcd",
            ".tune-queries.npy.77.npy",
            "meta.sqlite-wal",
            "votes.npz",
            ".votes.npz.4242.npz",
        )
    )


def test_a_failed_first_build_removes_only_what_it_made(lite0_onnx, gallery_dir, tmp_path):
    bad = tmp_path / "x.parquet"  # a Parquet input without --parquet-column: refused after the index was created
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), bad)
    new = tmp_path / "new" / "idx"
    r = run_cli("index", "build", str(bad), "--model", str(lite0_onnx), "--index", str(new))
    assert r.returncode == 2 and "parquet" in r.stderr.lower()
    assert not new.exists() and (tmp_path / "new").is_dir()  # its parent was made too; only the index dir is undone
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("index", "build", str(bad), "--model", str(lite0_onnx), "--index", str(empty))
    assert r.returncode == 2 and empty.is_dir() and list(empty.iterdir()) == []  # the user's folder stays


def test_two_first_builds_at_once_lose_nothing(lite0_onnx, gallery_dir, tmp_path):
    """A good and a failing build started together on one new folder, three times: the good one's
    index is complete every time, whichever of them created the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), bad)
    for i in range(3):
        idx = tmp_path / f"idx{i}"
        good = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cbir",
                "index",
                "build",
                str(gallery_dir),
                "--model",
                str(lite0_onnx),
                "--index",
                str(idx),
                "--wait",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        failing = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cbir",
                "index",
                "build",
                str(bad),
                "--model",
                str(lite0_onnx),
                "--index",
                str(idx),
                "--wait",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out_good, err_good = good.communicate(timeout=600)
        _, err_bad = failing.communicate(timeout=600)
        assert good.returncode == 0, err_good
        errors = [line for line in err_bad.splitlines() if "error" in line]
        assert failing.returncode == 2 and len(errors) == 1 and "parquet" in errors[0], err_bad
        g = Gallery(idx)
        assert g.store.count("indexed") == 10 and g.index.ntotal == 10
        g.close()


# -- 2. odd-but-valid images never stop a job ---------------------------------------------------------


def odd_images(root: Path, photo: Path) -> dict[str, Path]:
    """Valid images of every awkward shape and mode (all decodable; none may fail or crash a job)."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    base = Image.open(photo).convert("RGB")
    base.thumbnail((300, 300))
    rgb = np.asarray(base)
    out: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        out[name] = root / name
        img.save(out[name], **kw)

    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 30, 30)))
    save("strip_2000x3.png", base.resize((2000, 3)))
    save("strip_3x2000.png", base.resize((3, 2000)))
    save("gray16.png", Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257)))
    out["rgb48.png"] = root / "rgb48.png"
    cv2.imwrite(str(out["rgb48.png"]), (rgb[:, :, ::-1].astype(np.uint16) * 257))
    save("cmyk.jpg", base.convert("CMYK"), quality=90)
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    save("palette_alpha.png", pal, transparency=0)
    frames = [base, base.rotate(90), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    out["animated.gif"] = root / "animated.gif"
    frames[0].save(out["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    save("exif_rotated.jpg", base, exif=exif.tobytes())
    save("la.png", base.convert("LA"))
    save("bilevel.png", base.convert("1"))
    save("gray.jpg", base.convert("L"))
    save("progressive.jpg", base, progressive=True, quality=80)
    save("float.tiff", Image.fromarray(np.asarray(base.convert("L")).astype(np.float32) / 255.0))
    save("alpha.webp", base.convert("RGBA"))
    save("plain.bmp", base)
    save("tiny_2x2.jpg", base.resize((2, 2)))
    return out


def test_odd_but_valid_images_through_build_add_search_serve_and_dedup(lite0_onnx, photos, tmp_path):
    import httpx

    from cbir.serve.app import create_app
    from test_serve import Server

    odd = odd_images(tmp_path / "odd", photos[0])
    make_gallery(tmp_path / "odd" / "photos", photos, 6)
    idx = tmp_path / "idx"
    r = run_cli("index", "build", str(tmp_path / "odd"), "--model", str(lite0_onnx), "--index", str(idx), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["failed"] == [] and report["indexed"] == len(odd) + 6, report["failed"]
    # the same files again under another folder, through `index add`
    shutil.copytree(tmp_path / "odd", tmp_path / "again", ignore=shutil.ignore_patterns("photos"))
    r = run_cli("index", "add", str(idx), str(tmp_path / "again"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["failed"] == [] and json.loads(r.stdout)["count"] == 2 * len(odd) + 6

    # every odd image as a query finds itself or its copy first (plain k-NN: they are all one photo, so the
    # class re-ranking may put another version of it first)
    def finds_itself(name: str, results: list[dict]) -> bool:  # (some odd images share their pixels: ties)
        return any(Path(h["path"]).name == name and h["score"] > 0.999 for h in results)

    r = run_cli("search", "--index", str(idx), "-k", "10", "--rerank", "none", "--json", *map(str, odd.values()))
    assert r.returncode == 0, r.stderr
    for name, hit in zip(odd, json.loads(r.stdout)):
        assert "error" not in hit and finds_itself(name, hit["results"]), (name, hit)
    with Server(create_app(str(idx))) as url, httpx.Client(base_url=url, timeout=60) as c:
        for name, path in odd.items():
            resp = c.post("/search", params={"k": 10}, content=path.read_bytes())  # the index's default re-ranking
            assert resp.status_code == 200, (name, resp.text)
            assert any(Path(h["path"]).name == name for h in resp.json()["results"]), name
    r = run_cli("dedup", str(idx), "--json")
    assert r.returncode == 0, r.stderr
    groups = json.loads(r.stdout)["groups"]
    # byte-identical files: an exact group, or a set inside the near group of their photo
    sets = [g["paths"] for g in groups if g["kind"] == "exact"] + [s for g in groups for s in g.get("identical", [])]
    exact = {frozenset(Path(m).parent.name + "/" + Path(m).name for m in s) for s in sets}
    assert {frozenset({f"odd/{n}", f"again/{n}"}) for n in odd} <= exact


# -- 3. removed stays removed ------------------------------------------------------------------------


def test_removed_items_stay_removed_across_pending_and_adopted_shards(embedder, photos, tmp_path):
    """An add killed with a pending shard (and, second round, with that shard's output written but not
    committed), then a remove of paths in it, then the add again: the removed paths stay removed."""
    from cbir.index.ingest import pipeline as build

    make_gallery(tmp_path / "g", photos, 8)
    g = Gallery.create(tmp_path / "idx", embedder, shard_size=4)
    g.build([tmp_path / "g"])
    expected = 8
    for adopt, folder in ((False, "more"), (True, "more2")):
        more = make_gallery(tmp_path / folder, photos[8:] if not adopt else photos[2:], 6)
        with g.writing():  # what a killed `add` leaves: the files registered in pending shards
            g.scan([tmp_path / folder])
            if adopt:  # ... and a shard's vector file written, not committed
                shard, items = build.pending_work(g.store)[0]
                build.embed_shard(g.embedder(), g.root, shard, items)
        gone = [more[0], more[1]] if not adopt else [more[2]]
        assert g.remove(gone)["removed"] == len(gone)
        report = g.add([tmp_path / folder])
        assert set(report["still_removed"]) >= set(map(str, gone))
        expected += 6 - len(gone)
        indexed = set(g.store.paths_for_ids(g.store.indexed_ids()).values())
        assert not set(map(str, gone)) & indexed and len(indexed) == expected and g.index.ntotal == expected
        assert {h["path"] for hs in g.search([str(more[0])], k=50) for h in hs["results"]}.isdisjoint(map(str, gone))
    # brought back only on purpose
    report = g.add([gone[0]], restore=True)
    assert report["indexed"] == 1 and str(gone[0]) in g.store.paths_for_ids(g.store.indexed_ids()).values()


# -- 4. settings: re-read under the lock -----------------------------------------------------------


def test_a_waiting_writer_does_not_write_back_old_settings(embedder, photos, tmp_path):
    from cbir.index.gallery import INDEX_JSON

    make_gallery(tmp_path / "g", photos, 12)
    Gallery.create(tmp_path / "idx", embedder, factory="IVF2,Flat").build([tmp_path / "g"])
    adder, tuner, reranker = Gallery(tmp_path / "idx"), Gallery(tmp_path / "idx"), Gallery(tmp_path / "idx")
    stale = dict(adder.config)
    tuner.tune(1.0)  # another process changes the search parameters while `adder` waits
    reranker_cfg = reranker.rerank_config("copy").to_dict()
    with reranker.writing():
        reranker.config["rerank"] = reranker_cfg
        reranker.save_config()
    make_gallery(tmp_path / "new", photos[12:], 3)
    adder.add([tmp_path / "new"])
    after = json.loads((tmp_path / "idx" / INDEX_JSON).read_text())
    assert after["search"] == tuner.config["search"] and after["search"] != stale.get("search")
    assert after["rerank"] == reranker_cfg and after["revision"] > stale["revision"]
    with pytest.raises(RuntimeError, match="outside writing"):
        adder.save_config()


def test_serve_sees_two_writes_within_one_mtime_and_retries_a_failed_load(embedder, photos, tmp_path):
    import os

    from cbir.index.gallery import INDEX_JSON

    make_gallery(tmp_path / "g", photos, 10)
    Gallery.create(tmp_path / "idx", embedder).build([tmp_path / "g"])
    reader, writer = Gallery(tmp_path / "idx"), Gallery(tmp_path / "idx")
    q = reader.vectors_for(np.array([1]))
    assert reader.search_vectors(q, k=1)[0][0].id == 1
    cfg_path = tmp_path / "idx" / INDEX_JSON
    stamp = cfg_path.stat().st_mtime_ns
    writer.remove([str(next((tmp_path / "g").rglob("img00.PNG")))])  # a new index.faiss and generation
    os.utime(cfg_path, ns=(stamp, stamp))  # as if both writes fell in one clock tick
    assert reader.refresh() and reader.index.ntotal == 9
    # a newer index.faiss that cannot be loaded: the old index answers, /healthz-style error, retried
    good = (tmp_path / "idx" / "index.faiss").read_bytes()
    writer.remove([str(next((tmp_path / "g").rglob("img01.jpg")))])
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    assert not reader.refresh() and "cannot load" in reader.load_error and reader.index.ntotal == 9
    writer.rebuild_index()  # repaired: the next refresh (after the retry delay) loads it
    reader._retry_at = 0.0
    assert reader.refresh() and reader.load_error is None and reader.index.ntotal == 8
    assert good  # (the first file was readable)


# -- 9. check and repair -------------------------------------------------------------------------------


def test_check_finds_damage_and_repair_recovers_or_reports_it(lite0_onnx, photos, tmp_path):
    make_gallery(tmp_path / "g", photos, 12)
    idx = tmp_path / "idx"
    assert (
        run_cli(
            "index", "build", str(tmp_path / "g"), "--model", str(lite0_onnx), "--index", str(idx), "--shard-size", "4"
        ).returncode
        == 0
    )
    r = run_cli("index", "check", str(idx), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout
    before = {
        h["path"]
        for h in json.loads(
            run_cli("search", "--index", str(idx), "-k", "12", "--rerank", "none", "--json", str(photos[0])).stdout
        )[0]["results"]
    }
    shards = sorted((idx / "shards").glob("shard-*.npz"))
    shards[1].write_bytes(shards[1].read_bytes()[:100])  # a torn vector file
    (idx / "shards" / shards[2].name.replace(".npz", ".orb.npy")).write_bytes(b"junk")  # damaged local features
    (idx / "index.faiss").write_bytes(b"not an index")
    r = run_cli("search", "--index", str(idx), str(photos[0]))
    assert r.returncode == 2 and "cbir index repair" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("index", "check", str(idx), "--json")
    assert r.returncode == 1, r.stdout
    parts = {(p["part"], p["shard"]) for p in json.loads(r.stdout)["problems"]}
    assert {("shard", 2), ("features", 3), ("index.faiss", None)} <= parts, parts
    r = run_cli("index", "repair", str(idx), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["recovered"] == 4 and rep["lost"] == [] and rep["problems_left"] == []
    assert run_cli("index", "check", str(idx)).returncode == 0
    after = {
        h["path"]
        for h in json.loads(
            run_cli("search", "--index", str(idx), "-k", "12", "--rerank", "none", "--json", str(photos[0])).stdout
        )[0]["results"]
    }
    assert after == before
    # an index built from vectors cannot embed a lost shard again: its items are reported lost, not dropped
    x = np.random.default_rng(0).normal(size=(30, 320)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "p.txt").write_text("".join(f"/v/{i}\n" for i in range(30)))
    vidx = tmp_path / "vidx"
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(tmp_path / "v.npy"),
                "--paths",
                str(tmp_path / "p.txt"),
                "--index",
                str(vidx),
                "--shard-size",
                "10",
            ]
        )
        == 0
    )
    sorted((vidx / "shards").glob("shard-*.npz"))[0].unlink()
    rep = json.loads(run_cli("index", "repair", str(vidx), "--json").stdout)
    assert rep["ok"] and len(rep["lost"]) == 10 and rep["lost"][0]["path"] == "/v/0"
    g = Gallery(vidx)
    assert g.store.count("indexed") == 20 and g.store.count("failed") == 10 and g.index.ntotal == 20


# -- 8. the per-item pipeline on any image Hypothesis can make -------------------------------------

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FORMATS = {
    "PNG": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "TIFF": ("1", "L", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"),
    "GIF": ("L", "P"),
}


@st.composite
def odd_image(draw) -> bytes:
    w, h = draw(st.integers(1, 400)), draw(st.integers(1, 400))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode in ("I;16", "I"):
        img = (
            Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16)).convert(mode)
            if mode == "I"
            else Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16))
        )
    elif mode == "F":
        img = Image.fromarray(rng.random((h, w)).astype(np.float32) * draw(st.sampled_from([1.0, 255.0, 70000.0])))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # a mode this Pillow cannot write in this format: not a valid image
        assume(False)
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=odd_image())
def test_every_per_item_step_takes_any_valid_image(embedder, data):
    """Decode + resize, the model, and local features: a unit vector and a feature record for every
    valid image of any size, mode and format (never an exception)."""
    from cbir.copies import local_features

    res = embedder.embed_files([data])
    assert not res.errors, res.errors
    assert res.vectors.shape == (1, embedder.dim) and abs(float(np.linalg.norm(res.vectors[0])) - 1) < 1e-4
    rec = local_features.extract(data)
    assert 0 <= int(rec["n"]) <= local_features.MAX_KEYPOINTS


@settings(max_examples=150, deadline=None)
@given(data=odd_image())
def test_windows_and_layout_boxes_take_any_valid_image(data):
    """Search's and dedup's windows with the layout box: every box inside the image with positive
    sides, the layout box (innermost of the band and the inset box) between ``MIN_SIDE`` per side and
    the larger of the two area caps — or, for an image too small to cut into half windows, an
    ``ImageError`` naming it (never another exception)."""
    from cbir.copies import layout, local_features
    from cbir.errors import ImageError

    try:
        w = local_features.windows(data, "odd", content=True)
    except ImageError as e:
        assert "odd" in str(e) and min(Image.open(io.BytesIO(data)).size) < 8, e
        return
    assert (
        len(w.crops)
        == len(w.features)
        == len(w.boxes)
        in (len(local_features.WINDOWS), len(local_features.WINDOWS) + 1)
    )
    for x0, y0, x1, y1 in w.boxes:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    if len(w.boxes) > len(local_features.WINDOWS):
        x0, y0, x1, y1 = w.boxes[-1]
        assert min(x1 - x0, y1 - y0) >= layout.MIN_SIDE - 1e-9
        assert (x1 - x0) * (y1 - y0) < max(layout.MAX_AREA, layout.INSET_AREA) + 1e-9
    if w.bands is not None:  # a band box makes a layout window (the innermost box exists)
        x0, y0, x1, y1 = w.bands
        assert len(w.boxes) > len(local_features.WINDOWS) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_dedup_windows_pass_reports_a_vanished_file_and_names_a_missing_model(lite0_onnx, photos, tmp_path):
    """An indexed file deleted since the build: dedup still answers, naming it (compared whole only).
    The index's model deleted: the windows pass cannot embed, and the error says how to go on."""
    model = tmp_path / "model.onnx"
    shutil.copy(lite0_onnx, model)
    files = make_gallery(tmp_path / "g", photos, 6)
    shutil.copy(files[1], tmp_path / "g" / "copy.jpg")
    idx = tmp_path / "idx"
    assert run_cli("index", "build", str(tmp_path / "g"), "--model", str(model), "--index", str(idx)).returncode == 0
    files[3].unlink()
    r = run_cli("dedup", str(idx), "--json")
    assert r.returncode == 0, r.stderr
    assert "windows pass" in r.stderr and files[3].name in r.stderr
    assert any(len(g["paths"]) == 2 for g in json.loads(r.stdout)["groups"])
    model.unlink()
    r = run_cli("dedup", str(idx))
    assert r.returncode == 2 and "--partial 0" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("dedup", str(idx), "--partial", "0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["groups"], r.stderr
