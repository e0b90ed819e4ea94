"""The gradhealth SDK: a client for the service, local packaging, and reports that render and compare."""

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
from .types import Analysis, Batch, ModelPackage
from .watching import Watch, WatchWarning, watch

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
