"""Galleries beyond the photo folder: existing vectors in, the auto index choice tuned to a recall
target, per-call search knobs, and one-line refusals that write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.cli import main
from cbir.errors import CbirError
from cbir.index.ann import tuning


def clustered(n: int, dim: int, seed: int = 0, noise: float = 0.5, draw_seed: int | None = None) -> np.ndarray:
    """Unit vectors around n/100 random centres (the shape `cbir bench search` uses); ``draw_seed``
    draws new points around the same centres (held-out vectors of the same distribution)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 100, 10), dim)).astype(np.float32)
    if draw_seed is not None:
        rng = np.random.default_rng(draw_seed)
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors_30k(tmp_path_factory):
    d = tmp_path_factory.mktemp("vec")
    x = clustered(30_000, 320)
    np.save(d / "part-0.npy", x[:20_000])
    np.save(d / "part-1.npy", x[20_000:].astype(np.float16))  # other dtypes are accepted
    (d / "paths.txt").write_text("".join(f"s3://bucket/img{i:06d}.jpg\n" for i in range(len(x))))
    return d, np.concatenate([x[:20_000], x[20_000:].astype(np.float16).astype(np.float32)])


def ids_of(results, k: int = 10) -> np.ndarray:
    """Hit ids padded with -1 (an IVF probe of few lists may find fewer than k)."""
    return np.array([[h.id for h in r] + [-1] * (k - len(r)) for r in results])


