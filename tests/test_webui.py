"""The search page of `cbir serve` in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium), against a real server on loopback; thumbnails, search by id, escaping, and the
HTML contact sheet of `cbir search --html`."""

from __future__ import annotations

import base64
import html.parser
import io
import shutil
import time

import httpx
import pytest
from PIL import Image

from cbir.index.gallery import Gallery
from conftest import make_gallery
from test_serve import Server

pytest.importorskip("uvicorn")
# A path the page and the sheet must show as text: a folder named "<script>alert(1)<" holding "script>.jpg".
EVIL_DIR = "<script>alert(1)<"
EVIL_FILE = "script>.jpg"


@pytest.fixture(scope="module")
def web_index(tmp_path_factory, embedder, photos):
    root = tmp_path_factory.mktemp("web")
    files = make_gallery(root / "g", photos, 10)
    (root / "g" / EVIL_DIR).mkdir()
    shutil.copy(files[1], root / "g" / EVIL_DIR / EVIL_FILE)
    Gallery.create(root / "idx", embedder).build([root / "g"])
    return root


@pytest.fixture(scope="module")
def web_server(web_index):
    from cbir.serve.app import create_app

    with Server(create_app(str(web_index / "idx"), max_delay_ms=1)) as url:
        yield url


def plain_query(web_index):
    return web_index / "g" / "b" / "img02.jpg"  # a photo with no duplicate in the gallery


def evil_path(web_index) -> str:
    return str((web_index / "g" / EVIL_DIR / EVIL_FILE).resolve())


