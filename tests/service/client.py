"""A minimal HTTP client for the tests: real requests against a real server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed")


class Api:
    """Upload, analyse, wait, read reports — asserting the status codes that matter."""

    def __init__(self, base_url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=60)

    def upload(self, kind: str, path: Path) -> dict[str, Any]:
        with open(path, "rb") as handle:
            response = self.http.post(f"/v1/{kind}", files={"file": (path.name, handle)})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def analyze(self, model: Path, batch: Path, **options: Any) -> dict[str, Any]:
        model_id = self.upload("models", model)["id"]
        batch_id = self.upload("batches", batch)["id"]
        response = self.http.post("/v1/analyses", json={"model_id": model_id, "batch_id": batch_id, **options})
        assert response.status_code == 202, response.text
        return response.json()

    def status(self, analysis_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/analyses/{analysis_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, analysis_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the analysis is succeeded or failed; never longer than timeout."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(analysis_id)
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"analysis {analysis_id} still {body['status']} after {timeout} s: {body}")
            time.sleep(0.2)

    def report(self, analysis_id: str, fmt: str = "json") -> httpx.Response:
        return self.http.get(f"/v1/analyses/{analysis_id}/report", params={"format": fmt})

    def close(self) -> None:
        self.http.close()
