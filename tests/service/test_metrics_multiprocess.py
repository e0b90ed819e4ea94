"""`gradhealth api --workers 2`: a scrape of /metrics counts the requests both processes served."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from .conftest import base_env
from .procs import Proc, free_port, wait_for, wait_ready

_HEALTHZ = re.compile(r'^gradhealth_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.M)


def _healthz_in_file(path: Path) -> float:
    """One process's own count of GET /healthz 200, read straight from its sample file."""
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
        if '"/healthz"' in key and '"200"' in key and "requests_total" in key:
            total += value
    return total


def _pids(folder: Path) -> set[str]:
    """Processes that wrote counter samples (prometheus_client names the files counter_<pid>.db)."""
    return {p.stem.split("_", 1)[1] for p in folder.glob("counter_*.db")}


def test_metrics_sum_over_api_processes(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"")  # a previous run's leftover: the command must clear it
    port = free_port()
    env = base_env(GRADHEALTH_DATA_DIR=str(tmp_path / "data"), PROMETHEUS_MULTIPROC_DIR=str(folder))
    proc = Proc("api2", ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, "/healthz")
        assert "999999" not in _pids(folder)
        sent = 0
        # New connection per request: the kernel hands accepts to both processes; stop once both have counted.
        while len(_pids(folder)) < 2 and sent < 2000:
            assert httpx.get(base + "/healthz", headers={"Connection": "close"}).status_code == 200
            sent += 1
        assert len(_pids(folder)) == 2, f"one process served all {sent} requests"

        def counted() -> float:
            match = _HEALTHZ.search(httpx.get(base + "/metrics").text)
            return float(match.group(1)) if match else -1.0

        def agree() -> tuple[float, list[float]] | None:
            match = _HEALTHZ.search(httpx.get(base + "/metrics").text)
            own = [_healthz_in_file(folder / f"counter_{pid}.db") for pid in sorted(_pids(folder))]
            scraped = float(match.group(1)) if match else -1.0
            return (scraped, own) if scraped == sum(own) and sum(own) >= sent else None

        # wait_ready's own /healthz probes count too, so the reference is the processes' own files.
        result = wait_for(agree, 20, "the scrape to equal both processes' counts", procs=(proc,))
        assert isinstance(result, tuple)
        scraped, own = result
        assert len(own) == 2 and min(own) >= 1 and scraped > max(own)  # one process alone would be max(own)
    finally:
        proc.stop()
