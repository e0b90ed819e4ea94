"""A real local webhook receiver: http.server in a thread, scripted status codes, every request kept."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers with the scripted codes in order, then 200; `url` is where to send webhooks."""

    def __init__(self, *codes: int, host: str = "127.0.0.1") -> None:
        self.codes = list(codes)
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()  # clear it to hold answers (a slow receiver); set again to release them
        self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    code = receiver.codes.pop(0) if receiver.codes else 200
                receiver.gate.wait(60)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Block until at least `count` requests arrived."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver got {len(self.requests)} of {count} requests in {timeout} s")
            time.sleep(0.1)
        return list(self.requests)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
