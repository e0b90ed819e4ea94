"""Bounds for numbers that reach the database, so an out-of-range value is a 422, never an overflow (a 500)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

INT64_MAX = 2**63 - 1  # BIGINT in PostgreSQL, INTEGER in SQLite
MAX_OFFSET = 2**31 - 1  # far past any page; LIMIT + OFFSET stays inside int64 everywhere

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip (at most 2^31-1)")]
