"""Inputs beyond a local folder (WebDataset tar shards, Parquet, fsspec memory://) and sharded outputs
other tools read back (embedding-reader)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbir.cli import main
from conftest import make_gallery

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
fsspec = pytest.importorskip("fsspec")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photos):
    """8 real photos as files, the same bytes in a tar shard (plus a corrupt member and a non-image
    member), a Parquet of bytes (plus a null and a garbage row) and a Parquet of paths."""
    root = tmp_path_factory.mktemp("sources")
    files = make_gallery(root / "files", photos, 8)
    shard = root / "shard-00000.tar"
    with tarfile.open(shard, "w") as tf:
        for i, f in enumerate(files):
            for name, data in ((f"{i:04d}{f.suffix.lower()}", f.read_bytes()), (f"{i:04d}.json", b'{"i": %d}' % i)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        bad = b"\xff\xd8 not really a jpeg"
        info = tarfile.TarInfo("9999.jpg")
        info.size = len(bad)
        tf.addfile(info, io.BytesIO(bad))
    pq.write_table(
        pa.table(
            {
                "key": [f.name for f in files] + ["null", "garbage"],
                "jpg": [f.read_bytes() for f in files] + [None, b"garbage"],
            }
        ),
        root / "bytes.parquet",
    )
    pq.write_table(pa.table({"url": [str(f) for f in files]}), root / "paths.parquet")
    return root, files, shard


def embed_json(args, capsys) -> dict:
    assert main(["embed", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tar_and_parquet_inputs_embed_like_the_files(corpus, lite0_onnx, tmp_path, capsys, embedder):
    root, files, shard = corpus
    want = embedder.embed([str(f) for f in files])
    r = embed_json(
        [str(shard), "--model", str(lite0_onnx), "-o", str(tmp_path / "t.npy"), "--paths-out", str(tmp_path / "t.txt")],
        capsys,
    )
    uris = (tmp_path / "t.txt").read_text().split()
    assert uris == [f"tar://{shard}#{i:04d}" for i in range(8)]
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), want, atol=1e-6)  # same bytes, same vectors
    assert [f["path"] for f in r["failed"]] == [f"tar://{shard}#9999"]

    r = embed_json(
        [
            str(root / "bytes.parquet"),
            "--parquet-column",
            "jpg",
            "--model",
            str(lite0_onnx),
            "-o",
            str(tmp_path / "p.npy"),
        ],
        capsys,
    )
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, atol=1e-6)
    failed = {f["path"].rsplit("#", 1)[1].split("?")[0]: f["error"] for f in r["failed"]}
    assert set(failed) == {"8", "9"} and "null image bytes" in failed["8"]

    r = embed_json(
        [
            str(root / "paths.parquet"),
            "--parquet-path-column",
            "url",
            "--model",
            str(lite0_onnx),
            "-o",
            str(tmp_path / "q.npy"),
        ],
        capsys,
    )
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), want, atol=1e-6)


def test_bad_column_and_unknown_scheme_are_one_line(corpus, lite0_onnx, tmp_path, capsys):
    root, _, _ = corpus
    for args, msg in (
        ([str(root / "bytes.parquet"), "--parquet-column", "image"], "--parquet-column 'image': "),
        (["nosuchscheme://bucket/a.jpg"], "unknown or unavailable URL scheme"),
    ):
        assert main(["embed", *args, "--model", str(lite0_onnx), "-o", str(tmp_path / "x.npy")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
        assert not (tmp_path / "x.npy").exists()


def test_index_a_tar_shard_by_uri_resume_and_remove(corpus, lite0_onnx, tmp_path, capsys):
    from cbir.index.gallery import Gallery

    root, files, shard = corpus
    idx = tmp_path / "idx"
    assert main(["index", "build", str(shard), "--model", str(lite0_onnx), "--index", str(idx), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["count"] == 8 and [f["path"] for f in first["failed"]] == [f"tar://{shard}#9999"]
    hit = Gallery(idx).search([str(files[3])], k=1)[0]["results"][0]
    assert hit["path"] == f"tar://{shard}#0003" and hit["score"] > 0.9999
    assert main(["index", "build", str(shard), "--model", str(lite0_onnx), "--index", str(idx), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["indexed"] == 0 and len(again["skipped"]) == 8  # URIs resume like files
    assert main(["index", "remove", str(idx), f"tar://{shard}#0003"]) == 0
    assert Gallery(idx).search([str(files[3])], k=1)[0]["results"][0]["path"] != f"tar://{shard}#0003"


def test_memory_filesystem_in_sharded_outputs_out(corpus, lite0_onnx, tmp_path, capsys, embedder):
    """fsspec's memory:// is a real filesystem implementation; outputs are read back by embedding-reader."""
    root, files, _ = corpus
    mem = fsspec.filesystem("memory")
    for f in files:
        mem.pipe(f"/gallery/{f.parent.name}/{f.name}", f.read_bytes())
    want = {
        f"memory://gallery/{f.parent.name}/{f.name}": v for f, v in zip(files, embedder.embed([str(f) for f in files]))
    }
    out = tmp_path / "out"
    r = embed_json(["memory://gallery", "--model", str(lite0_onnx), "--out", str(out), "--shard-rows", "3"], capsys)
    assert r["embedded"] == 8 and r["shards"] == 3 and r["failed"] == []
    from cbir.engine.outputs import read_back

    vecs, uris = read_back(out)
    assert sorted(uris) == sorted(want)
    np.testing.assert_allclose(vecs, np.stack([want[u] for u in uris]), atol=1e-6)

    er = pytest.importorskip("embedding_reader")
    reader = er.EmbeddingReader(
        str(out / "embeddings"), file_format="parquet_npy", metadata_folder=str(out / "metadata"), meta_columns=["uri"]
    )
    got = {}
    for emb, meta in reader(batch_size=5, start=0, end=reader.count):
        got.update(zip(meta["uri"], emb))
    assert set(got) == set(want)
    for u, v in got.items():
        np.testing.assert_allclose(v, want[u], atol=1e-6)

    (out / "metadata" / "meta_00002.parquet").unlink()  # shard 2 unfinished: only it is redone
    r = embed_json(["memory://gallery", "--model", str(lite0_onnx), "--out", str(out), "--shard-rows", "3"], capsys)
    assert r["embedded"] == 2 and r["already_done"] == 6

    pout = tmp_path / "pout"
    embed_json(["memory://gallery", "--model", str(lite0_onnx), "--out", str(pout), "--format", "parquet"], capsys)
    pv, pu = read_back(pout, "parquet")
    np.testing.assert_allclose(pv, np.stack([want[u] for u in pu]), atol=1e-6)
    reader = er.EmbeddingReader(
        str(pout / "embeddings"), file_format="parquet", embedding_column="embedding", meta_columns=["uri"]
    )
    ((emb, meta),) = list(reader(batch_size=100, start=0, end=reader.count))
    np.testing.assert_allclose(emb, np.stack([want[u] for u in meta["uri"]]), atol=1e-6)


