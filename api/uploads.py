"""Stream an upload (multipart field `file`, or a raw octet-stream body) into the blob store.

Bytes go straight to a staged temp file while being hashed, so the size limit is enforced while
receiving (413 as soon as it is passed) and nothing is buffered twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from fastapi import Request
from gradhealth.store.blobs import BlobStore, BlobTooLarge, StagedBlob
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from .errors import ApiError

FIELD = "file"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file bytes
DRAIN_CAP = 64 * 2**20  # read (and drop) up to this much of an oversize body so the 413 arrives
MEDIA_TYPES = ("multipart/form-data", "application/octet-stream")
MAX_FIELD_BYTES = 4096  # other form fields (e.g. name, tags) are small text
MAX_FIELDS = 16  # parts besides the file: name, tags, and room to spare
MAX_PART_HEADER_BYTES = 8192  # Content-Disposition and Content-Type of one part

UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FIELD: {"type": "string", "format": "binary"},
                        "name": {"type": "string", "description": "models: register as the next version"},
                        "tags": {"type": "string", "description": "models: comma-separated tags"},
                    },
                    "required": [FIELD],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass
class Upload:
    """A received, not yet committed upload."""

    staged: StagedBlob
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than this server's limit of {limit} bytes "
        f"({limit / 2**20:.0f} MiB); upload a smaller file or raise GRADHEALTH_MAX_UPLOAD_BYTES",
    )


def _clean_filename(raw: bytes | None) -> str | None:
    if not raw:
        return None
    name = PurePosixPath(raw.decode("utf-8", "replace").replace("\\", "/")).name
    return name[:255] or None


class _MultipartSink:
    """Parser callbacks: write the bytes of the part named `file` into the staged blob."""

    def __init__(self, staged: StagedBlob) -> None:
        self.staged = staged
        self.filename: str | None = None
        self.found = False
        self._in_file = False
        self._text_field: str | None = None
        self.fields: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self.parts = 0  # every part counts, named or not, so many empty fields cannot pile up

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(400, f"a multipart part has more than {MAX_PART_HEADER_BYTES} bytes of headers")
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""
        self._header_bytes = 0
        self.parts += 1
        if self.parts > MAX_FIELDS + 1:
            raise ApiError(422, f"the multipart body has more than {MAX_FIELDS} form fields besides '{FIELD}'")

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = params.get(b"name", b"")
        self._in_file = part == FIELD.encode() and not self.found
        self._text_field = None if self._in_file or b"filename" in params else part.decode("utf-8", "replace")
        if self._text_field is not None:
            self.fields.setdefault(self._text_field, b"")
        if self._in_file:
            self.found = True
            self.filename = _clean_filename(params.get(b"filename"))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.staged.write(data[start:end])
        elif self._text_field is not None:
            value = self.fields[self._text_field] + data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise ApiError(422, f"form field {self._text_field!r} is longer than {MAX_FIELD_BYTES} bytes")
            self.fields[self._text_field] = value

    def _part_end(self) -> None:
        self._in_file = False
        self._text_field = None


async def _drain(chunks: AsyncIterator[bytes], budget: int) -> None:
    """Read what the client is still sending (up to budget), so it sees our answer, not a reset."""
    try:
        async for chunk in chunks:
            budget -= len(chunk)
            if budget < 0:
                return
    except ClientDisconnect:
        return


async def receive_upload(request: Request, store: BlobStore, limit: int) -> Upload:
    """Stage the uploaded file; raise ApiError 413/415/400/422 with a message saying what to send."""
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    kind = media_type.decode("latin-1").lower()
    if kind not in MEDIA_TYPES:
        raise ApiError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send the file as multipart/form-data "
            f"in a field named '{FIELD}' (curl -F {FIELD}=@model.pt2) or as application/octet-stream",
        )
    chunks = request.stream().__aiter__()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
        if request.headers.get("expect", "").lower() != "100-continue":
            await _drain(chunks, DRAIN_CAP)
        raise _too_large(limit)
    staged = store.stage()
    try:
        filename, fields = None, {}
        if kind == "application/octet-stream":
            async for chunk in chunks:
                staged.write(chunk)
        else:
            boundary = params.get(b"boundary")
            if not boundary:
                raise ApiError(400, "multipart/form-data without a boundary parameter")
            sink = _MultipartSink(staged)
            parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
            async for chunk in chunks:
                parser.write(chunk)
            parser.finalize()
            if not sink.found:
                raise ApiError(422, f"the multipart body has no part named '{FIELD}'; send -F {FIELD}=@FILE")
            filename = sink.filename
            fields = {k: v.decode("utf-8", "replace") for k, v in sink.fields.items()}
        if staged.size == 0:
            raise ApiError(422, "the uploaded file is empty")
    except BlobTooLarge:
        store.discard(staged)
        await _drain(chunks, DRAIN_CAP)
        raise _too_large(limit) from None
    except ClientDisconnect:
        store.discard(staged)
        raise ApiError(400, "the client disconnected before the upload finished") from None
    except ApiError:
        store.discard(staged)
        raise
    except Exception as exc:  # malformed multipart framing
        store.discard(staged)
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    return Upload(staged, filename, fields)
