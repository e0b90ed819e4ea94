"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, moto), through boto3.

Uploads are received and validated on the API's local disk first (the archive and safetensors
checks read the file), then streamed to the bucket by s3transfer: multipart above 16 MiB, memory
bounded by part size x concurrency, each part checksummed (SHA-256) by the server. Objects are
content addressed, `<prefix>/<sha[:2]>/<sha>`, exactly as on local disk. Workers download with
one streaming GET per blob into a private temp folder, hashing as they write, and refuse bytes
whose sha256 is not their key. Endpoint and credentials come from the usual AWS variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, or a role).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from .blobs import BlobMissing, BlobStoreUnavailable, StagedBlob, StagingArea, check_key, download_folder

PART_BYTES = 16 * 2**20  # multipart threshold and part size: 16 MiB x 4 threads in flight at most
CONCURRENCY = 4
READ_CHUNK = 1 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9._=+-]+")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket[/prefix]; ValueError says what is wrong with anything else."""
    if not url.startswith("s3://"):
        raise ValueError(
            f"GRADHEALTH_BLOB_URL must look like s3://bucket/prefix (or be empty for local disk), got {url!r}"
        )
    rest = url[len("s3://") :]
    if any(c in rest for c in "?#@\\") or any(ord(c) < 33 for c in rest):
        raise ValueError(
            "GRADHEALTH_BLOB_URL takes only s3://bucket/prefix: no credentials, query, fragment, backslash "
            "or spaces (credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
    segments = prefix.strip("/").split("/") if prefix.strip("/") else []
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"the prefix of GRADHEALTH_BLOB_URL has a bad segment {segment!r}: use letters, digits and . _ = + - "
                "between single slashes, never '.' or '..'"
            )
    return bucket, "/".join(segments)


def _describe(exc: Exception, what: str) -> BlobStoreUnavailable:
    """Turn a boto error into one line an operator can act on."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return BlobStoreUnavailable(
            f"blob storage: no credentials while {what}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a role)"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "error"))
        hint = {
            "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
            "AccessDenied": "the credentials may not use this bucket/prefix",
            "403": "wrong AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or they may not use this bucket/prefix",
            "NoSuchBucket": "create the bucket or fix GRADHEALTH_BLOB_URL",
        }.get(code, "check GRADHEALTH_BLOB_URL and the AWS_* settings")
        return BlobStoreUnavailable(f"blob storage refused {what}: {code} ({hint})")
    return BlobStoreUnavailable(
        f"blob storage unreachable while {what}: {type(exc).__name__}: {exc} (check AWS_ENDPOINT_URL)"
    )


class S3BlobStore(StagingArea):
    """Content-addressed blobs in one bucket under a prefix; staging stays on the local disk."""

    def __init__(self, url: str, staging_root: Path, max_bytes: int, client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        super().__init__(Path(staging_root) / "tmp", max_bytes)
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        config = Config(
            region_name=region,
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # A custom endpoint (MinIO, moto, Ceph) is usually an address, not a bucket DNS zone.
            s3={"addressing_style": "path" if os.environ.get("AWS_ENDPOINT_URL") else "auto"},
        )
        self.client: Any = client or boto3.session.Session().client("s3", config=config)
        self._transfer = TransferConfig(
            multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=CONCURRENCY
        )

    @classmethod
    def cached(cls, url: str, staging_root: Path, max_bytes: int) -> S3BlobStore:
        """One client per process and configuration: creating a boto3 client costs tens of milliseconds."""
        return _cached(cls, url, Path(staging_root), max_bytes, os.getpid())

    def object_key(self, key: str) -> str:
        """Where a blob lives in the bucket; the key is checked, so it can name nothing else."""
        check_key(key)
        return f"{self.prefix}/{key[:2]}/{key}" if self.prefix else f"{key[:2]}/{key}"

    def commit(self, staged: StagedBlob) -> str:
        """Stream the validated file to the bucket (multipart when large) unless the same bytes are there."""
        try:
            staged.close()
            key = staged.sha256
            if not self.exists(key):
                extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": key}}
                try:
                    self.client.upload_file(
                        str(staged.path), self.bucket, self.object_key(key), ExtraArgs=extra, Config=self._transfer
                    )
                except Exception as exc:
                    raise _describe(exc, f"the upload of {key}") from None
            return key
        finally:
            staged.path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        """A HEAD on the object: False when absent, BlobStoreUnavailable when storage cannot answer."""
        from botocore.exceptions import ClientError

        name = self.object_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return False
            raise _describe(exc, f"a check of {key}") from None
        except Exception as exc:
            raise _describe(exc, f"a check of {key}") from None
        return True

    def download(self, key: str, dest: Path) -> None:
        """One streaming GET into dest, hashing as it writes; bytes that are not `key` are refused."""
        from botocore.exceptions import ClientError

        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            with open(dest, "xb") as out:
                for chunk in body.iter_chunks(READ_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                raise BlobMissing(f"blob {key} is missing from {self.url}") from None
            raise _describe(exc, f"the download of {key}") from None
        except OSError:
            raise
        except Exception as exc:
            raise _describe(exc, f"the download of {key}") from None
        if digest.hexdigest() != key:
            dest.unlink(missing_ok=True)
            raise BlobMissing(f"blob {key} in {self.url} was altered: its bytes hash to {digest.hexdigest()}")

    @contextmanager
    def local_copies(self, keys: Sequence[str]) -> Iterator[list[Path]]:
        """Download into a private (0700, locked) temp folder, removed when the block ends, whatever happens."""
        with download_folder() as folder:
            paths = []
            for index, key in enumerate(keys):
                path = folder / f"{index}-{check_key(key)}"
                self.download(key, path)
                paths.append(path)
            yield paths

    def delete(self, key: str) -> bool:
        """Remove the object; True when it was there (S3's DELETE itself does not say)."""
        if not self.exists(key):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise _describe(exc, f"the deletion of {key}") from None
        return True


@lru_cache(maxsize=8)
def _cached(cls: type[S3BlobStore], url: str, staging_root: Path, max_bytes: int, pid: int) -> S3BlobStore:
    return cls(url, staging_root, max_bytes)