def test_unreachable_object_is_a_per_item_failure(corpus, lite0_onnx, tmp_path, capsys):
    root, files, _ = corpus
    fsspec.filesystem("memory").pipe("/there/a.jpg", files[0].read_bytes())
    r = embed_json(
        [
            "memory://there/a.jpg",
            "memory://there/missing.jpg",
            "--model",
            str(lite0_onnx),
            "-o",
            str(tmp_path / "v.npy"),
        ],
        capsys,
    )
    assert r["embedded"] == 1 and [f["path"] for f in r["failed"]] == ["memory://there/missing.jpg"]
    assert "no such file or object" in r["failed"][0]["error"]


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_many_decode_threads_read_the_right_bytes(tmp_path):
    """16 threads read members of 12 shards through a 2-entry cache (shard indexes evicted all the time)
    and the Parquet column of 3 files: every read returns its own bytes, each column is loaded once."""
    from concurrent.futures import ThreadPoolExecutor

    from cbir import sources

    rng = np.random.default_rng(0)
    want: dict[str, bytes] = {}
    for s in range(12):
        members = {f"k{s}_{i}.jpg": rng.bytes(int(rng.integers(10, 3000))) for i in range(20)}
        write_tar(tmp_path / f"s{s}.tar", members)
        want.update({f"tar://{tmp_path / f's{s}.tar'}#k{s}_{i}": d for i, d in enumerate(members.values())})
    for p in range(3):
        cells = [rng.bytes(50 + i) for i in range(30)]
        pq.write_table(pa.table({"img": cells}), tmp_path / f"p{p}.parquet")
        want.update({f"parquet://{tmp_path / f'p{p}.parquet'}#{i}?column=img": c for i, c in enumerate(cells)})
    uris = list(want) * 3
    np.random.default_rng(1).shuffle(uris)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(sources.Reader(cache=2).read, uris))
    assert all(g == want[u] for u, g in zip(uris, got))
    # 16 threads missing the same 3 Parquet columns at once: each column is read once
    loads = []
    real = pq.ParquetFile.read

    def counting_read(self, *a, **k):
        loads.append(1)
        return real(self, *a, **k)

    pq.ParquetFile.read = counting_read
    try:
        cells = [u for u in want if u.startswith("parquet://")] * 4
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(sources.Reader(cache=8).read, cells))
    finally:
        pq.ParquetFile.read = real
    assert all(g == want[u] for u, g in zip(cells, got)) and len(loads) == 3


def test_member_size_cap_and_missing_rows_are_per_item(tmp_path):
    from cbir import sources
    from cbir.errors import ImageError

    write_tar(tmp_path / "s.tar", {"big.jpg": b"x" * 5000, "small.jpg": b"y" * 10})
    reader = sources.Reader(max_member_bytes=1000)
    assert reader.read(f"tar://{tmp_path / 's.tar'}#small") == b"y" * 10
    with pytest.raises(ImageError, match="exceeds the limit"):
        reader.read(f"tar://{tmp_path / 's.tar'}#big")
    pq.write_table(pa.table({"img": [b"a"]}), tmp_path / "p.parquet")
    with pytest.raises(ImageError, match="no row 5"):
        reader.read(f"parquet://{tmp_path / 'p.parquet'}#5?column=img")


_key = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/.#\\"), min_size=1, max_size=20
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(_key, min_size=1, max_size=6, unique=True),
    folder=st.sampled_from(["", "a/", "deep/er/"]),
    ext=st.sampled_from(["jpg", "JPEG", "png", "webp"]),
)
def test_tar_names_round_trip(tmp_path_factory, keys, folder, ext):
    """Any member name WebDataset allows (a key with spaces, unicode, '?' …, in sub-folders) is listed
    once as ``tar://shard#key`` and read back as its own bytes."""
    from cbir import sources

    d = tmp_path_factory.mktemp("names")
    members = {f"{folder}{k}.{ext}": f"data-{k}".encode() for k in keys}
    members.update({f"{folder}{k}.json": b"{}" for k in keys})
    write_tar(d / "s.tar", members)
    uris = sources.tar_members(str(d / "s.tar"))
    assert uris == [f"tar://{d / 's.tar'}#{folder}{k}" for k in keys]
    reader = sources.Reader()
    assert [reader.read(u) for u in uris] == [f"data-{k}".encode() for k in keys]
