"""The repository against a real MinIO: layout, streaming multipart uploads, checksums, manifest rules."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import pytest
import zstandard

from ragvault.repository import (
    MiB,
    BackupRepository,
    ItemResult,
    RepositoryError,
    check_date,
)


def get(s3_client, bucket, key) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_layout_rules():
    assert BackupRepository.artifact_key("2025-09-22", "qdrant", "snapshots/docs.snapshot") == \
        "2025-09-22/qdrant/snapshots/docs.snapshot"
    assert BackupRepository.artifact_key("2025-09-22", "qdrant", "export/docs.jsonl", "zstd") == \
        "2025-09-22/qdrant/export/docs.jsonl.zst"
    assert BackupRepository.manifest_key("2025-09-22") == "2025-09-22/manifest.json"
    for bad in ("../x", "a/../b", "", "a//b"):
        with pytest.raises(ValueError, match="clean relative path"):
            BackupRepository.artifact_key("2025-09-22", "qdrant", bad)
    for bad in ("2025-9-22", "2025-02-30", "latest", "2025-09-22/x"):
        with pytest.raises(ValueError, match="backup date"):
            check_date(bad)


@pytest.mark.parametrize("compression", [None, "zstd", "gzip"])
def test_multipart_stream_round_trip(s3_client, bucket, backup_date, compression):
    """A 13 MiB stream in 5 MiB parts: several parts, bytes and checksums exact, original recoverable."""
    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    payload = os.urandom(3 * MiB) + b"ragvault " * (10 * MiB // 9)  # random and compressible halves
    chunks = [payload[i:i + 777_777] for i in range(0, len(payload), 777_777)]
    artifact = repo.put_artifact(backup_date, "test", "blob.bin", chunks, compression=compression)

    stored = get(s3_client, bucket, artifact.key)
    assert artifact.size == len(stored)
    assert artifact.sha256 == hashlib.sha256(stored).hexdigest()
    assert artifact.raw_size == len(payload)
    assert artifact.raw_sha256 == hashlib.sha256(payload).hexdigest()
    original = {None: lambda b: b, "gzip": gzip.decompress,
                "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}[compression](stored)
    assert original == payload
    assert b"".join(repo.iter_artifact(artifact)) == payload
    if compression is None:  # incompressible enough to need several parts
        assert len(stored) > 2 * 5 * MiB


def test_failed_stream_leaves_nothing(s3_client, bucket, backup_date):
    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)

    def broken():
        yield os.urandom(6 * MiB)  # one part is already uploaded when the source fails
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        repo.put_artifact(backup_date, "test", "broken.bin", broken())
    key = f"{backup_date}/test/broken.bin"
    assert repo.head(key) is None
    uploads = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert uploads == []


def test_manifest_is_written_last_and_checked(s3_client, bucket, backup_date):
    repo = BackupRepository(s3_client, bucket)
    a = repo.put_artifact(backup_date, "alpha", "one.json", b'{"a": 1}')
    b = repo.put_artifact(backup_date, "beta", "two.bin", b"x" * 1000, compression="zstd")
    results = [
        ItemResult("alpha", "all", "2025-01-01T00:00:00Z", "1.0", {"things": 1}, [a]),
        ItemResult("beta", "b1", "2025-01-01T00:00:01Z", "2.0", {"things": 2}, [b]),
    ]
    manifest = repo.build_manifest(backup_date, results, {"run_id": "r1"})
    assert repo.read_manifest(backup_date) is None
    assert backup_date not in repo.complete_dates()

    repo.commit_manifest(manifest)
    stored = json.loads(get(s3_client, bucket, f"{backup_date}/manifest.json"))
    assert stored == repo.read_manifest(backup_date)
    assert backup_date in repo.complete_dates()
    by_key = {x["key"]: x for x in stored["artifacts"]}
    for artifact in (a, b):
        body = get(s3_client, bucket, artifact.key)
        assert by_key[artifact.key]["size"] == len(body)
        assert by_key[artifact.key]["sha256"] == hashlib.sha256(body).hexdigest()
    assert stored["components"]["beta"]["counts"] == {"things": 2}
    assert stored["run"] == {"run_id": "r1"}

    # An artifact that vanished (or changed size) blocks the manifest.
    s3_client.delete_object(Bucket=bucket, Key=b.key)
    assert repo.discard_manifest(backup_date)
    with pytest.raises(RepositoryError, match=f"{b.key}: missing"):
        repo.commit_manifest(manifest)
    assert repo.read_manifest(backup_date) is None


def test_two_items_writing_one_key_is_refused(s3_client, bucket, backup_date):
    repo = BackupRepository(s3_client, bucket)
    a = repo.put_artifact(backup_date, "alpha", "same.json", b"{}")
    results = [ItemResult("alpha", "x", "t", None, {}, [a]), ItemResult("alpha", "y", "t", None, {}, [a])]
    with pytest.raises(RepositoryError, match="same object"):
        repo.build_manifest(backup_date, results, {})


def test_missing_bucket_is_named(s3_client):
    repo = BackupRepository(s3_client, "ragvault-no-such-bucket")
    with pytest.raises(RepositoryError, match="ragvault-no-such-bucket"):
        repo.check_bucket()