def test_thumbs_by_id_cached_with_etag(web_server, web_index):
    g = Gallery(web_index / "idx")
    hit = g.search([str(plain_query(web_index))], k=1)[0]["results"][0]
    with httpx.Client(base_url=web_server, timeout=60) as c:
        r = c.get(f"/thumbs/{hit['id']}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = Image.open(io.BytesIO(r.content))
        assert img.format == "JPEG" and max(img.size) <= 256
        cached = list((web_index / "idx" / "thumbs").glob(f"{hit['id']}-*.jpg"))
        assert len(cached) == 1 and cached[0].read_bytes() == r.content
        again = c.get(f"/thumbs/{hit['id']}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content
        assert c.get("/thumbs/999999").status_code == 404
        assert c.get("/thumbs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
        assert c.get("/ui/..%2F..%2F__init__.py").status_code == 404
        by_id = c.get("/search", params={"id": hit["id"], "k": 4}).json()
        want = g.search_items([hit["id"]], k=4)[0]
        assert [h["id"] for h in by_id["results"]] == [h.id for h in want]
        assert by_id["results"][0]["id"] == hit["id"]
        assert c.get("/search", params={"id": 999999}).status_code == 404
        assert c.get("/search", params={"id": "x"}).status_code == 400
        assert c.get("/search").status_code == 400
        page = c.get("/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_removed_item_has_no_thumbnail(tmp_path, embedder, photos):
    from cbir.serve.app import create_app

    files = make_gallery(tmp_path / "g", photos, 4)
    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([tmp_path / "g"])
    gone = g.store.items_by_paths()[str(files[0].resolve())][0]
    with Server(create_app(str(tmp_path / "idx"), max_delay_ms=1)) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get(f"/thumbs/{gone}").status_code == 200
        g.remove([files[0]])
        assert c.get(f"/thumbs/{gone}").status_code == 404  # and its cached file is deleted then
        assert not list((tmp_path / "idx" / "thumbs").glob(f"{gone}-*"))
        assert c.get("/search", params={"id": gone}).status_code == 404


class Texts(html.parser.HTMLParser):
    """Text nodes and tags of an HTML document, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_search_html_contact_sheet(web_index, lite0_onnx, tmp_path, capsys):
    from cbir.cli import main

    q = plain_query(web_index)
    out = tmp_path / "sheet.html"
    assert (
        main(
            [
                "search",
                str(q),
                str(web_index / "g" / EVIL_DIR / EVIL_FILE),
                "--index",
                str(web_index / "idx"),
                "-k",
                "11",
                "--html",
                str(out),
            ]
        )
        == 0
    )
    doc = out.read_text()
    p = Texts()
    p.feed(doc)
    assert not [t for t, _ in p.tags if t == "script"]  # the evil path did not become a tag
    assert any(evil_path(web_index) in t for t in p.text)
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) == 2 + 2 * 11  # two queries, each with all 11 items
    for src in imgs:
        assert src.startswith("data:image/jpeg;base64,")
        assert max(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size) <= 160
    assert len(doc) < 24 * 40_000


def test_contact_sheet_stops_inlining_at_its_budget(web_index):
    from cbir.cli import contact_sheet

    g = Gallery(web_index / "idx")
    results = g.search([str(plain_query(web_index))], k=5)
    from cbir.serve.thumbs import Thumbnails

    doc = contact_sheet.render(results, lambda h: Thumbnails(g.root, g.store).get(h["id"])[0], max_bytes=1)
    assert doc.count("<img") == 1 and "thumbnails left out" in doc


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no headless browser: apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    b = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    yield b
    b.quit()


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def grid(b) -> list[dict]:
    """The result grid as the page shows it: id, rank text, path text, thumbnail loaded."""
    return b.execute_script("""
        return [...document.querySelectorAll('#results .hit')].map(e => ({
            id: Number(e.dataset.id), rank: e.querySelector('.rank').textContent,
            path: e.querySelector('.path').textContent,
            loaded: e.querySelector('img').complete && e.querySelector('img').naturalWidth > 0}));""")


def test_search_page_in_a_real_browser(browser, web_server, web_index, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    b, n = browser, 11  # k = the whole gallery, so that the evil path is always on the page
    b.get(web_server + "/")
    k = b.find_element(By.ID, "k")
    k.clear()
    k.send_keys(str(n))
    q = plain_query(web_index)
    b.find_element(By.ID, "file").send_keys(str(q))
    shown = wait_for(lambda: (g := grid(b)) and len(g) == n and all(h["loaded"] for h in g) and g)
    with httpx.Client(base_url=web_server, timeout=60) as c:
        want = c.post("/search", params={"k": n}, files={"image": (q.name, q.read_bytes(), "image/jpeg")}).json()
    assert [h["id"] for h in shown] == [h["id"] for h in want["results"]]
    assert [h["path"] for h in shown] == [h["path"] for h in want["results"]]
    assert evil_path(web_index) in [h["path"] for h in shown]  # shown as text, exactly
    assert "results in" in b.find_element(By.ID, "status").text
    b.save_screenshot(str(tmp_path / "upload.png"))
    assert (tmp_path / "upload.png").stat().st_size > 1000

    # click the last result: a search by its id (GET /search?id=…), no upload
    target = shown[-1]["id"]
    b.find_elements(By.CSS_SELECTOR, "#results .hit")[-1].click()

    def answered(item_id: int):
        done = (
            f"item {item_id}" in b.find_element(By.ID, "query-label").text
            and "results in" in b.find_element(By.ID, "status").text
        )
        return done and (g := grid(b)) and all(h["loaded"] for h in g) and g

    after = wait_for(lambda: answered(target))
    with httpx.Client(base_url=web_server, timeout=60) as c:
        want = c.get("/search", params={"id": target, "k": n}).json()
    assert [h["id"] for h in after] == [h["id"] for h in want["results"]]
    assert f"item {target}" in b.find_element(By.ID, "query-label").text

    # keyboard: Enter on a focused result searches with it; the evil path stays text, nothing runs
    evil = next(h["id"] for h in after if h["path"] == evil_path(web_index))
    b.find_element(By.CSS_SELECTOR, f'#results .hit[data-id="{evil}"]').send_keys(Keys.ENTER)
    assert evil in [h["id"] for h in wait_for(lambda: answered(evil))[:2]]  # it ties with the photo it copies
    assert evil_path(web_index) in b.find_element(By.ID, "query-label").text
    assert b.execute_script("return document.querySelectorAll('script').length") == 1  # only app.js
    with pytest.raises(NoAlertPresentException):
        b.switch_to.alert.text
    # a phone-width window still shows the grid, in two columns
    b.set_window_size(380, 800)
    cols = b.execute_script("return getComputedStyle(document.getElementById('results')).gridTemplateColumns")
    assert len(cols.split()) == 2
    b.save_screenshot(str(tmp_path / "phone.png"))


def test_thumbnails_limits_eviction_and_changed_files(tmp_path, embedder, photos):
    from cbir.engine.preprocess import ImageError
    from cbir.serve.thumbs import Thumbnails

    files = make_gallery(tmp_path / "g", photos, 4)
    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([tmp_path / "g"])
    ids = {p: v[0] for p, v in g.store.items_by_paths().items()}
    first = ids[str(files[1].resolve())]
    with pytest.raises(ImageError, match="decompression bomb"):  # the same pixel limit as queries
        Thumbnails(tmp_path / "idx", g.store, max_pixels=1000).get(first)
    small = Thumbnails(tmp_path / "idx", g.store, max_cache_bytes=1)  # every write checks; one file survives
    for i in ids.values():
        assert small.get(i) is not None
    assert len(list((tmp_path / "idx" / "thumbs").glob("*.jpg"))) <= 1
    data, tag = Thumbnails(g.root, g.store).get(first)
    Image.open(files[2]).save(files[1])  # the file changes: re-added under the same id, new thumbnail
    g.add([files[1]])
    fresh = Gallery(tmp_path / "idx")
    data2, tag2 = Thumbnails(fresh.root, fresh.store).get(first)
    assert tag2 != tag and data2 != data
    assert [p.name for p in (tmp_path / "idx" / "thumbs").glob(f"{first}-*")] == [f"{tag2}.jpg"]
    g.remove([files[1]])  # removed: no thumbnail, and its cached file goes on the next request
    assert Thumbnails(fresh.root, fresh.store).get(first) is None
    assert not list((tmp_path / "idx" / "thumbs").glob(f"{first}-*"))
