"""Report formats and a small cache: reports never change once written, so rendered bytes are reused."""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Literal

from gradhealth.report import Report, to_html, to_junit, to_markdown

ReportFormat = Literal["json", "markdown", "html", "junit"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "markdown": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "junit": "application/xml",
}


def render(body: str, fmt: ReportFormat) -> bytes:
    """The stored JSON as is, or rendered for people (markdown, html) and CI (junit)."""
    if fmt == "json":
        return body.encode()
    report = Report.model_validate_json(body)
    if fmt == "markdown":
        return to_markdown(report).encode()
    if fmt == "html":
        return to_html(report).encode()
    return to_junit(report).encode()


class RenderedCache:
    """LRU of (analysis id, format) -> (project id, bytes); bounded by total bytes."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()
        self._size = 0
        self._lock = Lock()

    def get(self, analysis_id: str, fmt: str) -> tuple[str, bytes] | None:
        """The cached (project id, bytes), freshening its LRU position."""
        with self._lock:
            item = self._items.get((analysis_id, fmt))
            if item is not None:
                self._items.move_to_end((analysis_id, fmt))
            return item

    def put(self, analysis_id: str, fmt: str, project_id: str, data: bytes) -> None:
        """Remember a rendering; evict the least recently used beyond the byte budget."""
        if len(data) > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop((analysis_id, fmt), None)
            if old is not None:
                self._size -= len(old[1])
            self._items[(analysis_id, fmt)] = (project_id, data)
            self._size += len(data)
            while self._size > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._size -= len(evicted)
