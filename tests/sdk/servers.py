"""Real HTTP servers for SDK tests: `gradhealth serve` in a subprocess, and a fault-injecting stub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..service.procs import Proc, free_port, wait_ready


@dataclass
class Served:
    """A `gradhealth serve` subprocess (a service-test Proc) with its own data folder, port and API key."""

    root: Path
    port: int
    env: dict[str, str]
    proc: Proc | None = None
    key: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def start(self) -> None:
        """Start (or restart) the server and wait until it is ready."""
        if self.proc is None:
            args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
            self.proc = Proc("serve", args, self.env, self.root)
        else:
            self.proc.start()
        wait_ready(self.base_url, self.proc)
        self.key = (self.data_dir / "api_key").read_text().strip()

    def stop(self) -> None:
        """SIGTERM (serve stops its worker), SIGKILL the group if it hangs."""
        if self.proc is not None:
            self.proc.stop(20.0)

    def admin(self, *args: str) -> str:
        """`gradhealth admin ...` on this server's data folder; returns stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "gradhealth.cli", "admin", *args],
            env={**self.env, "GRADHEALTH_DATA_DIR": str(self.data_dir)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def start_serve(root: Path) -> Served:
    """A fresh `gradhealth serve` on a free port, configured for fast recovery."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADHEALTH_")}
    env.update(
        PYTHONUNBUFFERED="1",
        GRADHEALTH_KEY_CACHE_SECONDS="0",
        GRADHEALTH_LEASE_SECONDS="6",
        GRADHEALTH_HEARTBEAT_SECONDS="1",
        GRADHEALTH_SWEEP_INTERVAL_SECONDS="1",
        GRADHEALTH_REQUEUE_AFTER_SECONDS="8",
        GRADHEALTH_ANALYSIS_TIME_LIMIT="120",
    )
    served = Served(root=root, port=free_port(), env=env)
    served.start()
    return served


@dataclass
class Seen:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """What the stub sends back, optionally after a delay."""

    status: int = 200
    body: object = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FaultServer:
    """A real HTTP server on localhost whose answers a test scripts: delays, 429s, restarts."""

    def __init__(self, handler: Callable[[Seen], Answer]) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                stub.seen.append(seen)
                answer = stub.handler(seen)
                time.sleep(answer.delay)
                payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