def exact(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_choose_factory_rules():
    assert tuning.choose_factory(10_000, 320, 4 << 30) == "Flat"
    assert tuning.choose_factory(1_000_000, 320, 4 << 30) == "IVF4096,Flat"
    assert tuning.choose_factory(1_000_000, 320, 600 << 20) == "IVF4096,SQ8"
    assert tuning.choose_factory(10_000_000, 320, 1 << 30) == "OPQ64,IVF16384,PQ64"
    with pytest.raises(CbirError, match=r"--memory-budget 1 MiB: too small .* PQ8, needs about \d+ MiB"):
        tuning.choose_factory(1_000_000, 320, 1 << 20)
    assert tuning.parse_bytes("4GB") == 4 << 30 and tuning.parse_bytes("512MiB") == 512 << 20
    with pytest.raises(CbirError, match="--memory-budget 'lots'"):
        tuning.parse_bytes("lots")


def test_from_vectors_auto_is_tuned_and_search_uses_it(lite0_onnx, vectors_30k, tmp_path, capsys):
    from cbir.index.gallery import Gallery

    d, x = vectors_30k
    idx = tmp_path / "idx"
    rc = main(
        [
            "index",
            "build",
            "--from-vectors",
            str(d),
            "--paths",
            str(d / "paths.txt"),
            "--model",
            str(lite0_onnx),
            "--index",
            str(idx),
            "--factory",
            "auto",
            "--target-recall",
            "0.9",
            "--shard-size",
            "4096",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 30_000 and report["failed"] == []
    cfg = json.loads((idx / "index.json").read_text())
    assert cfg["index_factory"] == "IVF512,Flat" and cfg["search"]["nprobe"] >= 1
    assert cfg["tuning"]["recall_at_10"] >= 0.9 and cfg["index_bytes"] > 30_000 * 320 * 4

    # fresh queries from the same distribution, never seen by the tuning: the tuned nprobe holds up
    q = clustered(30_000, 320, draw_seed=7)[:200]
    truth = exact(x, q, 10) + 1  # item ids are row + 1 (SQLite ids start at 1, rows were added in order)
    g = Gallery(idx)
    tuned = tuning.recall_at_k(truth, ids_of(g.search_vectors(q, k=10)))
    one = tuning.recall_at_k(truth, ids_of(g.search_vectors(q, k=10, nprobe=1)))
    assert tuned >= 0.85 and (cfg["search"]["nprobe"] == 1 or one < tuned), (tuned, one)
    hits = g.search_vectors(x[:1], k=1)[0]
    assert hits[0].path == "s3://bucket/img000000.jpg" and hits[0].score > 0.999
    with pytest.raises(CbirError, match="--ef-search 16: does not apply to a IndexIVFFlat index"):
        g.search_vectors(q[:1], k=5, ef_search=16)

    assert main(["index", "info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_factory"] == "IVF512,Flat" and info["tuning"]["ms_per_query"] > 0 and info["index_bytes"] > 0

    # re-tune to a stricter target: nprobe can only go up
    assert main(["index", "tune", str(idx), "--target-recall", "0.99", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["recall_at_10"] >= 0.99 and Gallery(idx).config["search"]["nprobe"] >= cfg["search"]["nprobe"]


def run_refused(args, capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_bad_vector_inputs_are_refused_and_write_nothing(lite0_onnx, vectors_30k, tmp_path, capsys):
    d, x = vectors_30k
    idx = tmp_path / "idx"
    base = ["index", "build", "--model", str(lite0_onnx), "--index", str(idx)]
    short = tmp_path / "short.txt"
    short.write_text("a.jpg\nb.jpg\n")
    assert "2 paths for 30000 vectors" in run_refused(base + ["--from-vectors", str(d), "--paths", str(short)], capsys)
    np.save(tmp_path / "small.npy", x[:2, :16])
    assert "16-d vectors, the model gives 320-d" in run_refused(
        base + ["--from-vectors", str(tmp_path / "small.npy"), "--paths", str(short)], capsys
    )
    assert "too small for any index" in run_refused(
        base
        + ["--from-vectors", str(d), "--paths", str(d / "paths.txt"), "--factory", "auto", "--memory-budget", "1MB"],
        capsys,
    )
    assert "give IMAGES_DIR or --from-vectors" in run_refused(base, capsys)
    assert not idx.exists()


def test_unreachable_recall_target_is_refused():
    """PQ codes this short cannot reach 0.999 recall@10 at any nprobe: tune says so in one line."""
    from cbir.index.ann import faiss_index

    x = clustered(3000, 32)
    index, _ = faiss_index.build(x, np.arange(3000), "IVF16,PQ4x4")
    q = clustered(3000, 32, draw_seed=3)[:100]
    truth = exact(x, q, 10)
    with pytest.raises(
        CbirError,
        match=r"--target-recall 0.999: not reachable with this index and these queries "
        r"\(best recall@10 0\.\d+ at nprobe \d+\); .*nothing was changed",
    ):
        tuning.tune(index, q, truth, 0.999)
    ok = tuning.tune(index, q, truth, 0.1)
    assert ok["recall"] >= 0.1 and [t["nprobe"] for t in ok["tried"]] == [1, 2, 4, 8, 16][: len(ok["tried"])]
    assert ok["params"]["nprobe"] == ok["tried"][-1]["nprobe"]


def test_tune_cli_refuses_a_speed_limit_it_cannot_meet(lite0_onnx, vectors_30k, tmp_path, capsys):
    d, _ = vectors_30k
    idx = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(d),
                "--paths",
                str(d / "paths.txt"),
                "--model",
                str(lite0_onnx),
                "--index",
                str(idx),
                "--factory",
                "IVF256,Flat",
                "--shard-size",
                "8192",
            ]
        )
        == 0
    )
    before = (idx / "index.json").read_text()
    err = run_refused(["index", "tune", str(idx), "--target-recall", "0.9", "--max-ms-per-query", "0.000001"], capsys)
    assert "over --max-ms-per-query 1e-06" in err and (idx / "index.json").read_text() == before
    assert main(["index", "tune", str(idx), "--target-recall", "0.9"]) == 0
    assert json.loads((idx / "index.json").read_text())["search"]["nprobe"] >= 1


def test_vectors_only_index_answers_vectors_and_refuses_images(vectors_30k, photos, tmp_path, capsys):
    from cbir.index.gallery import Gallery

    d, x = vectors_30k
    idx = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(d / "part-0.npy"),
                "--paths",
                str(tmp_path / "p.txt"),
                "--index",
                str(idx),
            ]
        )
        == 2
    )  # no paths file yet: refused
    (tmp_path / "p.txt").write_text("".join(f"/v/{i}\n" for i in range(20_000)))
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(d / "part-0.npy"),
                "--paths",
                str(tmp_path / "p.txt"),
                "--index",
                str(idx),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    g = Gallery(idx)
    assert g.config["model"]["arch"] == "vectors-only" and g.config["index_factory"] == "Flat"
    assert g.search_vectors(x[123:124], k=1)[0][0].path == "/v/123"
    t = g.tune(0.95)  # exact search: nothing to tune, recall and speed are still measured
    assert (
        t["recall_at_10"] == 1.0 and t["held_out_queries"] > 400 and t["ms_per_query"] > 0 and g.config["search"] == {}
    )
    with pytest.raises(CbirError, match="built from vectors without a model; it answers vector queries only"):
        g.search([str(photos[0])])


def test_image_build_with_too_small_a_budget_leaves_nothing(lite0_onnx, gallery_dir, tmp_path, capsys):
    idx = tmp_path / "idx"
    err = run_refused(
        [
            "index",
            "build",
            str(gallery_dir),
            "--model",
            str(lite0_onnx),
            "--index",
            str(idx),
            "--factory",
            "auto",
            "--memory-budget",
            "1KB",
        ],
        capsys,
    )
    assert "--memory-budget 0 MiB: too small for any index of 10 × 320-d vectors" in err and not idx.exists()


def test_on_disk_lists_equal_the_in_ram_index(vectors_30k, tmp_path, capsys):
    """The same IVF built in RAM and through merged on-disk lists answers the same; remove still works."""
    from cbir.index.gallery import Gallery

    d, x = vectors_30k
    common = [
        "index",
        "build",
        "--from-vectors",
        str(d),
        "--paths",
        str(d / "paths.txt"),
        "--factory",
        "IVF128,Flat",
        "--shard-size",
        "7000",
    ]
    assert main(common + ["--index", str(tmp_path / "ram")]) == 0
    assert main(common + ["--index", str(tmp_path / "disk"), "--on-disk"]) == 0
    capsys.readouterr()
    lists = list((tmp_path / "disk").glob("ivflists-*.bin"))
    assert len(lists) == 1 and lists[0].stat().st_size > 30_000 * 320 * 4
    assert (tmp_path / "disk" / "index.faiss").stat().st_size < 1_000_000  # the lists are not in it
    ram, disk = Gallery(tmp_path / "ram"), Gallery(tmp_path / "disk")
    q = clustered(30_000, 320, draw_seed=11)[:50]
    a, b = ram.search_vectors(q, k=10, nprobe=8), disk.search_vectors(q, k=10, nprobe=8)
    assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
    assert disk.consistency()["missing_from_faiss"] == [] and disk.consistency()["not_indexed_in_faiss"] == []
    gone = a[0][0]
    before = len(list((tmp_path / "disk").glob("ivflists-*.bin")))
    assert disk.remove([gone.path])["removed"] == 1  # URIs are ids too (not made absolute)
    assert gone.id not in {h.id for h in disk.search_vectors(q[:1], k=10, nprobe=8)[0]}
    after = list((tmp_path / "disk").glob("ivflists-*.bin"))
    assert before == len(after) == 1 and after != lists  # rebuilt into a new file, the old one deleted
    assert disk.consistency()["not_indexed_in_faiss"] == []
