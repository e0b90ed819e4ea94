"""Model and batch uploads: `client.models` and `client.batches` (sync and async)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from ._base import RequestOptions
from ._constants import RETRY_STATUSES
from .errors import APIError
from .pagination import AsyncPage, SyncPage, async_pages, sync_pages
from .types import Batch, ModelPackage

if TYPE_CHECKING:
    from ._base import AsyncAPIClient, SyncAPIClient

R = TypeVar("R", ModelPackage, Batch)
NAMED_RETRY = RETRY_STATUSES - {409}  # 409: these bytes carry another name; retrying cannot help


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks (model packages can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked(result: R, local_sha: str | None, path: Path) -> R:
    """The server hashes what it received; a different digest means the bytes changed in transit."""
    if local_sha is not None and result.sha256 != local_sha:
        raise APIError(f"upload of {path} arrived corrupted: local sha256 {local_sha}, server {result.sha256}")
    return result


def _existing_file(file: str | os.PathLike[str]) -> Path:
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


class _SyncUploads(Generic[R]):
    _kind: str
    _cast: type[R]

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def upload(self, file: str | os.PathLike[str], *, filename: str | None = None) -> R:
        """Upload a file; the server answers with the existing record if it already has these bytes."""
        path = _existing_file(file)
        return self._upload(path, sha256_file(path), filename)

    def _upload(self, path: Path, sha: str, filename: str | None = None) -> R:
        response = self._client.request(RequestOptions("POST", f"/v1/{self._kind}", upload=path, upload_name=filename))
        result = _checked(self._cast.model_validate(response.json()), sha, path)
        self._client._known_uploads[(self._kind, sha)] = result.id
        return result

    def retrieve(self, object_id: str) -> R:
        """One record of this project (NotFoundError otherwise)."""
        return self._client._get(f"/v1/{self._kind}/{object_id}", self._cast)

    def ensure(self, file: str | os.PathLike[str]) -> str:
        """The id for these bytes, uploading only if this client has not uploaded them already."""
        path = _existing_file(file)
        sha = sha256_file(path)
        known = self._client._known_uploads.get((self._kind, sha))
        return known if known is not None else self._upload(path, sha).id


class _AsyncUploads(Generic[R]):
    _kind: str
    _cast: type[R]

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def upload(self, file: str | os.PathLike[str], *, filename: str | None = None) -> R:
        """Upload a file; the server answers with the existing record if it already has these bytes."""
        path = _existing_file(file)
        return await self._upload(path, sha256_file(path), filename)

    async def _upload(self, path: Path, sha: str, filename: str | None = None) -> R:
        options = RequestOptions("POST", f"/v1/{self._kind}", upload=path, upload_name=filename)
        response = await self._client.request(options)
        result = _checked(self._cast.model_validate(response.json()), sha, path)
        self._client._known_uploads[(self._kind, sha)] = result.id
        return result

    async def retrieve(self, object_id: str) -> R:
        """One record of this project (NotFoundError otherwise)."""
        return await self._client._get(f"/v1/{self._kind}/{object_id}", self._cast)

    async def ensure(self, file: str | os.PathLike[str]) -> str:
        """The id for these bytes, uploading only if this client has not uploaded them already."""
        path = _existing_file(file)
        sha = sha256_file(path)
        known = self._client._known_uploads.get((self._kind, sha))
        return known if known is not None else (await self._upload(path, sha)).id


def _named_upload(path: Path, filename: str | None, name: str, tags: Sequence[str]) -> RequestOptions:
    params = {"name": name, **({"tags": ",".join(tags)} if tags else {})}
    return RequestOptions(
        "POST", "/v1/models", params=params, upload=path, upload_name=filename, retry_statuses=NAMED_RETRY
    )


def _name_filter(name: str | None) -> dict[str, str] | None:
    return {"name": name} if name is not None else None


class Models(_SyncUploads[ModelPackage]):
    """`client.models`: model packages (.pt2 from gradhealth.package)."""

    _kind, _cast = "models", ModelPackage

    def upload(
        self,
        file: str | os.PathLike[str],
        *,
        filename: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
    ) -> ModelPackage:
        """Upload a package; with `name` it becomes the next version of that name (NAME:latest)."""
        if name is None:
            return super().upload(file, filename=filename)
        path = _existing_file(file)
        response = self._client.request(_named_upload(path, filename, name, tags))
        return _checked(ModelPackage.model_validate(response.json()), sha256_file(path), path)

    def list(self, *, name: str | None = None, limit: int = 50) -> SyncPage[ModelPackage]:
        """This project's models newest first, or every version of `name`, newest version first."""
        return sync_pages(self._client, "/v1/models", ModelPackage.model_validate, limit, _name_filter(name))


class Batches(_SyncUploads[Batch]):
    """`client.batches`: batches (safetensors from gradhealth.save_batch)."""

    _kind, _cast = "batches", Batch


class AsyncModels(_AsyncUploads[ModelPackage]):
    """`client.models` of AsyncClient."""

    _kind, _cast = "models", ModelPackage

    async def upload(
        self,
        file: str | os.PathLike[str],
        *,
        filename: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
    ) -> ModelPackage:
        """Upload a package; with `name` it becomes the next version of that name (NAME:latest)."""
        if name is None:
            return await super().upload(file, filename=filename)
        path = _existing_file(file)
        response = await self._client.request(_named_upload(path, filename, name, tags))
        return _checked(ModelPackage.model_validate(response.json()), sha256_file(path), path)

    async def list(self, *, name: str | None = None, limit: int = 50) -> AsyncPage[ModelPackage]:
        """This project's models newest first, or every version of `name`, newest version first."""
        return await async_pages(self._client, "/v1/models", ModelPackage.model_validate, limit, _name_filter(name))


class AsyncBatches(_AsyncUploads[Batch]):
    """`client.batches` of AsyncClient."""

    _kind, _cast = "batches", Batch
