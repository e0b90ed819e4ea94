"""The SDK's exceptions; the tree mirrors HTTP so callers catch exactly what they can handle.

GradhealthError
├── APIError                          the service could not give an answer
│   ├── APIStatusError                a 4xx/5xx answer: status_code, code, message, body
│   │   ├── BadRequestError           400 (also a ValueError)
│   │   ├── AuthenticationError       401
│   │   ├── PermissionDeniedError     403
│   │   ├── NotFoundError             404 (also a LookupError)
│   │   ├── ConflictError             409 (e.g. the report is not ready yet)
│   │   ├── PayloadTooLargeError      413
│   │   ├── UnprocessableEntityError  422 (also a ValueError): the upload or options are unusable
│   │   ├── RateLimitError            429
│   │   └── InternalServerError       5xx
│   └── APIConnectionError            no answer at all (refused, reset, DNS)
│       └── APITimeoutError           no answer in time (also a TimeoutError)
├── AnalysisFailedError               the analysis ran and failed: .analysis.error says why
├── WaitTimeoutError                  wait() gave up before the analysis finished (also a TimeoutError)
└── HealthError                       Report.raise_for_health(): findings at or above the level
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from gradhealth.report import Finding

    from .types import Analysis

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AnalysisFailedError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "GradhealthError",
    "HealthError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "make_status_error",
]


class GradhealthError(Exception):
    """Base of every exception the SDK raises on purpose."""


class APIError(GradhealthError):
    """The service did not give a usable answer to a request."""

    def __init__(self, message: str, *, request: httpx.Request | None = None, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body


class APIStatusError(APIError):
    """The service answered with a 4xx or 5xx status and (usually) the standard error body."""

    status_code: int

    def __init__(self, message: str, *, response: httpx.Response, body: object = None, code: str | None = None) -> None:
        super().__init__(message, request=response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.code = code
        self.detail = body.get("error", {}).get("detail") if isinstance(body, dict) else None
        self.request_id = response.headers.get("x-request-id")

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"{self.status_code}{code}: {self.message}"


class BadRequestError(APIStatusError, ValueError):
    """400: the request was malformed."""


class AuthenticationError(APIStatusError):
    """401: no API key, or a revoked or wrong one."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks the scope this call needs."""


class NotFoundError(APIStatusError, LookupError):
    """404: no such resource in this project."""


class ConflictError(APIStatusError):
    """409: the resource is not in a state that allows this (e.g. report not ready, analysis failed)."""


class PayloadTooLargeError(APIStatusError):
    """413: the upload exceeds the server's limit."""


class UnprocessableEntityError(APIStatusError, ValueError):
    """422: the file or the options are unusable; the message says what to change."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically, raised once the retry budget is spent."""


class InternalServerError(APIStatusError):
    """5xx: a server-side failure; retried automatically, raised once the retry budget is spent."""


class APIConnectionError(APIError):
    """The request never got an answer: refused, reset or unresolvable."""

    def __init__(self, message: str = "connection error", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request got no answer within its timeout."""

    def __init__(self, message: str = "request timed out", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class AnalysisFailedError(GradhealthError):
    """The analysis finished as failed; `.analysis.error` holds the code and what to fix."""

    def __init__(self, analysis: Analysis) -> None:
        error = analysis.error
        reason = f"{error.code}: {error.message}" if error else "no reason given"
        super().__init__(f"analysis {analysis.id} failed ({reason})")
        self.analysis = analysis


class WaitTimeoutError(GradhealthError, TimeoutError):
    """wait() gave up; the analysis may still finish, poll it again later."""

    def __init__(self, analysis: Analysis, timeout: float) -> None:
        super().__init__(
            f"analysis {analysis.id} is still {analysis.status} ({analysis.progress.phase}, "
            f"{analysis.progress.fraction:.0%}) after {timeout:.0f} s; call wait() again to keep waiting"
        )
        self.analysis = analysis


class HealthError(GradhealthError):
    """A report has findings at or above the requested severity; `.findings` lists them."""

    def __init__(self, level: str, findings: list[Finding], report_id: str) -> None:
        lines = [
            f"- [{f.severity}] {f.rule}: {f.title}" + (f" ({', '.join(f.layers[:4])})" if f.layers else "")
            for f in findings
        ]
        super().__init__(
            f"report {report_id} has {len(findings)} finding(s) at or above {level!r}:\n" + "\n".join(lines)
        )
        self.level = level
        self.findings = findings


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _parse_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text or None


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The typed exception for an error response, reading the service's {"error": {...}} body."""
    body = _parse_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message, code = str(error.get("message") or response.reason_phrase), error.get("code")
    else:
        text = body if isinstance(body, str) else ""
        message, code = (text[:500] or response.reason_phrase or "error"), None
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(message, response=response, body=body, code=code)
