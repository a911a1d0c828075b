"""The dashboard in a real headless Chromium (Debian's, through Playwright) against a real service on a socket:
real Redis, the S3 server, a worker process. Asserts what a user sees and saves a screenshot in test-artifacts/."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALPHA, BETA
from tests.support.services import uvicorn_in_thread
from tests.support.volumes import mask_bytes
from tumorsynth.settings import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"  # `make test` installs Debian's chromium; Playwright's own download is not used
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def live_url(app):
    """The test app served by uvicorn on a loopback port (a browser needs a real socket)."""
    with uvicorn_in_thread(app, log_level="warning", lifespan="off") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium") or CHROMIUM
    assert Path(path).exists(), "no chromium: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=ARGS)
        yield b
        b.close()


def _submit(base: str, headers: dict, seed: int) -> str:
    request = {"model": "ldm/tiny@1", "seed": seed, "sampler": {"name": "ddim", "steps": 20}}
    files = {
        "request": (None, json.dumps(request), "application/json"),
        "mask": ("mask.nii.gz", mask_bytes((40, 44, 30)), "application/octet-stream"),
    }
    r = httpx.post(f"{base}/v1/jobs", files=files, headers=headers, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_dashboard_shows_queues_jobs_and_preview(live_url, browser, worker):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_url}/")
    expect(page.locator("#status")).to_have_text("enter your API key")
    expect(page.locator("#jobs tbody tr")).to_have_count(0)

    page.fill("#api-key", "not-a-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#status")).to_have_text("that key was not accepted")
    page.fill("#api-key", "key-alpha")
    page.click("#key-form button[type=submit]")
    gpu = page.locator('#queues tr[data-queue="gpu"]')
    expect(gpu.locator("td.workers-online")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=20_000)
    expect(page.locator("#workers tbody tr").first).to_be_visible()

    other_tenant = _submit(live_url, BETA, seed=11)
    job_id = _submit(live_url, ALPHA, seed=12)
    row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=20_000)
    expect(row.locator("td.status")).to_have_text("succeeded", timeout=180_000)
    expect(row.locator("td.progress span")).to_have_text(re.compile(r"^ ([1-9]\d*)/\1$"))  # all steps done
    assert page.locator(f'[data-job-id="{other_tenant}"]').count() == 0, "another tenant's job is shown"
    assert other_tenant not in page.content()

    row.click()
    img = page.locator("#preview-img")
    expect(img).to_be_visible(timeout=60_000)
    expect(img).to_have_attribute("data-job-id", job_id)
    size = page.wait_for_function(
        """() => { const i = document.querySelector('#preview-img');
        return i.complete && i.naturalWidth > 300 ? [i.naturalWidth, i.naturalHeight] : null; }""",
        timeout=30_000,
    )
    width, height = size.json_value()
    assert width > 300 and height > 400  # 3 views × 4 contrasts, as /preview.png renders them

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not errors, errors


def test_dashboard_page_is_plain_html_with_a_strict_policy(live_url):
    r = httpx.get(f"{live_url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'data-queue="gpu"' in r.text and 'id="api-key"' in r.text
    assert httpx.get(f"{live_url}/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{live_url}/dashboard/index.html").status_code == 404  # only the page's own assets
