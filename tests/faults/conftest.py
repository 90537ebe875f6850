"""Fault injection against real servers: a MinIO of the tests' own (so killing it harms nothing else), worker
processes killed with SIGKILL, and the shared local services for everything that is not killed.

Every process started here is killed at the end of its test, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devstack.airflow_local import free_port

MINIO_USER, MINIO_PASSWORD = "ragvault-faults", "ragvault-faults-secret"
READY_TIMEOUT = 60


def minio_binary() -> Path:
    path = Path(os.environ.get("RAGVAULT_BIN_DIR", Path.home() / ".cache" / "ragvault" / "bin")) / "minio"
    if not path.exists():
        pytest.skip(f"{path} does not exist: run `make services` (it builds MinIO) first")
    return path


class PrivateMinio:
    """A MinIO server on a free loopback port with its own data dir, that a test may kill and restart."""

    user, password = MINIO_USER, MINIO_PASSWORD

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = data_dir.parent / "minio.log"

    def start(self) -> None:
        env = {**os.environ, "MINIO_ROOT_USER": MINIO_USER, "MINIO_ROOT_PASSWORD": MINIO_PASSWORD,
               "MINIO_UPDATE": "off"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(minio_binary()), "server", str(self.data_dir), "--quiet", "--address", f"127.0.0.1:{self.port}",
                 "--console-address", f"127.0.0.1:{free_port()}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.endpoint}/minio/health/ready", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"minio exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"minio did not answer within {READY_TIMEOUT} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, as when its machine or container dies."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def connection(self) -> str:
        """The AIRFLOW_CONN_MINIO_S3 value for this server."""
        return json.dumps({"conn_type": "aws", "login": MINIO_USER, "password": MINIO_PASSWORD,
                           "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1",
                                     "config_kwargs": {"connect_timeout": 2, "read_timeout": 20,
                                                       "retries": {"max_attempts": 2}}}})

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=MINIO_USER,
                            aws_secret_access_key=MINIO_PASSWORD, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=20, retries={"max_attempts": 2}))


@pytest.fixture
def private_minio(tmp_path) -> Iterator[PrivateMinio]:
    server = PrivateMinio(tmp_path / "minio-data")
    server.data_dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def private_bucket(private_minio) -> str:
    name = f"ragvault-faults-{uuid.uuid4().hex[:8]}"
    private_minio.client().create_bucket(Bucket=name)
    return name
