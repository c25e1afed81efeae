"""A live gallery: searches while the index is written — one snapshot per search, the vote index
kept in step, a deadline for the whole request, an error boundary per stage, `index check` on
galleries with byte-identical files, and a short `cbir bench live` soak."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from cbir.copies import cascade, votes
from cbir.copies import local_features as lf
from cbir.deadline import Deadline
from cbir.index.gallery import Gallery
from conftest import make_gallery


def cli(*args, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CBIR_CRASH_AT"}
    if crash:
        env["CBIR_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "cbir", *args], capture_output=True, text=True, timeout=300, env=env)


def upside_down(src, dst) -> str:
    Image.open(src).convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(dst, quality=90)
    return str(dst)


def built_and_one_more(embedder, photos, tmp_path, photo) -> tuple:
    """(an index built over 6 photos, a 7th photo not in it yet, under ``tmp_path / "new"``)."""
    make_gallery(tmp_path / "g", photos, 6)
    (tmp_path / "new").mkdir()
    new = tmp_path / "new" / "p.jpg"
    Image.open(photo).convert("RGB").save(new, quality=92)
    Gallery.create(tmp_path / "idx", embedder).build([tmp_path / "g"])
    return tmp_path / "idx", new


def test_a_guided_rematch_that_keeps_no_pair_verifies_nothing(photos):
    """A first fit that maps every keypoint off the other image leaves no pair to re-match (seen as
    an IndexError on a 21,000-photo gallery); it verifies nothing instead."""
    a, b = lf.extract(photos[0]), lf.extract(photos[1])
    far = np.array([[1.0, 0.0, 1e5], [0.0, 1.0, 1e5]])
    assert lf.rematch(a, b, far) == (0, None)
    empty = np.empty(0, np.int64)
    assert [len(x) for x in lf._one_to_one(empty, empty, np.empty(0, np.int32))] == [0, 0]


def test_votes_for_items_a_killed_add_left_in_sqlite_only_are_not_looked_up(embedder, photos, tmp_path):
    """An add killed after its features were written: SQLite (and so the vote index) knows the new
    items, the FAISS index the reader searches does not. Their votes are left out (they used to be
    looked up in FAISS: `reconstruct: key not found`, a 500); once the index is published they verify."""
    idx, new = built_and_one_more(embedder, photos, tmp_path, photos[8])
    reader = Gallery(idx, embedder)
    q = upside_down(new, tmp_path / "q.jpg")
    assert reader.search([q], k=3)[0]["results"]  # the snapshot is loaded now
    r = cli("index", "add", str(idx), str(tmp_path / "new"), crash="features-written:1")
    assert r.returncode == -9, r.stderr
    new_id = reader.store.ids_under(str(new))[0]
    assert votes.vote(reader.vote_index(), lf.extract_query(q), 1) == [new_id]  # voted for, not in FAISS
    got = reader.search([q], k=3)[0]
    assert "failed" not in got and new_id not in {h["id"] for h in got["results"]} and len(got["results"]) == 3
    reader.reconcile()  # no writer holds the lock: index.faiss is brought up to SQLite
    hits = reader.search([q], k=3)[0]["results"]
    assert hits[0]["id"] == new_id and hits[0]["verified"]


def test_answers_stay_full_while_a_remove_is_committed_but_not_published(embedder, photos, tmp_path):
    """Between a remove's SQLite commit and its index.faiss (or after a writer died there) the
    snapshot still holds the removed items: they are left out inside the k-NN, so an answer holds
    min(k, items still indexed) and none of them."""
    make_gallery(tmp_path / "g", photos, 12)
    idx = tmp_path / "idx"
    g = Gallery.create(idx, embedder)
    g.build([tmp_path / "g"])
    reader = Gallery(idx)
    assert reader.index.ntotal == 12  # the snapshot it searches: loaded before the remove
    ids, vecs = reader.load_vectors()
    gone = ids[:4].tolist()
    with g.store.transaction():
        g.store.mark_removed(gone)
    assert not reader.in_sync and reader.snapshot().cpu.ntotal == 12
    for rerank in ("none", "class", "default"):
        rows = reader.search_vectors(vecs[:4], k=8, rerank=rerank)
        assert all(len(row) == 8 for row in rows), rerank
        assert not {h.id for row in rows for h in row} & set(gone), rerank
    assert all(len(row) == 8 for row in reader.search_vectors(vecs[4:6], k=12, rerank="none"))
    with pytest.raises(Exception, match="not in the index"):
        reader.search_items([gone[0]])


def test_the_vote_index_follows_adds_and_removes_without_a_rebuild(embedder, photos, tmp_path):
    make_gallery(tmp_path / "g", photos, 8)
    idx = tmp_path / "idx"
    g = Gallery.create(idx, embedder)
    g.build([tmp_path / "g"])
    first = g.vote_index()
    assert g.votes.builds == 1 and len(first.ids) == 8
    (tmp_path / "more").mkdir()
    files = [shutil.copy(p, tmp_path / "more" / f"m{i}{p.suffix}") for i, p in enumerate(photos[10:12])]
    g.add([tmp_path / "more"])
    second = g.vote_index()
    added = [g.store.ids_under(os.path.abspath(f))[0] for f in files]
    assert (g.votes.builds, g.votes.updates) == (1, 1) and set(added) <= set(second.ids.tolist())
    assert votes.vote(second, lf.extract_query(files[0]), 1) == [added[0]]
    assert first.ntotal < second.ntotal and len(first.ids) == 8  # the first state is left as it was
    g.remove([files[0]])
    third = g.vote_index()
    assert added[0] not in third.ids and added[0] not in votes.counts(third, lf.extract_query(files[0]))
    loaded = Gallery(idx)  # another process: the state the writer saved, nothing built
    assert loaded.vote_index().ids.tolist() == third.ids.tolist() and loaded.vote_index().ntotal == third.ntotal
    assert loaded.votes.builds == loaded.votes.updates == 0
    (idx / "votes.npz").unlink()
    fresh = Gallery(idx).vote_index()  # a full build of the same set: the same items and descriptors
    assert fresh.ids.tolist() == third.ids.tolist() and fresh.ntotal == third.ntotal
    # in a live gallery (`cbir serve`) the update is made aside; searches use the last state meanwhile
    live = Gallery(idx, live=True)
    before = live.vote_index()
    g.remove([files[1]])
    assert live.vote_index() is before
    live.votes.wait(60)
    assert added[1] not in live.vote_index().ids and live.votes.updates == 1


def test_the_saved_vote_index_is_caught_up_not_trusted(embedder, photos, tmp_path, monkeypatch):
    """The writers save the vote index (``votes.npz``); another process loads it and catches up with
    what changed. A file whose content changed keeps its id but not its descriptors; features that
    were missing when an item was read are read once there; a budget moved 2× rebuilds; a damaged
    file is rebuilt, and one that cannot be written is only noted."""
    from cbir.index.storage import features

    files = make_gallery(tmp_path / "g", photos, 6)
    idx = tmp_path / "idx"
    g = Gallery.create(idx, embedder)
    report = g.build([tmp_path / "g"])
    assert (idx / "votes.npz").is_file() and report["timings"]["vote_index"] > 0
    assert g.info()["vote_index_bytes"] == (idx / "votes.npz").stat().st_size
    # a changed file: same id, embedded again into a new shard; its old descriptors leave the votes
    item = g.store.ids_under(os.path.abspath(files[0]))[0]
    assert votes.counts(g.vote_index(), lf.extract_query(photos[0]))[item] >= 100
    Image.open(photos[10]).convert("RGB").save(files[0], quality=90)
    g.add([tmp_path / "g"])
    assert g.store.ids_under(os.path.abspath(files[0])) == [item]
    loaded = Gallery(idx).vote_index()
    assert votes.vote(loaded, lf.extract_query(photos[10]), 1) == [item]
    assert votes.counts(loaded, lf.extract_query(photos[0])).get(item, 0) < 10  # chance matches at most
    # a shard's features missing when the state was made: its items are read again once they are there
    shard = g.store.shards_for_ids([item])[item]
    path = features.feature_path(idx, shard)
    path.rename(path.with_suffix(".away"))
    (idx / "votes.npz").unlink()
    partial = Gallery(idx)
    assert partial.votes.make() is not None and item not in votes.counts(
        partial.vote_index(), lf.extract_query(photos[10])
    )
    assert (votes.load(idx / "votes.npz").shards == -1).sum() >= 1  # saved as not read: read again in any process
    path.with_suffix(".away").rename(path)
    assert votes.vote(partial.votes.make(), lf.extract_query(photos[10]), 1) == [item]
    assert votes.vote(Gallery(idx).vote_index(), lf.extract_query(photos[10]), 1) == [item]  # and saved
    # a state made under a cap 2× away (an older version's, or a grown gallery's) is rebuilt
    monkeypatch.setattr(votes, "MAX_MIB", 0.01)
    small = Gallery(idx)
    assert small.vote_index().keep < 100 and small.votes.builds == 1
    monkeypatch.undo()
    again = Gallery(idx)
    assert again.vote_index().keep == lf.MAX_KEYPOINTS and again.votes.builds == 1
    # damaged: rebuilt and noted; the search goes on
    (idx / "votes.npz").write_bytes(b"not a vote index")
    damaged = Gallery(idx)
    assert votes.vote(damaged.vote_index(), lf.extract_query(photos[10]), 1) == [item]
    assert damaged.votes.builds == 1 and votes.load(idx / "votes.npz").ntotal == damaged.vote_index().ntotal
    # read-only (as root here, a chmod would not stop the write: the refusal is raised where the write is)
    (idx / "votes.npz").unlink()

    def refused(state, path):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(votes, "save", refused)
    ro = Gallery(idx)
    assert ro.vote_index() is not None and "not saved" in ro.votes.error and not (idx / "votes.npz").exists()


def test_a_writer_killed_while_saving_the_vote_index_loses_nothing(embedder, photos, tmp_path):
    """kill -9 between writing the vote index's temporary file and replacing votes.npz: the old file
    stays whole, the next search loads it and catches up (the added photo is voted for), the index
    checks whole, and the next save removes the dead writer's temporary file."""
    idx, new = built_and_one_more(embedder, photos, tmp_path, photos[10])
    before = votes.load(idx / "votes.npz")
    r = cli("index", "add", str(idx), str(tmp_path / "new"), crash="votes-written:1")
    assert r.returncode == -9, r.stderr
    left = list(idx.glob(".votes.npz.*.npz"))
    assert len(left) == 1 and votes.load(idx / "votes.npz").ids.tolist() == before.ids.tolist()
    assert cli("index", "check", str(idx)).returncode == 0
    g = Gallery(idx)
    new_id = g.store.ids_under(str(new))[0]
    assert votes.vote(g.vote_index(), lf.extract_query(new), 1) == [new_id] and g.votes.builds == 0
    assert not left[0].exists() and new_id in votes.load(idx / "votes.npz").ids  # caught up, saved, cleaned


