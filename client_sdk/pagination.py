"""Offset pages that iterate across pages: `for a in client.analyses.list(): ...`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._base import RequestOptions

if TYPE_CHECKING:
    from ._base import AsyncAPIClient, SyncAPIClient

T = TypeVar("T")


class _Page(Generic[T]):
    """One page of a list endpoint answering {data, count} to limit/offset."""

    def __init__(self, data: list[T], count: int, offset: int, limit: int) -> None:
        self.data = data
        """The items on this page."""
        self.count = count
        """Total items across all pages (when this page was read)."""
        self.offset = offset
        self.limit = limit

    def has_next_page(self) -> bool:
        """More items exist past this page."""
        return bool(self.data) and self.offset + len(self.data) < self.count

    def next_page_info(self) -> dict[str, int] | None:
        """The query that reads the next page, or None on the last page."""
        return {"offset": self.offset + len(self.data), "limit": self.limit} if self.has_next_page() else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(items={len(self.data)}, offset={self.offset}, count={self.count})"


class SyncPage(_Page[T]):
    """A page whose iteration fetches the following pages on demand."""

    def __init__(self, data: list[T], count: int, offset: int, limit: int, fetch: Callable[[int], SyncPage[T]]) -> None:
        super().__init__(data, count, offset, limit)
        self._fetch = fetch

    def get_next_page(self) -> SyncPage[T]:
        """Read the next page (LookupError on the last page)."""
        info = self.next_page_info()
        if info is None:
            raise LookupError("this is the last page; check has_next_page() first")
        return self._fetch(info["offset"])

    def iter_pages(self) -> Iterator[SyncPage[T]]:
        """This page and every later one."""
        page: SyncPage[T] = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = page.get_next_page()

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.data


class AsyncPage(_Page[T]):
    """An async page: `async for item in await client.analyses.list()`."""

    def __init__(
        self, data: list[T], count: int, offset: int, limit: int, fetch: Callable[[int], Awaitable[AsyncPage[T]]]
    ) -> None:
        super().__init__(data, count, offset, limit)
        self._fetch = fetch

    async def get_next_page(self) -> AsyncPage[T]:
        """Read the next page (LookupError on the last page)."""
        info = self.next_page_info()
        if info is None:
            raise LookupError("this is the last page; check has_next_page() first")
        return await self._fetch(info["offset"])

    async def iter_pages(self) -> AsyncIterator[AsyncPage[T]]:
        """This page and every later one."""
        page: AsyncPage[T] = self
        while True:
            yield page
            if not page.has_next_page():
                return
            page = await page.get_next_page()

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item


def _list_options(path: str, params: Mapping[str, Any] | None, limit: int, offset: int) -> RequestOptions:
    return RequestOptions("GET", path, params={**(params or {}), "limit": limit, "offset": offset})


def sync_pages(
    client: SyncAPIClient, path: str, parse: Callable[[Any], T], limit: int, params: Mapping[str, Any] | None = None
) -> SyncPage[T]:
    """The first page of a {data, count} list endpoint; later pages are read on demand. Every list uses it."""

    def fetch(offset: int) -> SyncPage[T]:
        body = client.request(_list_options(path, params, limit, offset)).json()
        return SyncPage([parse(item) for item in body["data"]], int(body["count"]), offset, limit, fetch)

    return fetch(0)


async def async_pages(
    client: AsyncAPIClient, path: str, parse: Callable[[Any], T], limit: int, params: Mapping[str, Any] | None = None
) -> AsyncPage[T]:
    """sync_pages for AsyncClient: `async for item in await ...list()` walks every page."""

    async def fetch(offset: int) -> AsyncPage[T]:
        body = (await client.request(_list_options(path, params, limit, offset))).json()
        return AsyncPage([parse(item) for item in body["data"]], int(body["count"]), offset, limit, fetch)

    return await fetch(0)
