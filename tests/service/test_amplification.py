"""Small requests cannot make the API server allocate gigabytes (issue 10, findings 3-5).

Each test resets the `gradhealth serve` process's peak RSS (Linux clear_refs), sends one hostile
request to the real server, and asserts a 4xx in the error shape and a peak (VmHWM) under
RSS_BOUND over the RSS just before the request.
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgpack
import pytest
import torch

from ..bombs import MiB, proc_status_kib, reset_peak, zero_bomb
from .conftest import Embedded

RSS_BOUND = 300 * MiB  # over the server's RSS before the request (before the fixes: 0.85 to 6.6 GB)
LAYERS = [{"name": "fc1", "type": "Linear"}, {"name": "fc2", "type": "Linear"}]


class Peak:
    """The server's peak RSS growth across a block: VmHWM after, minus VmRSS after resetting the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth = 0

    def __enter__(self) -> Peak:
        self.before = reset_peak(self.pid) * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = proc_status_kib(self.pid, "VmHWM") * 1024 - self.before

    def check(self) -> None:
        assert self.growth < RSS_BOUND, f"the server's RSS peaked {self.growth / MiB:.0f} MiB over its baseline"


def error_of(status: int, body: bytes) -> dict[str, str]:
    """The one error shape of a 4xx answer."""
    assert 400 <= status < 500, (status, body[:500])
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "detail"}
    return error


