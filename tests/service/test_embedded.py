"""`gradhealth serve`: API + worker on one machine, SQLite and local files, nothing else to run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .artifacts import Files
from .client import Api
from .conftest import Embedded as Served
from .conftest import serving
from .procs import pid_alive, wait_for, wait_ready


def worker_children(serve_pid: int) -> list[int]:
    """The embedded worker processes of one `gradhealth serve`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"gradhealth.cli\x00worker" in cmdline and f"embedded-{serve_pid}@".encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server of this module's own: the tests restart it."""
    with serving(tmp_path_factory.mktemp("serve"), "serve") as server:
        yield server


@pytest.mark.slow
def test_first_start_prints_a_key_that_works_end_to_end(served: Served, files: Files) -> None:
    key = (served.data_dir / "api_key").read_text().strip()
    assert key.startswith("ghk_") and key in served.proc.log.read_text().splitlines()
    assert (served.data_dir / "api_key").stat().st_mode & 0o077 == 0
    api = Api(served.base_url, key)
    analysis_id = api.analyze(files.models["deep_sigmoid_mlp"], files.batches["deep_sigmoid_mlp"])["id"]
    done = api.wait(analysis_id, timeout=120)
    assert done["status"] == "succeeded", done
    for fmt, marker in (
        ("json", b'"schema_version":"1"'),
        ("markdown", b"# gradhealth report"),
        ("html", b"<svg"),
        ("junit", b"<testsuite"),
    ):
        response = api.report(analysis_id, fmt)
        assert response.status_code == 200 and marker in response.content, fmt
    assert "vanishing_gradient" in api.report(analysis_id).text
    api.close()


def test_data_lives_in_the_data_dir(served: Served) -> None:
    assert (served.data_dir / "gradhealth.db").is_file()
    assert (served.data_dir / "blobs").is_dir() and (served.data_dir / "broker").is_dir()
    ready = Api(served.base_url, None).http.get("/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "blobs": "ok"}


@pytest.mark.slow
def test_restart_keeps_the_key_and_stops_its_worker(served: Served, files: Files) -> None:
    key = (served.data_dir / "api_key").read_text().strip()
    workers = worker_children(served.proc.pid)
    assert len(workers) == 1
    served.proc.stop()
    wait_for(lambda: not any(pid_alive(pid) for pid in workers), 20, "the embedded worker to stop")
    served.proc.start()
    wait_ready(served.base_url, served.proc)
    assert "API key for project 'local' is in" in served.proc.tail(200)
    api = Api(served.base_url, key)
    listed = api.http.get("/v1/analyses")
    assert listed.status_code == 200 and listed.json()["count"] >= 1
    done = api.wait(api.analyze(files.models["plain"], files.batches["plain"], loss="cross_entropy")["id"])
    assert done["status"] == "succeeded", done
    api.close()
