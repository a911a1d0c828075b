"""``GET /``: the dashboard. The page itself holds no tenant data; its script reads the JSON API with the tenant's
key (typed into the page, sent as a Bearer header), so it shows only what that tenant may see."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources
from string import Template

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from ... import __version__
from ...errors import NotFound
from ...models.families import FAMILIES
from ..deps import SettingsDep

router = APIRouter(include_in_schema=False)
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# Scripts and styles from this origin only; previews arrive as blob: URLs made by the page's own script.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _file(name: str) -> str:
    return resources.files("tumorsynth.api").joinpath("dashboard", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    if settings.auth_enabled:
        auth, note = "key", "Type your tenant's API key: it stays in this browser tab and is sent as a Bearer header."
    else:
        auth = "none"
        note = "No API keys are configured: this service answers loopback clients only, as tenant 'local'."
    queues = settings.queues(FAMILIES)
    rows = "".join(
        f'<tr data-queue="{html.escape(q)}"><td>{html.escape(q)}</td>' + "<td>…</td>" * 5 + "</tr>" for q in queues
    )
    page = Template(_file("index.html")).safe_substitute(
        auth=auth, auth_note=html.escape(note), version=html.escape(__version__), queue_rows=rows
    )
    return HTMLResponse(page, headers=HEADERS)


@router.get("/dashboard/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no dashboard file '{name}'")
    return Response(_file(name), media_type=STATIC[name], headers=HEADERS)