def test_a_stage_that_fails_on_one_query_degrades_only_that_answer(verified_index, photos, tmp_path, monkeypatch):
    g, _ = verified_index
    bad, good = upside_down(photos[13], tmp_path / "bad.jpg"), upside_down(photos[14], tmp_path / "good.jpg")
    real = lf.windows

    def windows(source, name, **kw):
        if str(source) == bad:
            raise RuntimeError("injected: a stage bug on this query only")
        return real(source, name, **kw)

    monkeypatch.setattr(lf, "windows", windows)
    before = cascade.ERRORS["windows"]
    a, b = g.search([bad, good], k=4)
    assert a["failed"] == ["windows: RuntimeError: injected: a stage bug on this query only"] and len(a["results"]) == 4
    assert "failed" not in b and len(b["results"]) == 4
    assert cascade.ERRORS["windows"] == before + 1


def test_past_the_deadline_stages_are_not_started_and_the_answer_says_partial(verified_index):
    g, files = verified_index
    late = g.search([str(files[0])], k=5, deadline=Deadline(0))[0]
    assert late["partial"] and late["skipped"] == ["verify", "hash", "windows", "colour"] and len(late["results"]) == 5
    assert not any(h["verified"] for h in late["results"])
    on_time = g.search([str(files[0])], k=5, deadline=Deadline(60))[0]
    assert "partial" not in on_time and on_time["results"][0]["verified"]


