"""Content-addressed blob storage: stage (hash while writing), validate, then commit atomically."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

LOCK_NAME = ".owner.lock"
DOWNLOAD_PREFIX = "gradhealth-blobs-"  # a worker's private folder of downloaded inputs, under its temp dir
STAGING_GRACE_SECONDS = 3600.0  # leftovers whose owner cannot be told (no lock, old layout) go after this
log = logging.getLogger(__name__)
_staging: dict[Path, tuple[Path, int, int]] = {}  # tmp dir -> (this process's folder, lock fd, pid)
_staging_guard = threading.Lock()


class BlobTooLarge(Exception):
    """The upload exceeded the configured limit; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass
class StagedBlob:
    """Bytes received but not yet committed: a local temp file with its running hash."""

    path: Path
    file: BinaryIO
    limit: int
    size: int = 0
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def write(self, data: bytes) -> None:
        """Append a chunk; raise BlobTooLarge as soon as the limit is passed."""
        self.size += len(data)
        if self.size > self.limit:
            raise BlobTooLarge(self.limit)
        self._hash.update(data)
        self.file.write(data)

    def close(self) -> None:
        """Flush to disk so a later commit never publishes a half-written file."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    @property
    def sha256(self) -> str:
        """Hex digest of everything written so far."""
        return self._hash.hexdigest()


class BlobMissing(FileNotFoundError):
    """A committed blob is gone (deleted, or altered so its bytes no longer match their sha256)."""


class BlobStoreUnavailable(Exception):
    """Blob storage refused or could not be reached (credentials, network, bucket); the message says what to check."""


class BlobStore(Protocol):
    """What the API and the workers need from blob storage (local disk, or S3-compatible)."""

    def stage(self) -> StagedBlob:
        """Open a temp file to receive an upload."""

    def commit(self, staged: StagedBlob) -> str:
        """Publish staged bytes under their sha256 and return the key."""

    def discard(self, staged: StagedBlob) -> None:
        """Drop staged bytes (failed validation or aborted upload)."""

    def local_copies(self, keys: Sequence[str]) -> AbstractContextManager[list[Path]]:
        """Local files with the blobs' bytes for the duration of the block; BlobMissing names a missing key."""

    def exists(self, key: str) -> bool:
        """True when the key has been committed."""

    def sweep_staging(self) -> int:
        """Remove partial uploads left by processes that died; returns how many were removed."""

    def delete(self, key: str) -> bool:
        """Remove a committed blob (retention); True when something was removed, False when it was absent."""


def check_key(key: str) -> str:
    """A blob key is a lowercase hex sha256 and nothing else, so no key can name a path or another bucket."""
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"not a sha256 blob key: {key!r}")
    return key


class StagingArea:
    """Uploads are received into a local folder (one per process, flock-ed) and validated before commit."""

    def __init__(self, tmp: Path, max_bytes: int) -> None:
        self._tmp = Path(tmp)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def stage(self) -> StagedBlob:
        """Receive into this process's folder under the staging root (same filesystem as a local commit)."""
        fd, name = tempfile.mkstemp(dir=_own_staging_dir(self._tmp), prefix="upload-")
        return StagedBlob(path=Path(name), file=os.fdopen(fd, "wb"), limit=self.max_bytes)

    def discard(self, staged: StagedBlob) -> None:
        """Remove the temp file; never fails."""
        try:
            staged.close()
        except OSError:
            pass
        staged.path.unlink(missing_ok=True)

    def sweep_staging(self) -> int:
        """Delete staging folders whose owner is gone (its lock is free) and stray files older than the grace."""
        removed = 0
        for entry in self._tmp.iterdir():
            if entry.is_dir() and _abandoned(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
            elif entry.is_file() and _age(entry) > STAGING_GRACE_SECONDS:  # the layout before per-process folders
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


class LocalBlobStore(StagingArea):
    """Blobs as files <root>/<sha[:2]>/<sha>; writes are temp file + fsync + os.replace."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        super().__init__(self.root / "tmp", max_bytes)

    def commit(self, staged: StagedBlob) -> str:
        """Atomic publish: readers see the whole blob or none of it."""
        staged.close()
        key = staged.sha256
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            staged.path.unlink(missing_ok=True)
        else:
            os.replace(staged.path, final)
        return key

    def local_path(self, key: str) -> Path:
        """The committed file; BlobMissing names the key when it is gone."""
        path = self._path(key)
        if not path.is_file():
            raise BlobMissing(f"blob {key} is missing from {self.root}")
        return path

    @contextmanager
    def local_copies(self, keys: Sequence[str]) -> Iterator[list[Path]]:
        """The committed files themselves: no copy (the sandbox hard-links them into its private folder)."""
        yield [self.local_path(key) for key in keys]

    def exists(self, key: str) -> bool:
        """True when the key has been committed."""
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        """Unlink the blob; a concurrent reader that already opened it keeps its bytes (POSIX)."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / check_key(key)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _own_staging_dir(tmp: Path) -> Path:
    """This process's staging folder, locked (flock) for its lifetime so other processes can tell it is alive."""
    with _staging_guard:
        entry = _staging.get(tmp)
        if entry is not None and entry[2] == os.getpid() and entry[0].is_dir():
            return entry[0]
        folder = Path(tempfile.mkdtemp(dir=tmp, prefix=f"proc-{os.getpid()}-"))
        fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _staging[tmp] = (folder, fd, os.getpid())
        return folder


def _abandoned(folder: Path) -> bool:
    """True when no live process holds the folder's lock (or, where locks cannot tell, it is old)."""
    if any(entry[0] == folder and entry[2] == os.getpid() for entry in _staging.values()):
        return False
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # its owner is between mkdtemp and taking the lock, or it is not ours
        return _age(folder) > STAGING_GRACE_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: fall back to age
        return _age(folder) > STAGING_GRACE_SECONDS
    finally:
        os.close(fd)  # the caller removes the folder at once; a new owner never reuses a folder name
    return True


@contextmanager
def download_folder() -> Iterator[Path]:
    """A fresh 0700 folder under the temp dir, locked while in use and removed after, whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX))
    fd = os.open(folder / LOCK_NAME, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep_downloads(root: Path | None = None) -> int:
    """At worker start: remove download folders a killed worker left (their lock is free); returns how many."""
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(DOWNLOAD_PREFIX + "*"):
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def sweep_partial_uploads(settings: Any) -> None:
    """At API start-up: drop what a killed process left half-received in the staging area."""
    removed = blob_store(settings).sweep_staging()
    if removed:
        log.info("removed %d partial upload(s) left by stopped processes", removed)


def blob_store(settings: Any) -> BlobStore:
    """The configured blob store: S3-compatible when GRADHEALTH_BLOB_URL is s3://..., else local disk."""
    if settings.blob_url:
        from .blobs_s3 import S3BlobStore  # boto3 is the optional `s3` extra

        return S3BlobStore.cached(settings.blob_url, settings.resolved_blob_dir, settings.max_upload_bytes)
    return LocalBlobStore(settings.resolved_blob_dir, settings.max_upload_bytes)
