"""Defaults in one place, so every request has a timeout and a bounded retry budget."""

from __future__ import annotations

import httpx

ENV_URL = "GRADHEALTH_URL"
ENV_API_KEY = "GRADHEALTH_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a server asking us to wait longer than this is not honoured; backoff applies

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

POLL_INITIAL_INTERVAL = 0.25
POLL_MAX_INTERVAL = 2.0
DEFAULT_WAIT_TIMEOUT = 1800.0
TERMINAL_STATES = frozenset({"succeeded", "failed"})
