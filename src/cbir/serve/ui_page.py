"""``GET /`` (the search page: plain HTML, CSS and JavaScript from ``cbir/serve/ui``, nothing from
elsewhere, under a strict Content-Security-Policy; every path is inserted as text) and its files."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from cbir.serve.service import HTTPError

# The page's files, by name: a fixed table, so that no name from a request becomes a path.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def router() -> APIRouter:
    r = APIRouter()
    ui = {name: (resources.files("cbir.serve") / "ui" / name).read_bytes() for name in UI_FILES}

    @r.get("/", include_in_schema=False)
    async def page():
        return Response(ui["index.html"], media_type=UI_FILES["index.html"], headers=UI_HEADERS)

    @r.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str):
        if name not in UI_FILES:
            raise HTTPError(404, "not found")
        return Response(ui[name], media_type=UI_FILES[name], headers=UI_HEADERS)

    return r
