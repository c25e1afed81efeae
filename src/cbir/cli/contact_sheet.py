"""A self-contained HTML contact sheet of search results (``cbir search --html``).

One row per query: the query image, then its results with rank, score, path and id. Thumbnails are
inlined as ``data:`` URIs (no file or network access when it is opened), each at most ``size``
pixels (default 160, JPEG quality 70). The images inlined stop at ``max_bytes`` (default 32 MB):
later ones are shown as text only, and the sheet says so. Every path and message is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from typing import Callable, Sequence

from cbir.engine.preprocess import ImageError
from cbir.hits import mark
from cbir.serve.thumbs import make

SIZE = 160
QUALITY = 70
MAX_BYTES = 32 * 1024 * 1024

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1rem;color:#222}
h1{font-size:1.2rem} .row{display:flex;flex-wrap:wrap;gap:.5rem;margin:0 0 1.5rem;padding-bottom:1rem;border-bottom:1px solid #ddd}
figure{margin:0;width:170px} figure.query{background:#eef} img{max-width:160px;max-height:160px;display:block}
figcaption{font-size:12px;overflow-wrap:anywhere} .err{color:#a00} .noimg{width:160px;height:60px;background:#eee}
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render(
    results: Sequence[dict], thumbnail: Callable[[dict], bytes], title: str = "cbir search", max_bytes: int = MAX_BYTES
) -> str:
    """HTML for ``results`` (``Gallery.search``'s list: ``query``, ``results`` of ``id``/``path``/
    ``score``, optional ``error``). ``thumbnail(hit)`` returns JPEG bytes of a result; queries are
    read from their own paths."""
    budget = [max_bytes]
    skipped = [0]

    def img(get: Callable[[], bytes], alt: str) -> str:
        if budget[0] <= 0:
            skipped[0] += 1
            return '<div class="noimg"></div>'
        try:
            jpeg = get()
        except (ImageError, OSError) as e:
            return f'<div class="noimg err">{html.escape(str(e))}</div>'
        budget[0] -= len(jpeg)
        return f'<img src="{_data_uri(jpeg)}" alt="{html.escape(alt)}">'

    rows = []
    for r in results:
        q = str(r["query"])
        cells = [
            f'<figure class="query">{img(lambda: make(q, q, SIZE, QUALITY), q)}'
            f"<figcaption><b>query</b> {html.escape(q)}</figcaption></figure>"
        ]
        if r.get("error"):
            cells.append(f'<p class="err">{html.escape(str(r["error"]))}</p>')
        for rank, h in enumerate(r.get("results", []), 1):
            how = " ✓ " + html.escape(mark(h)) if h.get("verified") else ""
            caption = f"{rank}. {h['score']:.4f}{how}<br>{html.escape(str(h['path']))}<br>id {int(h['id'])}"
            cells.append(
                f"<figure>{img(lambda h=h: thumbnail(h), str(h['path']))}<figcaption>{caption}</figcaption></figure>"
            )
        rows.append(f'<section class="row">{"".join(cells)}</section>')
    note = (
        f'<p class="err">{skipped[0]} thumbnails left out: the sheet reached its {max_bytes} byte limit.</p>'
        if skipped[0]
        else ""
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{note}{''.join(rows)}</body></html>\n"
    )
