"""Both blob backends keep the same contract; S3 refuses hostile names, altered bytes and bad keys clearly."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradhealth.store.blobs import BlobMissing, BlobStore, BlobStoreUnavailable, BlobTooLarge, LocalBlobStore, check_key
from gradhealth.store.blobs_s3 import S3BlobStore, parse_s3_url
from gradhealth.store.settings import Settings
from pydantic import ValidationError

from .s3server import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs", max_bytes=64)
        return
    server: S3Server = request.getfixturevalue("s3_server")
    url = f"s3://{server.new_bucket()}/team/blobs"
    yield S3BlobStore(url, tmp_path / "staging", max_bytes=64, client=server.client())


def put(store: BlobStore, data: bytes) -> str:
    staged = store.stage()
    staged.write(data)
    return store.commit(staged)


def test_content_addressed_deduplicated_limited_and_deletable(store: BlobStore) -> None:
    key = put(store, b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest()
    assert put(store, b"hello") == key and store.exists(key)
    with store.local_copies([key, key]) as paths:
        assert [p.read_bytes() for p in paths] == [b"hello", b"hello"]
    big = store.stage()
    with pytest.raises(BlobTooLarge):
        big.write(b"x" * 65)  # refused while receiving, before anything is published
    store.discard(big)
    assert not big.path.exists()
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(BlobMissing, match=missing), store.local_copies([key, missing]):
        pass
    assert store.delete(key) is True and not store.exists(key)
    assert store.delete(key) is False


def test_s3_objects_live_under_the_prefix_and_downloads_are_cleaned_up(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = S3BlobStore(f"s3://{bucket}/a/b", tmp_path, 1 << 20, client=s3_server.client())
    key = put(store, b"weights")
    names = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == [f"a/b/{key[:2]}/{key}"]
    assert list((tmp_path / "tmp").rglob("upload-*")) == []  # the staged file went with the commit
    with store.local_copies([key]) as (path,):
        folder = path.parent
        assert oct(folder.stat().st_mode & 0o777) == "0o700"  # private to the worker's user
    assert not folder.exists()


def test_s3_large_upload_goes_in_parts_and_round_trips(s3_server: S3Server, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    bucket = s3_server.new_bucket()
    store = S3BlobStore(f"s3://{bucket}", tmp_path, 32 << 20, client=s3_server.client())
    store._transfer = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)  # S3's minimum part
    data = os.urandom(11 << 20)
    key = put(store, data)
    etag = s3_server.client().head_object(Bucket=bucket, Key=store.object_key(key))["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # a multipart upload of three parts
    with store.local_copies([key]) as (path,):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == key


def test_s3_object_altered_in_the_bucket_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    store = S3BlobStore(f"s3://{bucket}/p", tmp_path, 1 << 20, client=s3_server.client())
    key = put(store, b"original")
    s3_server.client().put_object(Bucket=bucket, Key=store.object_key(key), Body=b"tampered")
    with pytest.raises(BlobMissing, match="altered"), store.local_copies([key]) as paths:
        pytest.fail(f"tampered bytes were handed out: {paths}")


def test_s3_bad_credentials_are_clear_and_lose_nothing(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    url = f"s3://{bucket}/p"
    good = S3BlobStore(url, tmp_path / "good", 1 << 20, client=s3_server.client())
    key = put(good, b"kept")
    wrong_secret = S3BlobStore(url, tmp_path / "bad", 1 << 20, client=s3_server.client(secret_key="wrong"))
    unknown_key = S3BlobStore(url, tmp_path / "bad", 1 << 20, client=s3_server.client(access_key="AKIANOBODY"))
    with pytest.raises(BlobStoreUnavailable, match="refused a check.*AWS_SECRET_ACCESS_KEY"):
        wrong_secret.exists(key)
    with pytest.raises(BlobStoreUnavailable, match="InvalidAccessKeyId"), unknown_key.local_copies([key]):
        pass
    staged = unknown_key.stage()
    staged.write(b"new bytes")
    with pytest.raises(BlobStoreUnavailable, match="AWS_ACCESS_KEY_ID"):
        unknown_key.commit(staged)
    assert not staged.path.exists()  # the refused upload left no staged file behind
    with pytest.raises(BlobStoreUnavailable):
        wrong_secret.delete(key)
    with good.local_copies([key]) as (path,):  # still there, intact
        assert path.read_bytes() == b"kept"
    assert not good.exists(hashlib.sha256(b"new bytes").hexdigest())


def test_s3_unreachable_endpoint_is_a_storage_error(tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    store = S3BlobStore("s3://some-bucket", tmp_path, 1 << 20, client=client)
    with pytest.raises(BlobStoreUnavailable, match="unreachable.*AWS_ENDPOINT_URL"):
        store.exists("a" * 64)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://bucket/../other-bucket", "'..'"),
        ("s3://bucket/./x", "'.'"),
        ("s3://bucket/a//b", "bad segment ''"),
        ("s3://other-bucket\\..\\x", "backslash"),
        ("s3://key:secret@bucket/p", "no credentials"),
        ("s3://bucket/p?versionId=1", "query"),
        ("s3://Bad_Bucket/p", "not a valid S3 bucket name"),
        ("s3://a..b/p", "not a valid S3 bucket name"),
        ("file:///etc", "must look like s3://"),
        ("s3://bucket/p q", "spaces"),
    ],
)
def test_hostile_blob_urls_are_refused_at_start_up(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        parse_s3_url(url)
    with pytest.raises(ValidationError):
        Settings(blob_url=url)


def test_blob_url_prefix_is_normalised() -> None:
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/team/blobs/") == ("my-bucket", "team/blobs")


@pytest.mark.parametrize("key", ["../" * 3 + "etc/passwd", "A" * 64, "other-bucket/" + "a" * 51, "a" * 63, ""])
def test_keys_that_are_not_a_sha256_name_nothing(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sha256 blob key"):
        check_key(key)
    with pytest.raises(ValueError, match="not a sha256 blob key"):
        LocalBlobStore(tmp_path, 10).exists(key)


def test_download_folders_of_killed_workers_are_swept_and_live_ones_kept(s3_server: S3Server, tmp_path: Path) -> None:
    import tempfile

    from gradhealth.store.blobs import DOWNLOAD_PREFIX, sweep_downloads

    store = S3BlobStore(f"s3://{s3_server.new_bucket()}", tmp_path / "s", 1 << 20, client=s3_server.client())
    key = put(store, b"input")
    left = tmp_path / f"{DOWNLOAD_PREFIX}killed"  # what a SIGKILLed worker leaves: its lock died with it
    left.mkdir()
    (left / ".owner.lock").touch()
    (left / f"0-{key}").write_bytes(b"input")
    old_tmp, tempfile.tempdir = tempfile.tempdir, str(tmp_path)
    try:
        with store.local_copies([key]) as (path,):
            assert path.parent.parent == tmp_path
            assert sweep_downloads(tmp_path) == 1  # the killed one, not the one in use
            assert path.read_bytes() == b"input" and not left.exists()
    finally:
        tempfile.tempdir = old_tmp
    assert list(tmp_path.glob(DOWNLOAD_PREFIX + "*")) == []


def queued_analysis(settings: Settings, model: bytes, batch: bytes) -> tuple[str, list[str]]:
    """Rows and blobs as the API leaves them after two uploads and POST /v1/analyses; returns (id, [shas])."""
    from gradhealth.store import keys
    from gradhealth.store.blobs import blob_store
    from gradhealth.store.db import session_scope
    from gradhealth.store.models import Analysis, Batch, ModelPackage

    shas = [put(blob_store(settings), data) for data in (model, batch)]
    with session_scope(settings) as session:
        project = keys.create_project(session, f"p-{shas[0][:8]}")
        m = ModelPackage(project_id=project.id, sha256=shas[0], size_bytes=1, format="torch.export")
        b = Batch(project_id=project.id, sha256=shas[1], size_bytes=1, shapes="{}")
        session.add_all([m, b])
        session.flush()
        row = Analysis(project_id=project.id, model_id=m.id, batch_id=b.id, options="{}")
        session.add(row)
        session.flush()
        return row.id, shas


def test_worker_fails_clearly_when_an_input_is_gone_or_storage_refuses(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradhealth.store.blobs import blob_store
    from gradhealth.store.db import migrate, session_scope
    from gradhealth.store.models import Analysis
    from gradhealth.workers.runner import execute_analysis

    for name, value in s3_server.env("").items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    settings = Settings(data_dir=tmp_path, blob_url=f"s3://{bucket}/ok", max_attempts=1)
    migrate(settings)
    gone, shas = queued_analysis(settings, b"model bytes", b"batch bytes")
    assert blob_store(settings).delete(shas[1])  # deleted after the analysis was queued
    assert execute_analysis(settings, gone, "w@test") == "failed"
    refused, _ = queued_analysis(settings, b"other model", b"other batch")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    wrong = settings.model_copy(update={"blob_url": f"s3://{bucket}/ok/"})  # another URL: a fresh client
    assert execute_analysis(wrong, refused, "w@test") == "failed"
    with session_scope(settings) as session:
        missing, denied = session.get(Analysis, gone), session.get(Analysis, refused)
        assert missing is not None and denied is not None
        assert missing.error_code == "blob_missing" and shas[1] in (missing.error_message or "")
        assert denied.error_code == "storage_unavailable" and "AWS_SECRET_ACCESS_KEY" in (denied.error_message or "")
