"""Creation-time webhook check: a URL that resolves to an internal address is a 422, not a stored SSRF."""

from __future__ import annotations

from gradhealth.store.settings import Settings
from gradhealth.store.webhook_targets import TargetError, check, parse_allow

from .errors import ApiError


def checked_webhook_url(settings: Settings, url: str | None) -> str | None:
    """The URL unchanged when it may receive webhooks; otherwise a 422 that says why (never the address)."""
    if url is None:
        return None
    try:
        check(url, parse_allow(settings.webhook_allow_hosts))
    except TargetError as exc:
        raise ApiError(422, f"webhook_url: {exc}", code="validation_error") from exc
    return url
