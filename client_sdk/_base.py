"""The HTTP core shared by Client and AsyncClient: auth, timeouts, bounded retries, error mapping.

Retries follow an allow-list (connection errors and 408/409/429/5xx), back off exponentially with
jitter, honour `Retry-After` up to a cap, and reuse one `Idempotency-Key` for every attempt of a
logical POST so the server can recognise a repeat.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

from ._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_URL,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRY_STATUSES,
)
from .errors import APIConnectionError, APITimeoutError, make_status_error

T = TypeVar("T", bound=BaseModel)
TimeoutArg = float | httpx.Timeout | None
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass
class RequestOptions:
    """One logical request; the retry loop turns it into one or more attempts."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None  # a pre-encoded body (msgpack logs); Content-Type goes in headers
    upload: Path | None = None
    upload_name: str | None = None
    timeout: TimeoutArg = None
    max_retries: int | None = None
    retry_statuses: frozenset[int] = RETRY_STATUSES
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def parse_retry_after(headers: httpx.Headers | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or HTTP date)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(retries_done: int, headers: httpx.Headers | None) -> float:
    """Retry-After when sane (0..MAX_RETRY_AFTER), else capped exponential backoff with jitter."""
    asked = parse_retry_after(headers)
    if asked is not None and 0 <= asked <= MAX_RETRY_AFTER:
        return asked
    base = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return base * (1.0 - 0.25 * random.random())


def local_server_key(base_url: str) -> str | None:
    """The key `gradhealth serve` keeps in its data folder, when talking to a loopback server."""
    if (urlsplit(base_url).hostname or "") not in _LOOPBACK:
        return None
    data_dir = os.environ.get("GRADHEALTH_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share"), "gradhealth"
    )
    try:
        return Path(data_dir, "api_key").read_text().strip() or None
    except OSError:
        return None


class BaseClient:
    """Configuration and the parts of a request that do not depend on sync or async I/O."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: TimeoutArg,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(ENV_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or local_server_key(self.base_url)
        self.timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self._default_headers = dict(default_headers or {})
        self._known_uploads: dict[tuple[str, str], str] = {}  # (kind, sha256) -> id, this client's uploads

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _headers(self, options: RequestOptions, retries_done: int) -> dict[str, str]:
        from gradhealth import __version__

        headers = {"Accept": "application/json", "User-Agent": f"gradhealth-python/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if options.idempotency_key:
            headers["Idempotency-Key"] = options.idempotency_key
        if retries_done:
            headers["X-Retry-Count"] = str(retries_done)
        return {**headers, **self._default_headers, **options.headers}

    def _prepare(self, options: RequestOptions) -> RequestOptions:
        """Fix the idempotency key once per logical POST, before the first attempt."""
        if options.method.upper() == "POST" and options.idempotency_key is None:
            options.idempotency_key = f"gh-{uuid.uuid4().hex}"
        if options.max_retries is None:
            options.max_retries = self.max_retries
        return options

    def _build(
        self, http: httpx.Client | httpx.AsyncClient, options: RequestOptions, retries_done: int, stack: ExitStack
    ) -> httpx.Request:
        """One attempt's request; an upload is reopened per attempt so a retry resends every byte."""
        files = None
        if options.upload is not None:
            handle = stack.enter_context(open(options.upload, "rb"))
            name = options.upload_name or options.upload.name
            files = {"file": (name, handle, "application/octet-stream")}
        timeout = options.timeout if options.timeout is not None else self.timeout
        return http.build_request(
            options.method,
            self.base_url + options.path,
            params=options.params,
            json=options.json,
            content=options.content,
            files=files,
            headers=self._headers(options, retries_done),
            timeout=timeout,
        )

    @staticmethod
    def _retryable(exc: httpx.TransportError) -> bool:
        """A wrong URL scheme or proxy set-up will not fix itself; everything else might."""
        return not isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError)

    @staticmethod
    def _connection_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
        where = f"{request.method} {request.url}"
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"no answer in time from {where} ({type(exc).__name__})", request=request)
        return APIConnectionError(f"cannot reach {where}: {exc or type(exc).__name__}", request=request)


class SyncAPIClient(BaseClient):
    """Blocking requests over an httpx.Client (owned, or injected via http_client)."""

    def __init__(self, *, http_client: httpx.Client | None, **config: Any) -> None:
        super().__init__(**config)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout, follow_redirects=True)
        self.sleep: Callable[[float], None] = time.sleep
        """How the client waits between retries and polls (its resources and handles too): replaceable."""

    def request(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; return a 2xx response or raise the typed error."""
        options = self._prepare(options)
        assert options.max_retries is not None
        retries_done = 0
        while True:
            with ExitStack() as stack:
                request = self._build(self._http, options, retries_done, stack)
                try:
                    response = self._http.send(request)
                except httpx.TransportError as exc:
                    if self._retryable(exc) and retries_done < options.max_retries:
                        self.sleep(retry_delay(retries_done, None))
                        retries_done += 1
                        continue
                    raise self._connection_error(exc, request) from exc
            if response.is_success:
                return response
            if response.status_code in options.retry_statuses and retries_done < options.max_retries:
                self.sleep(retry_delay(retries_done, response.headers))
                retries_done += 1
                continue
            raise make_status_error(response)

    def _get(self, path: str, cast_to: type[T], *, params: Mapping[str, Any] | None = None) -> T:
        return cast_to.model_validate(self.request(RequestOptions("GET", path, params=params)).json())

    def close(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SyncAPIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAPIClient(BaseClient):
    """Non-blocking requests over an httpx.AsyncClient (owned, or injected via http_client)."""

    def __init__(self, *, http_client: httpx.AsyncClient | None, **config: Any) -> None:
        super().__init__(**config)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        """How the client waits between retries and polls (its resources and handles too): replaceable."""

    async def request(self, options: RequestOptions) -> httpx.Response:
        """Send with retries; return a 2xx response or raise the typed error."""
        options = self._prepare(options)
        assert options.max_retries is not None
        retries_done = 0
        while True:
            with ExitStack() as stack:
                request = self._build(self._http, options, retries_done, stack)
                try:
                    response = await self._http.send(request)
                except httpx.TransportError as exc:
                    if self._retryable(exc) and retries_done < options.max_retries:
                        await self.sleep(retry_delay(retries_done, None))
                        retries_done += 1
                        continue
                    raise self._connection_error(exc, request) from exc
            if response.is_success:
                return response
            if response.status_code in options.retry_statuses and retries_done < options.max_retries:
                await self.sleep(retry_delay(retries_done, response.headers))
                retries_done += 1
                continue
            raise make_status_error(response)

    async def _get(self, path: str, cast_to: type[T], *, params: Mapping[str, Any] | None = None) -> T:
        return cast_to.model_validate((await self.request(RequestOptions("GET", path, params=params))).json())

    async def close(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