def raw_post(server: Embedded, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """POST over a plain socket, sending chunks until the server answers (it may answer early); its answer.

    Without a Content-Length header the body goes out chunked, so the server cannot know its size up front.
    """
    url = urlsplit(server.base_url)
    chunked = "Content-Length" not in headers
    fields = {"Host": url.netloc, "Authorization": f"Bearer {server.key}", **headers}
    if chunked:
        fields["Transfer-Encoding"] = "chunked"
    head = "POST " + path + " HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    with socket.create_connection((url.hostname, url.port), timeout=120) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: stop sending
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered and closed while we were still sending; the answer is readable
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += _recv(sock)
    return int(lines[0].split()[1]), body


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the server closed the connection without an answer"
    return data


def repeat(chunk: bytes, total: int) -> Iterator[bytes]:
    """total bytes as repeats of chunk, generated as they are sent."""
    for _ in range(total // len(chunk)):
        yield chunk


@pytest.fixture(scope="module")
def http(embedded: Embedded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedded.base_url, headers={"Authorization": f"Bearer {embedded.key}"}) as client:
        client.timeout = 120
        yield client


@pytest.fixture(scope="module")
def run_id(http: httpx.Client) -> str:
    response = http.post("/v1/runs", json={"name": "amplification", "layers": LAYERS, "metrics": ["grad_norm"]})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def pt2_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .pt2 with archive_format replaced by 2 GiB of deflated zeros: about 2 MB on disk."""
    root = tmp_path_factory.mktemp("bomb")
    warnings.simplefilter("ignore")
    model = torch.nn.Linear(4, 2)
    ep = torch.export.export(model, (torch.randn(3, 4),))
    torch.export.save(ep, root / "base.pt2")
    return zero_bomb(root / "base.pt2", root / "bomb.pt2", "archive_format", 2 * 2**30)


def test_pt2_deflate_bomb_upload(embedded: Embedded, http: httpx.Client, pt2_bomb: Path) -> None:
    """Finding 3: was 6.6 GB RSS and 27 s before its 422."""
    assert pt2_bomb.stat().st_size < 3 * MiB
    with Peak(embedded.proc.pid) as peak, open(pt2_bomb, "rb") as handle:
        response = http.post("/v1/models", files={"file": ("bomb.pt2", handle)})
    error = error_of(response.status_code, response.content)
    assert response.status_code == 422 and "archive_format" in error["message"] and "zip bomb" in error["message"]
    peak.check()


def _msgpack_array32_of_empty_arrays() -> bytes:
    return b"\xdd" + (2**25).to_bytes(4, "big") + b"\x90" * 2**25


def _msgpack_nested_empty_arrays() -> bytes:
    row = b"\xdd" + (100_000).to_bytes(4, "big") + b"\x90" * 100_000  # array32 of 100k empty arrays
    return b"\x81\xa5steps\xdc" + (336).to_bytes(2, "big") + row * 336  # {"steps": 336 such rows}


@pytest.mark.parametrize("build", [_msgpack_array32_of_empty_arrays, _msgpack_nested_empty_arrays])
def test_log_batch_msgpack_gzip_bomb(embedded: Embedded, http: httpx.Client, run_id: str, build: object) -> None:
    """Finding 4: 32 KiB of gzip, 2^25 empty msgpack arrays (was +2.3 GB); nested under per-array limits too."""
    body = gzip.compress(build(), 9)  # type: ignore[operator]
    assert len(body) < 64 * 1024
    headers = {"Content-Type": "application/msgpack", "Content-Encoding": "gzip"}
    with Peak(embedded.proc.pid) as peak:
        response = http.post(f"/v1/runs/{run_id}/logs", content=body, headers=headers)
    error = error_of(response.status_code, response.content)
    assert response.status_code == 413 and "one batch may hold" in error["message"]
    peak.check()


def test_log_batch_json_of_empty_lists(embedded: Embedded, http: httpx.Client, run_id: str) -> None:
    """Finding 4: 32 MiB of JSON [[],[],...] (was +0.85 GB)."""
    body = b"[" + b"[]," * (32 * MiB // 3 - 1) + b"[]]"
    with Peak(embedded.proc.pid) as peak:
        response = http.post(f"/v1/runs/{run_id}/logs", content=body, headers={"Content-Type": "application/json"})
    error = error_of(response.status_code, response.content)
    assert response.status_code == 413 and "lists and objects" in error["message"]
    peak.check()


def test_log_batch_gzip_inflating_past_the_batch_limit(embedded: Embedded, http: httpx.Client, run_id: str) -> None:
    """The inflate cap is the batch limit itself (it was 4x that)."""
    body = gzip.compress(b" " * (65 * MiB), 9)
    with Peak(embedded.proc.pid) as peak:
        response = http.post(
            f"/v1/runs/{run_id}/logs",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    error = error_of(response.status_code, response.content)
    assert response.status_code == 413 and "inflates beyond" in error["message"]
    peak.check()


def test_log_batch_valid_msgpack_still_stored(http: httpx.Client, run_id: str) -> None:
    """The limits leave real batches alone: float32 bins and lists."""
    metrics = {"grad_norm": torch.ones(3, 2).numpy().astype("<f4").tobytes()}
    body = msgpack.packb({"seq": 7, "steps": [0, 1, 2], "loss": [1.0, 0.9, 0.8], "metrics": metrics})
    response = http.post(f"/v1/runs/{run_id}/logs", content=body, headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 200, response.text
    body = json.dumps({"seq": 8, "steps": [3, 4], "metrics": {"grad_norm": [[1.0, 2.0], [1.0, None]]}})
    response = http.post(f"/v1/runs/{run_id}/logs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "chunked"])
def test_json_endpoint_whitespace_body(embedded: Embedded, declared: bool) -> None:
    """Finding 5: 400 MiB of whitespace to POST /v1/analyses (was +860 MB)."""
    total = 400 * MiB
    headers = {"Content-Type": "application/json"} | ({"Content-Length": str(total)} if declared else {})
    with Peak(embedded.proc.pid) as peak:
        status, body = raw_post(embedded, "/v1/analyses", headers, repeat(b" " * (256 * 1024), total))
    error = error_of(status, body)
    assert status == 413 and error["code"] == "payload_too_large" and "GRADHEALTH_MAX_JSON_BYTES" in error["message"]
    peak.check()


def _many_fields(boundary: str) -> Iterator[bytes]:
    """1 GiB of multipart text fields, 4000 bytes each, with distinct names (the file part never comes)."""
    value = b"x" * 4000
    for i in range(2**30 // len(value)):
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + value + b"\r\n"


def _huge_part_header(boundary: str) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Disposition: form-data; name=".encode()
    yield from repeat(b"a" * 65536, 2**30)


@pytest.mark.parametrize("body", [_many_fields, _huge_part_header])
def test_multipart_fields_count_toward_the_upload(embedded: Embedded, body: object) -> None:
    """Finding 5: 1 GiB of text fields besides the file (was 2.4 GB before the 422)."""
    boundary = "amplification"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with Peak(embedded.proc.pid) as peak:
        status, answer = raw_post(embedded, "/v1/models", headers, body(boundary))  # type: ignore[operator]
    error_of(status, answer)
    peak.check()


def test_upload_body_over_the_limit_is_413_while_streaming(embedded: Embedded) -> None:
    """A chunked upload is counted as it arrives, file bytes and fields together."""
    headers = {"Content-Type": "application/octet-stream"}
    with Peak(embedded.proc.pid) as peak:
        status, body = raw_post(embedded, "/v1/batches", headers, repeat(b"\0" * 65536, 64 * MiB))
    error = error_of(status, body)
    assert status == 413 and "GRADHEALTH_MAX_UPLOAD_BYTES" in error["message"]
    peak.check()


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/analyses", "/v1/audits"])
def test_json_body_just_under_the_limit(embedded: Embedded, http: httpx.Client, path: str) -> None:
    """The worst JSON that fits GRADHEALTH_MAX_JSON_BYTES (8 MiB): empty lists, 23x their size as objects."""
    body = b'{"name": "x", "layers": [' + b"[]," * (8 * MiB // 3 - 100) + b"[]]}"
    with Peak(embedded.proc.pid) as peak:
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:500]
    error_of(response.status_code, response.content)
    peak.check()