def test_check_passes_byte_identical_files_and_still_finds_shifted_ids(lite0_onnx, photos, tmp_path):
    """Copies of one file have equal vectors, and either may be found first: not damage. An index.faiss
    whose ids point at other vectors is damage, with or without such copies; repair mends it."""
    from cbir.index.ann import faiss_index

    def shift_ids(idx) -> None:
        ids, vecs = Gallery(idx).load_vectors()
        shifted, _ = faiss_index.build(vecs, np.roll(ids, 1))
        faiss_index.save(shifted, idx / "index.faiss")

    files = make_gallery(tmp_path / "g" / "a", photos, 10)
    single = tmp_path / "single"  # no copies: the damage the check was built for
    assert (
        cli("index", "build", str(tmp_path / "g" / "a"), "--model", str(lite0_onnx), "--index", str(single)).returncode
        == 0
    )
    shift_ids(single)
    r = cli("index", "check", str(single))
    assert r.returncode == 1 and "ids point at other vectors" in r.stdout, r.stdout
    shutil.copytree(tmp_path / "g" / "a", tmp_path / "g" / "b")
    idx = tmp_path / "idx"
    assert cli("index", "build", str(tmp_path / "g"), "--model", str(lite0_onnx), "--index", str(idx)).returncode == 0
    assert len(files) == 10 and Gallery(idx).store.count("indexed") == 20
    r = cli("index", "check", str(idx), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout
    shift_ids(idx)  # copies and shifted ids at once
    r = cli("index", "check", str(idx), "--json")
    assert r.returncode == 1 and "ids point at other vectors" in r.stdout, r.stdout
    assert cli("index", "repair", str(idx)).returncode == 0
    assert cli("index", "check", str(idx)).returncode == 0


def test_serve_answers_504_past_a_short_deadline_and_partial_never_500(verified_index, tmp_path):
    import httpx

    from cbir.serve.app import create_app
    from test_serve import Server

    g, files = verified_index
    data = open(files[0], "rb").read()
    with Server(create_app(str(g.root))) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/search", params={"k": 3, "deadline_ms": 1}, content=data)
        assert r.status_code == 504 and r.headers["retry-after"] == "1" and "no answer within" in r.json()["error"]
        r = c.post("/search", params={"k": 3}, content=data)
        assert r.status_code == 200 and r.json()["partial"] is False and r.json()["results"][0]["verified"]
        assert "cbir_deadline_exceeded_total 1.0" in c.get("/metrics").text


# -- the whole cascade on any image, against a gallery of a few thousand varied items -----------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_reliability import odd_image  # noqa: E402

N_VARIED = 2000


@pytest.fixture(scope="module")
def varied_gallery(tmp_path_factory, lite0_onnx, photos):
    """~2,000 items: crops, flips, tints, blurs and grey versions of the sample photos, and flat,
    striped and noisy Pillow images, at 48–240 pixels."""
    from cbir.engine.embedder import Embedder

    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(0)
    base = [Image.open(p).convert("RGB") for p in photos]
    for i in range(N_VARIED):
        sub = root / "g" / f"{i // 250:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        kind = i % 10
        if kind < 7:
            img = base[i % len(base)]
            w, h = img.size
            cw, ch = int(w * rng.uniform(0.3, 1)), int(h * rng.uniform(0.3, 1))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x, y, x + cw, y + ch))
            img = [
                img,
                ImageOps.mirror(img),
                ImageOps.flip(img),
                ImageOps.grayscale(img).convert("RGB"),
                img.filter(ImageFilter.GaussianBlur(3)),
                Image.blend(img, Image.new("RGB", img.size, (200, 40, 40)), 0.4),
                ImageOps.posterize(img, 3),
            ][kind]
        elif kind == 7:
            img = Image.new(
                "RGB", (int(rng.integers(48, 240)), int(rng.integers(48, 240))), tuple(rng.integers(0, 256, 3).tolist())
            )
        elif kind == 8:
            a = (np.arange(160)[:, None] // int(rng.integers(2, 20)) % 2 * 255).astype(np.uint8)
            img = Image.fromarray(np.repeat(a, 160, 1)).convert("RGB")
        else:
            img = Image.fromarray(
                rng.integers(0, 256, (int(rng.integers(48, 200)), int(rng.integers(48, 200)), 3), dtype=np.uint8)
            )
        img.thumbnail((240, 240))
        img.save(sub / f"{i:05d}.jpg", quality=85)
    g = Gallery.create(root / "idx", Embedder(lite0_onnx))
    g.build([root / "g"])
    assert g.store.count("indexed") == N_VARIED
    return g


def blurred_camera() -> bytes:
    import io

    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.camera()).filter(ImageFilter.GaussianBlur(4)).save(buf, "JPEG")
    return buf.getvalue()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=odd_image(), treat=st.sampled_from(["as is", "blur", "flat", "tiny", "noise", "upside down"]))
