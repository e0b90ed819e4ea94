"""/docs and /redoc work without internet: every script, style and icon comes from the server itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .conftest import Embedded

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(embedded: Embedded, page: str) -> None:
    response = httpx.get(embedded.base_url + page, timeout=30)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    urls = ASSET.findall(response.text)
    assert urls and not [u for u in urls if not u.startswith("/")], urls  # nothing from a CDN
    assert "https://" not in response.text and "http://" not in response.text
    for url in urls:
        asset = httpx.get(embedded.base_url + url, timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_swagger_ui_renders_the_operations_in_a_browser(embedded: Embedded, tmp_path: Path) -> None:
    """Headless Chromium with background networking off: the page builds its DOM from our spec alone."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            embedded.base_url + "/docs",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "opblock" in done.stdout and "/v1/analyses" in done.stdout, done.stdout[-2000:]
