"""Bounds for numbers that reach the database, so an out-of-range value is a 422, never an overflow (a 500),
and the one limit/offset pair every list endpoint takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

INT64_MAX = 2**63 - 1  # BIGINT in PostgreSQL, INTEGER in SQLite
MAX_OFFSET = 2**31 - 1  # far past any page; LIMIT + OFFSET stays inside int64 everywhere

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip (at most 2^31-1)")]


@dataclass(frozen=True)
class PageQuery:
    """Which slice of a list to answer: every list endpoint answers {data, count} to these."""

    limit: int
    offset: int


async def page_query(
    limit: Annotated[int, Query(ge=1, le=500, description="rows per page (at most 500)")] = 50, offset: Offset = 0
) -> PageQuery:
    """limit/offset of the resource lists."""
    return PageQuery(limit, offset)


async def log_page_query(
    limit: Annotated[int, Query(ge=1, le=1000, description="rows per page (at most 1000)")] = 100, offset: Offset = 0
) -> PageQuery:
    """limit/offset of the delivery logs, whose rows are small and many."""
    return PageQuery(limit, offset)


Paging = Annotated[PageQuery, Depends(page_query)]
LogPaging = Annotated[PageQuery, Depends(log_page_query)]
