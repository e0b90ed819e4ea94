"""A real S3-compatible server for the tests: moto's standalone `moto_server`, with IAM auth switched on."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .procs import free_port

REGION = "us-east-1"
# moto checks signatures once this many requests have passed unauthenticated: the three IAM calls
# below make the test user, so every S3 request after them needs that user's real key.
UNAUTHENTICATED_SETUP_CALLS = 3


@dataclass
class S3Server:
    """A running moto_server and the key of a user allowed s3:* (wrong keys are refused)."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, secret_key: str | None = None, access_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (pass another key to act as an intruder)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    @staticmethod
    def client_for(env: dict[str, str]) -> Any:
        """A boto3 S3 client from a process environment's AWS_* variables."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env.get("AWS_REGION", REGION),
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self, prefix: str = "gh") -> str:
        """A fresh bucket, so tests and stacks never see each other's objects."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, blob_url: str, **overrides: str) -> dict[str, str]:
        """The variables a gradhealth process needs to use this server."""
        values = {
            "GRADHEALTH_BLOB_URL": blob_url,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }
        values.update(overrides)
        return values


def start_s3_server(log_dir: Path) -> S3Server:
    """`moto_server -H 127.0.0.1 -p PORT` as a process; then a user and key made through its IAM API."""
    try:
        import boto3
    except ImportError:
        pytest.fail("boto3/moto are missing: pip install -e '.[dev]' (the dev extra has s3 and moto[server])")
    script = Path(sys.executable).with_name("moto_server")
    if not script.exists():
        pytest.fail(f"{script} is missing: pip install 'moto[server]' (the dev extra has it)")
    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_SETUP_CALLS), "PATH": "/usr/bin:/bin"}
    with open(log_dir / "moto_server.log", "ab") as log:
        proc = subprocess.Popen(
            [str(script), "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited ({proc.returncode}); see {log_dir / 'moto_server.log'}")
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1.0)
            break
        except httpx.HTTPError:
            try:
                proc.wait(0.1)  # not up yet: wait a moment, or notice at once that it exited
            except subprocess.TimeoutExpired:
                pass
    else:
        proc.kill()
        pytest.fail(f"moto_server did not answer on {endpoint}; see {log_dir / 'moto_server.log'}")
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam.create_user(UserName="gradhealth")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="gradhealth", PolicyName="blobs", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="gradhealth")["AccessKey"]
    return S3Server(proc, endpoint, key["AccessKeyId"], key["SecretAccessKey"])


def stop_s3_server(server: S3Server) -> None:
    """Terminate moto_server (kill if it lingers)."""
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)
