"""The HTTP service on loopback with a real client; Triton repository export parsed back."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from cbir.index.gallery import Gallery
from conftest import make_gallery

uvicorn = pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server in a thread, bound to 127.0.0.1."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder, photos):
    root = tmp_path_factory.mktemp("serve")
    make_gallery(root / "g", photos, 12)
    Gallery.create(root / "idx", embedder).build([root / "g"])
    return root


@pytest.fixture(scope="module")
def server(index_dir):
    from cbir.serve.app import create_app

    app = create_app(
        str(index_dir / "idx"), max_upload_bytes=2 * 1024 * 1024, max_delay_ms=10, max_batch=8
    )  # batching is under test: not auto
    with Server(app) as url:
        yield url


def test_search_embed_items_health_metrics(server, index_dir, embedder):
    q = sorted((index_dir / "g").rglob("*.jpg"))[0]
    data = q.read_bytes()
    with httpx.Client(base_url=server, timeout=60) as c:
        assert c.get("/healthz").json()["count"] == 12
        assert "/search" in c.get("/openapi.json").json()["paths"]
        multipart = c.post("/search", params={"k": 5}, files={"image": ("q.jpg", data, "image/jpeg")})
        raw = c.post("/search", params={"k": 5}, content=data, headers={"content-type": "image/jpeg"})
        assert multipart.status_code == raw.status_code == 200
        want = Gallery(index_dir / "idx").search([str(q)], k=5)[0]["results"]  # what `cbir search --json` prints
        for r in (multipart.json(), raw.json()):
            assert [h["id"] for h in r["results"]] == [h["id"] for h in want]
            assert [h["path"] for h in r["results"]] == [h["path"] for h in want]
            np.testing.assert_allclose([h["score"] for h in r["results"]], [h["score"] for h in want], atol=1e-5)
            assert {"queue_ms", "inference_ms", "search_ms"} <= set(r["timings_ms"])
        vec = c.post("/embed", content=data).json()
        assert vec["dim"] == 320
        np.testing.assert_allclose(vec["vector"], embedder.embed(str(q))[0], atol=1e-5)
        by_vec = c.post("/search", json={"embedding": vec["vector"], "k": 3}).json()
        assert [h["id"] for h in by_vec["results"]] == [h["id"] for h in want[:3]]
        qe = c.post("/search", params={"k": 3, "qe": 2}, content=data).json()
        assert qe["results"][0]["path"] == want[0]["path"]
        item = c.get(f"/items/{want[0]['id']}").json()
        assert item["path"] == want[0]["path"] and item["state"] == "indexed" and len(item["sha1"]) == 40
        assert c.get("/items/999999").status_code == 404
        text = c.get("/metrics").text
    for name in (
        "cbir_requests_total",
        "cbir_queue_seconds_bucket",
        "cbir_inference_seconds_count",
        "cbir_search_seconds_sum",
        "cbir_request_seconds_bucket",
        "cbir_queue_depth",
    ):
        assert name in text, name
    assert 'endpoint="/search",status="200"' in text


def test_bad_requests(server, tmp_path):
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")
    with httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/search", content=b"this is not an image")
        assert r.status_code == 400 and "uploaded image" in r.json()["error"]
        assert c.post("/search", content=b"").status_code == 400
        assert c.post("/search", files={"other": ("x", b"y")}).status_code == 400
        r = c.post("/search", content=bomb.getvalue())
        assert r.status_code == 413 and "decompression bomb" in r.json()["error"]
        big = c.post("/search", content=b"\xff" * (3 * 1024 * 1024))
        assert big.status_code == 413 and "limit" in big.json()["error"]
        assert c.post("/search", params={"k": 0}, content=b"x").status_code == 400
        assert c.post("/search", params={"k": "many"}, content=b"x").status_code == 400
        assert c.post("/search", json={"embedding": [1.0, 2.0]}).status_code == 400
        assert c.post("/search", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert c.get("/items/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
        assert c.get("/healthz").status_code == 200  # still alive


def test_concurrent_clients_share_batches(server, index_dir):
    files = sorted((index_dir / "g").rglob("*.jpg"))
    datas = [f.read_bytes() for f in files]

    def one(i: int) -> dict:
        with httpx.Client(base_url=server, timeout=120) as c:
            r = c.post("/search", params={"k": 1}, content=datas[i % len(datas)])
            assert r.status_code == 200, r.text
            return r.json()

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(one, range(32)))
    assert all(o["results"][0]["score"] > 0.999 for o in out)
    assert max(o["timings_ms"]["batch"] for o in out) > 1


def test_overload_503_and_graceful_shutdown(index_dir):
    from cbir.serve.app import create_app

    app = create_app(str(index_dir / "idx"), max_batch=1, max_delay_ms=0, max_queue=1)
    data = sorted((index_dir / "g").rglob("*.jpg"))[0].read_bytes()
    srv = Server(app)
    with srv as url:

        def one(_):
            with httpx.Client(base_url=url, timeout=120) as c:
                return c.post("/embed", content=data)

        with ThreadPoolExecutor(24) as pool:
            rs = list(pool.map(one, range(48)))
        codes = [r.status_code for r in rs]
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
        assert all(r.headers.get("retry-after") for r in rs if r.status_code == 503)

        # graceful shutdown: requests already in flight are answered
        with ThreadPoolExecutor(4) as pool:
            futs = [pool.submit(one, i) for i in range(2)]
            deadline = time.time() + 30  # shut down once both are connected (not before: that is refusal)
            while len(srv.server.server_state.connections) < 2 and time.time() < deadline:
                time.sleep(0.005)
            srv.server.should_exit = True
            done = [f.result(timeout=120) for f in futs]
        assert all(r.status_code in (200, 503) for r in done) and any(r.status_code == 200 for r in done)


def test_triton_repository_entry_parses(lite0_onnx, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from cbir.cli import main

    assert (
        main(
            [
                "export-triton",
                "--model",
                str(lite0_onnx),
                "--repo",
                str(tmp_path / "repo"),
                "--name",
                "lite0",
                "--max-batch",
                "32",
                "--dynamic-batching",
                "--max-queue-delay-us",
                "250",
            ]
        )
        == 0
    )
    cfg = text_format.Parse((tmp_path / "repo" / "lite0" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "lite0" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 32
    assert cfg.input[0].name == "images" and cfg.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(cfg.input[0].dims) == [224, 224, 3]
    assert cfg.output[0].name == "embeddings" and list(cfg.output[0].dims) == [320]
    assert cfg.output[0].data_type == model_config_pb2.TYPE_FP32
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert (
        cfg.parameters["cbir_fingerprint"].string_value and (tmp_path / "repo" / "lite0" / "1" / "model.onnx").is_file()
    )
    assert main(["export-triton", "--model", str(lite0_onnx), "--repo", str(tmp_path / "r"), "--name", "bad/name"]) == 2


def test_bench_http_against_the_real_server(server, index_dir):
    from cbir.bench.http import bench_http, check_loopback
    from cbir.errors import CbirError

    img = sorted((index_dir / "g").rglob("*.jpg"))[0]
    rows = bench_http(server, str(img), [1, 4], requests=8, k=3)
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert all(r["status"] == {"200": 8} and r["requests_per_s"] > 0 for r in rows)
    for (
        r
    ) in rows:  # the server's own parts of a request (batcher queue, inference, search) fit inside what the client saw
        parts = r["server_p50_ms"]
        assert (
            set(parts) == {"queue_ms", "inference_ms", "search_ms"}
            and parts["inference_ms"] > 0
            and parts["search_ms"] > 0
        ), parts
        assert parts["inference_ms"] + parts["search_ms"] < r["p50_ms"], r
    with pytest.raises(CbirError, match="loopback"):
        check_loopback("http://10.0.0.5:8000")


def test_healthz_reports_a_dead_batcher(index_dir):
    from cbir.serve.app import create_app

    app = create_app(str(index_dir / "idx"))
    with Server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200
        app.state.batcher.close()  # the worker is gone: the service can no longer embed
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "error" and "batcher worker" in r.json()["error"]
        q = sorted((index_dir / "g").rglob("*.jpg"))[0]
        assert c.post("/search", content=q.read_bytes()).status_code == 503