@example(data=blurred_camera(), treat="as is")
def test_the_whole_cascade_takes_any_image_against_a_varied_gallery(varied_gallery, data, treat):
    """Every stage runs (verification, windows, votes, colour) and none fails: an answer of k results,
    or a one-line error for an image the embedder refuses."""
    import io
    import tempfile

    img = Image.open(io.BytesIO(data))
    img.load()
    img = img.convert("RGB")
    if treat == "blur":
        img = img.filter(ImageFilter.GaussianBlur(6))
    elif treat == "flat":
        img = Image.new("RGB", img.size, img.getpixel((0, 0)))
    elif treat == "tiny":
        img = img.resize((max(1, img.width // 50), max(1, img.height // 50)))
    elif treat == "noise":
        img = Image.fromarray(
            np.clip(
                np.asarray(img, np.int16) + np.random.default_rng(0).integers(-60, 60, (img.height, img.width, 3)),
                0,
                255,
            ).astype(np.uint8)
        )
    elif treat == "upside down":
        img = ImageOps.flip(img)
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        img.save(f.name)
        got = varied_gallery.search([f.name], k=10)[0]
    assert "failed" not in got, got.get("failed")
    assert ("error" in got and got["results"] == []) or len(got["results"]) == 10, got


def test_bench_live_short_soak(lite0_onnx, photos, tmp_path):
    """60 s of `cbir bench live`: readers against a real `cbir serve` while a writer adds, removes
    and kills adds: no 5xx, nothing non-JSON, no short answer, no removed item shown, none past its
    deadline."""
    from cbir.bench.live import LiveConfig, main_live

    make_gallery(tmp_path / "data" / "base", photos[:8])
    for name, part in (("c1", photos[8:12]), ("c2", photos[12:16])):
        make_gallery(tmp_path / "data" / name, part)
    cfg = LiveConfig(
        lite0_onnx,
        [tmp_path / "data" / "base"],
        [tmp_path / "data" / "c1", tmp_path / "data" / "c2"],
        sorted((tmp_path / "data").rglob("*.jpg")),
        tmp_path / "work",
        idle_s=8,
        writing_s=40,
        after_s=8,
        readers=2,
        k=5,
        kill_every=2,
        kill_after=(0.5, 2.0),
    )
    r = main_live(cfg, tmp_path / "live.json", None)
    w = r["writer"]
    assert w["adds"] >= 2 and w["removes"] >= 2 and w["failed"] == 0, w["log"]
    for name, p in {**r["phases"], "fresh": r["fresh"]}.items():
        assert p["requests"] > 0, name
        assert p["5xx"] == 0 and p["non_json"] == 0 and p["short"] == 0 and p["past_deadline"] == 0, (name, p)
        assert set(p["status"]) == {"200"}, (name, p)
    assert r["resurrected"] == 0, r["resurrected_examples"]


def test_shards_without_an_indexed_item_are_unmapped(embedder, photos, tmp_path):
    """A server living through adds and removes keeps only the shards that still hold indexed items
    mapped (every shard it ever read stayed mapped, and counted in its RSS)."""
    files = make_gallery(tmp_path / "g", photos, 12)
    g = Gallery.create(tmp_path / "idx", embedder, shard_size=4)
    g.build([tmp_path / "g"])
    ids = g.store.indexed_ids()
    assert all(r is not None for r in g.features.get(ids)) and len(g.features._rows._shards) == 3
    shard = g.store.shards_for_ids(ids[:1])[int(ids[0])]
    g.remove([p for i, p in g.store.shard_items(shard)])
    assert all(r is not None for r in g.features.get(g.store.indexed_ids()))
    assert shard not in g.features._rows._shards and len(g.features._rows._shards) == 2
    assert len(files) == 12


def test_bench_live_soaks_a_copy_of_an_existing_index(verified_index, lite0_onnx, tmp_path, capsys):
    """``--index``: the soak's index is a copy of one already built (a 100k gallery needs no rebuild);
    the original is never touched, and a folder that is not an index is refused by name."""
    import hashlib

    from cbir.bench.live import LiveConfig, build_index
    from cbir.cli import main

    g, files = verified_index

    def digest(root):
        return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    before = digest(g.root)
    cfg = LiveConfig(lite0_onnx, [], [], files, tmp_path / "w", from_index=g.root)
    cfg.work.mkdir()
    index = build_index(cfg, None)
    assert digest(index) == before and Gallery(index).info()["count"] == len(files)
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(files[3].read_bytes())
    Gallery(index).add([str(copy)])
    assert digest(g.root) == before
    args = ["bench", "live", "--model", str(lite0_onnx), "--churn", str(tmp_path), "--queries", str(files[0])]
    assert main([*args, "--work", str(tmp_path / "w2"), "--index", str(tmp_path)]) != 0
    assert "not an index directory" in capsys.readouterr().err
    assert main([*args, "--work", str(tmp_path / "w3")]) != 0 and "--base" in capsys.readouterr().err
