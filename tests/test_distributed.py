"""Ray Data bulk indexing on a real local Ray cluster (2 CPUs) equals the single-process build."""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from cbir.index.gallery import Gallery
from conftest import make_gallery

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def contents(g: Gallery) -> dict[str, np.ndarray]:
    ids, vecs = g.load_vectors()
    paths = g.store.paths_for_ids(ids)
    return {paths[int(i)]: v for i, v in zip(ids, vecs)}


def test_ray_build_equals_local_and_resumes(ray_cluster, embedder, photos, tmp_path):
    src = tmp_path / "g"
    make_gallery(src, photos, 16)
    (src / "broken.jpg").write_bytes(b"broken")
    local = Gallery.create(tmp_path / "local", embedder, shard_size=4)
    rep_local = local.build([src])
    dist = Gallery.create(tmp_path / "ray", embedder, shard_size=4)
    rep = dist.build([src], batch_size=4, distributed={"num_workers": 2})
    assert rep["indexed"] == rep_local["indexed"] == 16 and rep["timings"]["distributed"] == "ray"
    assert [f["path"] for f in rep["failed"]] == [f["path"] for f in rep_local["failed"]]
    a, b = contents(local), contents(dist)
    assert sorted(a) == sorted(b)
    for p in a:
        np.testing.assert_allclose(a[p], b[p], atol=1e-6)
    assert local.store.paths_for_ids(range(1, 18)) == dist.store.paths_for_ids(range(1, 18))  # same ids ↔ paths
    assert dist.index.ntotal == 16

    # The coordinator "died": two shards finished by workers but not committed; in one of them the
    # worker died mid-shard (only a temporary file is left).
    con = sqlite3.connect(tmp_path / "ray" / "meta.sqlite")
    with con:
        con.execute("UPDATE shards SET state = 'pending' WHERE id IN (2, 3)")
        con.execute("UPDATE items SET state = 'pending' WHERE shard IN (2, 3)")
    con.close()
    shards = tmp_path / "ray" / "shards"
    os.replace(shards / "shard-000003.npz", shards / "shard-000003.npz.tmp")
    adopted_mtime = os.stat(shards / "shard-000002.npz").st_mtime_ns
    dist2 = Gallery(tmp_path / "ray", embedder)
    rep2 = dist2.build([src], distributed={"num_workers": 2})
    assert rep2["indexed"] == 4  # only the interrupted shard was embedded again
    assert os.stat(shards / "shard-000002.npz").st_mtime_ns == adopted_mtime  # adopted, not redone
    c = contents(dist2)
    assert sorted(c) == sorted(a) and dist2.info()["count"] == 16 and dist2.index.ntotal == 16
    for p in a:
        np.testing.assert_allclose(a[p], c[p], atol=1e-6)
