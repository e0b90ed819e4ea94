"""Fixtures: artifacts, a throwaway PostgreSQL database, and the distributed stack
(real uvicorn API + two real `celery worker` processes on Redis + PostgreSQL), with blobs on
local disk or, for tests marked blob_backends, in a real S3-compatible server (moto_server)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="server extra not installed: pip install -e '.[server]'")

from gradhealth.store.blobs import BlobStore, blob_store  # noqa: E402
from gradhealth.store.settings import Settings  # noqa: E402

from .artifacts import Files, build  # noqa: E402
from .client import Api  # noqa: E402
from .procs import Proc, free_port, wait_ready, wait_worker_ready  # noqa: E402
from .s3server import S3Server, start_s3_server, stop_s3_server  # noqa: E402

PG_ADMIN_URL = os.environ.get("GRADHEALTH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("GRADHEALTH_TEST_REDIS", "redis://127.0.0.1:6379/0")

# Short leases and sweeps so recovery happens within a test; real defaults are minutes.
FAST_RECOVERY = {
    "GRADHEALTH_LEASE_SECONDS": "6",
    "GRADHEALTH_HEARTBEAT_SECONDS": "1",
    "GRADHEALTH_SWEEP_INTERVAL_SECONDS": "1",
    "GRADHEALTH_REQUEUE_AFTER_SECONDS": "8",
    "GRADHEALTH_MAX_UPLOAD_BYTES": str(4 * 2**20),
    "GRADHEALTH_ANALYSIS_TIME_LIMIT": "120",
    "GRADHEALTH_KEY_CACHE_SECONDS": "0",
    "GRADHEALTH_LOG_LEVEL": "INFO",
    "GRADHEALTH_AUDIT_TICK_SECONDS": "1",
    "GRADHEALTH_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "GRADHEALTH_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",  # the local receivers; everything else internal is refused
}


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus any GRADHEALTH_* it happens to have, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADHEALTH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(FAST_RECOVERY)
    env.update(extra)
    return env


def settings_from(env: dict[str, str]) -> Settings:
    """The settings the server processes see, for direct database checks from tests."""
    values = {k[len("GRADHEALTH_") :].lower(): v for k, v in env.items() if k.startswith("GRADHEALTH_")}
    return Settings(**values)


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `gradhealth admin ...` as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", "admin", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return build(tmp_path_factory.mktemp("artifacts"))


@contextmanager
def fresh_pg_database(prefix: str = "gradhealth_test_") -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped (with any connection still open) afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = prefix + secrets.token_hex(6)
    try:
        admin_conn = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (start it, as .ci/run does): {exc}")
    with admin_conn:
        admin_conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:  # FORCE also ends connections this process still pools
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The database of this session's distributed stack (its workers sweep and tick over all of it)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def private_pg_url() -> Iterator[str]:
    """A database no server process touches: for tests that call sweeps and tickers themselves."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of our own on the shared Redis, deleted afterwards."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (start it, as .ci/run does): {exc}")
    prefix = f"gradhealth_test_{secrets.token_hex(6)}:"
    yield prefix
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


BLOB_BACKENDS = ("local", "s3")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "blob_backends(*names): run on the stack with each blob backend named (default: local and s3)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every stack test gets a blob backend: local disk, and S3 too where marked blob_backends."""
    if "stack" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("blob_backends")
    backends = (marker.args or BLOB_BACKENDS) if marker else ("local",)
    metafunc.parametrize("blob_backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def blob_backend(request: pytest.FixtureRequest) -> str:
    """Where the stack keeps blobs: "local" (one shared folder) or "s3" (moto_server, no shared disk)."""
    return str(getattr(request, "param", "local"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server process (moto_server) on 127.0.0.1, with IAM auth."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        stop_s3_server(server)


@dataclass
class Stack:
    """The distributed deployment under test."""

    base_url: str
    env: dict[str, str]
    settings: Settings
    api: Proc
    workers: dict[str, Proc]
    key: str
    root: Path
    backend: str = "local"

    def client(self, key: str | None = None) -> Api:
        return Api(self.base_url, self.key if key is None else key)

    def blob_store(self) -> BlobStore:
        """The stack's blob store as seen from the test process (S3: with the stack's own credentials)."""
        if self.backend != "s3":
            return blob_store(self.settings)
        from gradhealth.store.blobs_s3 import S3BlobStore

        client = S3Server.client_for(self.env)
        return S3BlobStore(self.settings.blob_url, self.root / "test_staging", self.settings.max_upload_bytes, client)

    def restart_worker(self, name: str) -> None:
        """Bring a killed worker back so later tests have two again."""
        worker = self.workers[name]
        if not worker.alive():
            worker.start()
            wait_worker_ready(worker)


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_prefix: str,
    blob_backend: str,
) -> Iterator[Stack]:
    """`gradhealth api` + two `gradhealth worker` processes on Redis and PostgreSQL.

    local: API and workers share one blob folder. s3: blobs in a moto_server bucket, and each
    process has its own data folder and temp folder, so a worker shares no disk with the API.
    """
    root = tmp_path_factory.mktemp(f"stack_{blob_backend}")
    port = free_port()
    with fresh_pg_database() as pg_url:
        env = base_env(
            GRADHEALTH_DATA_DIR=str(root / "data"),
            GRADHEALTH_DATABASE_URL=pg_url,
            GRADHEALTH_BROKER_URL=REDIS_URL,
            GRADHEALTH_BROKER_KEY_PREFIX=f"{redis_prefix}{blob_backend}:",
            GRADHEALTH_PUBLIC_URL=f"http://127.0.0.1:{port}",
        )
        if blob_backend == "s3":
            server: S3Server = request.getfixturevalue("s3_server")
            env.update(server.env(f"s3://{server.new_bucket('stack')}/blobs"))
        created = admin(env, "create-project", "ci")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        procs: list[Proc] = []
        try:
            api = Proc("api", ["api", "--host", "127.0.0.1", "--port", str(port)], env, root)
            procs.append(api)
            workers = {}
            for name in ("worker_a", "worker_b"):
                worker_env = env
                if blob_backend == "s3":  # nothing on disk in common with the API or the other worker
                    own = root / name
                    (own / "tmp").mkdir(parents=True)
                    worker_env = {**env, "GRADHEALTH_DATA_DIR": str(own / "data"), "TMPDIR": str(own / "tmp")}
                workers[name] = Proc(name, ["worker", "--name", f"{name}@test"], worker_env, root)
                procs.append(workers[name])
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url, api)
            for worker in workers.values():
                wait_worker_ready(worker)
            yield Stack(base_url, env, settings_from(env), api, workers, key, root, blob_backend)
        finally:
            for proc in procs:
                proc.stop()


@dataclass
class Embedded:
    """One `gradhealth serve` (SQLite, local files) shared by the bounds and fuzzing tests."""

    proc: Proc
    base_url: str
    data_dir: Path

    @property
    def key(self) -> str:
        return (self.data_dir / "api_key").read_text().strip()

    def client(self) -> Api:
        return Api(self.base_url, self.key)


@contextmanager
def serving(root: Path, name: str = "embedded") -> Iterator[Embedded]:
    """`gradhealth serve` on a free port with its own data folder under root, stopped afterwards."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(root / "data")]
    proc = Proc(name, args, base_env(), root)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield Embedded(proc, f"http://127.0.0.1:{port}", root / "data")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """One `gradhealth serve` shared by the bounds, staging and fuzzing tests."""
    with serving(tmp_path_factory.mktemp("embedded")) as served:
        yield served
