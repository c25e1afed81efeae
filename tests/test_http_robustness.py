"""The HTTP API never answers 5xx to a bad request: Schemathesis generates requests from the app's own
OpenAPI schema against a real uvicorn server on loopback (index with local features, so uploads are
verified too), and the requests that used to give 500s or unbounded work are sent by hand."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image

from cbir.index.gallery import Gallery
from conftest import make_gallery
from test_serve import Server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,  # noqa: E402
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, embedder, photos):
    from cbir.serve.app import create_app

    root = tmp_path_factory.mktemp("fuzz")
    make_gallery(root / "g", photos, 10)
    Gallery.create(root / "idx", embedder).build([root / "g"])
    with Server(create_app(str(root / "idx"), max_heavy=1)) as url:
        yield url, root


def no_server_error_but_a_missed_deadline(ctx, response, case):
    """``not_a_server_error``, except a 504 (with Retry-After) for a request that asked for a deadline
    (``deadline_ms``) shorter than its search takes: the answer the service promises for it."""
    if response.status_code == 504 and "deadline_ms" in (case.query or {}):
        assert response.headers.get("retry-after") == ["1"] or response.headers.get("retry-after") == "1", (
            response.headers
        )
        assert "no answer within" in json.loads(response.content)["error"]
        return None
    return not_a_server_error(ctx, response, case)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_server_error_and_no_schema_break(fuzz_server, mode):
    """Every operation of /openapi.json, valid requests (positive) and requests that break the schema
    (negative): no 5xx (but a 504 for a deadline shorter than the search), every status code and
    body as the schema declares."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server[0]}/openapi.json")
    checks = [
        no_server_error_but_a_missed_deadline,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /search",
        "GET /search",
        "POST /embed",
        "GET /items/{item_id}",
        "GET /thumbs/{item_id}",
        "GET /healthz",
    }
    for op in operations:

        @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(checks=checks)

        try:
            run()
        except Unsatisfiable:  # an operation with nothing to break (no parameters, no body): negative mode has no case
            raw = op.definition.raw
            assert mode == "negative" and not raw.get("parameters") and "requestBody" not in raw, op.path


def jpeg(photo, size=200, quality=90) -> bytes:
    img = Image.open(photo).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_requests_that_used_to_give_500s(fuzz_server, photos):
    url, _ = fuzz_server
    with httpx.Client(base_url=url, timeout=60) as c:

        def check(r, want):
            assert r.status_code == want, (r.status_code, r.text)
            err = r.json()["error"]
            assert err and "\n" not in err
            return err

        check(c.get("/search", params={"id": "²"}), 400)  # str.isdigit() said yes, int() said no
        check(c.get("/search", params={"id": "9" * 20}), 400)  # past SQLite's integer range
        check(c.get("/search", params={"id": "99999999999999999"}), 404)
        check(c.get("/thumbs/" + "9" * 20), 404)
        check(c.get("/items/" + "9" * 20), 404)
        check(c.get("/items/-1"), 404)
        data = jpeg(photos[0])
        check(c.post("/search", content=data[: len(data) // 2]), 400)  # truncated upload, verification on
        nested = "[" * 100_000 + "]" * 100_000
        check(c.post("/search", content=nested, headers={"content-type": "application/json"}), 400)
        check(
            c.post(
                "/search",
                content=json.dumps({"embedding": [1e400] * 320}),
                headers={"content-type": "application/json"},
            ),
            400,
        )
        check(
            c.post(
                "/search",
                content='{"embedding": [' + ",".join(["1" + "0" * 400] * 320) + "]}",
                headers={"content-type": "application/json"},
            ),
            400,
        )
        assert c.get("/healthz").json()["status"] == "ok"


@pytest.fixture(scope="module")
def big_server(tmp_path_factory, lite0_onnx):
    """20,000 stored vectors (Lite0's dimension) behind a real server: a large shortlist is real work."""
    from cbir.cli import main
    from cbir.serve.app import create_app

    d = tmp_path_factory.mktemp("big")
    x = np.random.default_rng(0).normal(size=(20_000, 320)).astype(np.float32)
    np.save(d / "v.npy", x)
    (d / "p.txt").write_text("".join(f"/data/img{i:06d}.jpg\n" for i in range(len(x))))
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(d / "v.npy"),
                "--paths",
                str(d / "p.txt"),
                "--model",
                str(lite0_onnx),
                "--index",
                str(d / "idx"),
            ]
        )
        == 0
    )
    with Server(create_app(str(d / "idx"), max_heavy=1)) as url:
        yield url, x


def test_one_request_cannot_take_the_machine(big_server):
    """The products of the re-ranking settings are bounded (GET tighter than POST), and heavy searches
    beyond ``max_heavy`` at once get 503 instead of a queue."""
    url, x = big_server
    vec = x[7].tolist()
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.get("/search", params={"id": 1, "shortlist": 10000, "shortlist_dba": 1000})
        assert r.status_code == 422 and "MiB" in r.json()["error"] and "shortlist=10000" in r.json()["error"]
        assert c.get("/search", params={"id": 1, "shortlist": 10000, "diffusion": 1000}).status_code == 422
        assert (
            c.post("/search", params={"shortlist": 10000, "shortlist_dba": 1000}, json={"embedding": vec}).status_code
            == 422
        )
        # within the POST budget but over the GET one: refused on GET, answered on POST
        params = {"shortlist": 3000, "shortlist_dba": 50}
        assert c.get("/search", params={"id": 1, **params}).status_code == 422
        r = c.post("/search", params=params, json={"embedding": vec})
        assert r.status_code == 200 and r.json()["results"][0]["path"] == "/data/img000007.jpg"
        assert (
            c.get("/search", params={"id": 8}).json()["results"][0]["path"] == "/data/img000007.jpg"
        )  # ids start at 1
        # heavy searches: one slot here (max_heavy=1); concurrent ones beyond it are turned away at once
        results: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(6)

        def one():
            with httpx.Client(base_url=url, timeout=120) as cc:
                start.wait()
                code = cc.post(
                    "/search", params={"shortlist": 3500, "shortlist_dba": 100}, json={"embedding": vec}
                ).status_code
            with lock:
                results.append(code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(results) == {200, 503}, results
        assert c.post("/search", json={"embedding": vec}).status_code == 200  # light searches never wait for a slot
