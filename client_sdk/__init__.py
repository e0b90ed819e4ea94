"""The gradhealth SDK: a client for the service, local packaging, and reports that render and compare.

Names load on first use (PEP 562): `gradhealth --version`, `gradhealth admin …` and the report
toolkit do not pay for torch and httpx unless they touch the client, packaging or watch().
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {  # public name -> the module that defines it
    **dict.fromkeys(("Comparison", "Finding", "Tolerance"), "gradhealth.report"),
    **dict.fromkeys(("AsyncClient", "Client"), ".client"),
    **dict.fromkeys(
        (
            "AnalysisFailedError",
            "APIConnectionError",
            "APIError",
            "APIStatusError",
            "APITimeoutError",
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
        ),
        ".errors",
    ),  # fmt: skip
    **dict.fromkeys(("AnalysisHandle", "AsyncAnalysisHandle"), ".handles"),
    **dict.fromkeys(("package", "save_batch"), ".packaging"),
    "Report": ".report",
    "RunComparison": ".run_compare",
    **dict.fromkeys(("Analysis", "Batch", "ModelPackage"), ".types"),
    **dict.fromkeys(("Watch", "WatchWarning", "watch"), ".watching"),
}

if TYPE_CHECKING:
    from gradhealth.report import Comparison, Finding, Tolerance

    from . import errors
    from .client import AsyncClient, Client
    from .errors import (
        AnalysisFailedError,
        APIConnectionError,
        APIError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        ConflictError,
        GradhealthError,
        HealthError,
        InternalServerError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RateLimitError,
        UnprocessableEntityError,
        WaitTimeoutError,
    )
    from .handles import AnalysisHandle, AsyncAnalysisHandle
    from .packaging import package, save_batch
    from .report import Report
    from .run_compare import RunComparison
    from .types import Analysis, Batch, ModelPackage
    from .watching import Watch, WatchWarning, watch


def __getattr__(name: str) -> Any:
    if name == "errors":
        value: Any = importlib.import_module(".errors", __name__)
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Analysis",
    "AnalysisFailedError",
    "AnalysisHandle",
    "AsyncAnalysisHandle",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "Client",
    "Comparison",
    "ConflictError",
    "Finding",
    "GradhealthError",
    "HealthError",
    "InternalServerError",
    "ModelPackage",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "Report",
    "RunComparison",
    "Tolerance",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "Watch",
    "WatchWarning",
    "errors",
    "package",
    "save_batch",
    "watch",
]
