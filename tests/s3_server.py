"""A private S3 server for the storage tests: moto's standalone server (``moto.server``,
what ``moto_server`` runs) as a process of its own on a free loopback port, reached over
HTTP by the same boto3 code that talks to AWS, MinIO or R2 in production. It keeps its
objects in memory: a kill loses them, a pause (SIGSTOP) does not.

``aws_test_credentials`` gives the test process static credentials and cuts it off from
every other source of them (the user's ~/.aws, instance metadata), so nothing reaches AWS.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import httpx
import pytest

from tests.conftest import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "fluxgate-test",
    "AWS_SECRET_ACCESS_KEY": "fluxgate-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/fluxgate-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/fluxgate-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_OTHER_SOURCES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


@contextlib.contextmanager
def aws_test_credentials() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_OTHER_SOURCES:
            patch.delenv(name, raising=False)
        for name, value in AWS_TEST_ENV.items():
            patch.setenv(name, value)
        yield


class S3Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        """Start it and wait until it answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=2)
                return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "moto's S3 server exited"
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("moto's S3 server did not start")
            time.sleep(0.1)

    def client(self) -> S3Client:
        """A plain boto3 client to look at the bucket behind the storage's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def pause(self) -> None:
        """SIGSTOP: the store stalls; the kernel still accepts connections, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9: connections refused from now on, every object lost."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.kill()
