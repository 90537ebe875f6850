"""The repository against a real MinIO: layout, streaming multipart uploads, checksums, manifest rules."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
import time

import pytest
import zstandard

from ragvault.repository import (
    UPLOADS_PREFIX,
    BackupRepository,
    ItemResult,
    MiB,
    RepositoryError,
    _PartBody,
    check_date,
    payload_signed,
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


class CountingClient:
    """The real S3 client, counting the parts in flight at once; part ``fail_part`` fails (when given)."""

    def __init__(self, client, fail_part: int | None = None):
        self._client, self._fail_part = client, fail_part
        self._lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.part_numbers: list[int] = []

    def upload_part(self, **kwargs):
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.part_numbers.append(kwargs["PartNumber"])
        try:
            time.sleep(0.05)  # long enough for the next parts to be handed over meanwhile
            if kwargs["PartNumber"] == self._fail_part:
                raise ConnectionError(f"part {self._fail_part} lost")
            return self._client.upload_part(**kwargs)
        finally:
            with self._lock:
                self.in_flight -= 1

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_parts_go_out_several_at_a_time_and_land_in_order(s3_client, bucket, backup_date):
    """Up to ``concurrency`` parts in flight, never more; the object is the exact bytes, whatever order the parts
    finished in; the original's checksum is the stored one when nothing transforms the bytes."""
    client = CountingClient(s3_client)
    repo = BackupRepository(client, bucket, part_size=5 * MiB, concurrency=3)
    payload = os.urandom(41 * MiB)
    chunks = (payload[i:i + 1_000_003] for i in range(0, len(payload), 1_000_003))
    artifact = repo.put_artifact(backup_date, "test", "parallel.bin", chunks)
    assert get(s3_client, bucket, artifact.key) == payload
    assert artifact.sha256 == artifact.raw_sha256 == hashlib.sha256(payload).hexdigest()
    assert sorted(client.part_numbers) == list(range(1, 10))  # 8 full parts of 5 MiB and the 1 MiB rest
    assert client.most_in_flight == 3


def test_a_failed_part_aborts_the_upload_and_leaves_nothing(s3_client, bucket, backup_date):
    client = CountingClient(s3_client, fail_part=3)
    repo = BackupRepository(client, bucket, part_size=5 * MiB, concurrency=4)
    payload = os.urandom(40 * MiB)
    with pytest.raises(ConnectionError, match="part 3 lost"):
        repo.put_artifact(backup_date, "test", "lost-part.bin",
                          [payload[i:i + MiB] for i in range(0, len(payload), MiB)])
    key = f"{backup_date}/test/lost-part.bin"
    assert repo.head(key) is None
    assert s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
    assert client.in_flight == 0  # every part sent before the abort had finished


@pytest.mark.parametrize("fail_part", [8, 9])
def test_a_last_part_failing_at_completion_leaves_nothing(s3_client, bucket, backup_date, fail_part):
    """The parts still in flight when the stream ends (8) and the rest sent by the completion (9) fail inside
    ``close()``: the upload is aborted there too, and its note removed."""
    client = CountingClient(s3_client, fail_part=fail_part)
    repo = BackupRepository(client, bucket, part_size=5 * MiB, concurrency=4)
    key = f"{backup_date}/test/last-part-{fail_part}.bin"
    with pytest.raises(ConnectionError, match=f"part {fail_part} lost"):
        repo.put_artifact(backup_date, "test", key.rsplit("/", 1)[1], [os.urandom(41 * MiB)])
    assert repo.head(key) is None
    assert s3_client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
    notes = [json.loads(get(s3_client, bucket, o["Key"])) for o in repo.list_keys(UPLOADS_PREFIX)]
    assert key not in [note["key"] for note in notes]


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
    s3_client.delete_object(Bucket=bucket, Key=repo.manifest_key(backup_date))
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


def test_encrypted_artifact_round_trip_and_tamper_detection(s3_client, bucket, backup_date):
    from ragvault.crypto import Cipher, EncryptionError

    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    secret = b"OPENAI_API_KEY=sk-test-0123456789\n" * 10_000 + os.urandom(200_000)  # several segments
    cipher = Cipher(os.urandom(32))
    artifact = repo.put_artifact(backup_date, "infra", ".env", [secret[:70_000], secret[70_000:]],
                                 compression="zstd", cipher=cipher)
    stored = get(s3_client, bucket, artifact.key)
    assert b"sk-test" not in stored and b"OPENAI" not in stored
    assert artifact.encryption == "ragvault-aes256gcm-stream/v1"
    assert artifact.key_fingerprint == cipher.key_fingerprint
    assert hashlib.sha256(stored).hexdigest() == artifact.sha256
    assert artifact.raw_sha256 is None  # no hash of the plaintext: it would let guesses of a secret be tested
    assert b"".join(repo.iter_artifact(artifact, cipher=cipher)) == secret

    with pytest.raises(RepositoryError, match="a key is needed"):
        b"".join(repo.iter_artifact(artifact))
    other = Cipher(os.urandom(32))
    with pytest.raises(RepositoryError, match=f"fingerprint {cipher.key_fingerprint}, but the configured backup "
                                              rf"key\(s\) have fingerprint\(s\) {other.key_fingerprint}: add the "
                                              "key the backup was made with"):
        b"".join(repo.iter_artifact(artifact, cipher=other))
    # verification names the wrong key too, instead of "does not decrypt"
    [problem] = repo.verify_artifact(artifact.to_dict(), other)
    assert f"fingerprint {artifact.key_fingerprint}" in problem and "add the key" in problem, problem
    assert repo.verify_artifact(artifact.to_dict(), cipher) == []

    # a flipped byte, a dropped tail: both refused
    for broken in (stored[:100] + bytes([stored[100] ^ 1]) + stored[101:], stored[:-1000]):
        s3_client.put_object(Bucket=bucket, Key=artifact.key, Body=broken)
        with pytest.raises(EncryptionError, match="does not decrypt"):
            b"".join(repo.iter_artifact(artifact, cipher=cipher))


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 64 * 1024 + 1, 3 * 64 * 1024])
def test_cipher_segment_boundaries(size):
    from ragvault.crypto import Cipher

    cipher = Cipher(os.urandom(32))
    data = os.urandom(size)
    enc = cipher.encryptor()
    sealed = b"".join(enc.update(data[i:i + 1000]) for i in range(0, size, 1000)) + enc.finalize()
    dec = cipher.decryptor()
    opened = b"".join(dec.update(sealed[i:i + 777]) for i in range(0, len(sealed), 777)) + dec.finalize()
    assert opened == data


def test_keys_are_parsed_and_never_shown():
    import base64

    from ragvault.crypto import Cipher, EncryptionError, parse_key

    key = os.urandom(32)
    assert parse_key(base64.b64encode(key).decode()) == key == parse_key(key.hex())
    with pytest.raises(EncryptionError, match="32-byte key"):
        parse_key("c2hvcnQ=")
    assert base64.b64encode(key).decode() not in repr(Cipher(key)) and key.hex() not in repr(Cipher(key))


def test_check_bucket_names_the_real_cause(s3_client, bucket):
    """Refused credentials, a missing bucket and an unreachable server each say so, with the connection."""
    import boto3
    from botocore.config import Config

    endpoint = s3_client.meta.endpoint_url
    wrong = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="ragvault", aws_secret_access_key="wrong",
                         region_name="us-east-1")
    with pytest.raises(RepositoryError, match=r"refused access to bucket .* \(HTTP 403\) \(connection minio_s3\): "
                                              r"the access key or secret is wrong"):
        BackupRepository(wrong, bucket, conn_id="minio_s3").check_bucket()
    with pytest.raises(RepositoryError, match="bucket 'ragvault-no-such-bucket' does not exist"):
        BackupRepository(s3_client, "ragvault-no-such-bucket").check_bucket()
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nobody = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="a",
                          aws_secret_access_key="b", region_name="us-east-1",
                          config=Config(connect_timeout=1, retries={"max_attempts": 1}))
    with pytest.raises(RepositoryError, match=rf"http://127.0.0.1:{port} \(connection minio_s3\) is not reachable"):
        BackupRepository(nobody, bucket, conn_id="minio_s3").check_bucket()
    BackupRepository(s3_client, bucket).check_bucket()  # and the right one passes


def test_prefetched_keeps_order_raises_the_producers_error_and_stops_with_the_consumer():
    from ragvault.repository import prefetched

    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))

    def failing():
        yield 1
        raise ValueError("cursor lost")

    with pytest.raises(ValueError, match="cursor lost"):
        list(prefetched(failing()))

    produced = []

    def endless():
        for number in range(10**9):
            produced.append(number)
            yield number

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # the consumer stops: the producer stops too, a few items ahead at most
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count <= 5 + 2 + 2


def test_small_writes_are_gathered_without_changing_the_bytes(s3_client, bucket, backup_date):
    """Documents written one by one (a few hundred bytes each) come out as the same stream, checksums exact."""
    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    pieces = [os.urandom(int.from_bytes(os.urandom(2), "big") % 700 + 1) for _ in range(30_000)]
    payload = b"".join(pieces)
    for compression in (None, "gzip"):
        with repo.open_artifact(backup_date, "test", f"small-{compression}.bin", compression=compression) as writer:
            for piece in pieces:
                writer.write(piece)
        artifact = writer.artifact
        assert b"".join(repo.iter_artifact(artifact)) == payload
        assert artifact.raw_size == len(payload) and artifact.raw_sha256 == hashlib.sha256(payload).hexdigest()


def test_bounded_map_keeps_order_bounds_what_is_in_flight_and_stops_at_the_first_failure():
    from ragvault.repository import batched, bounded_map

    assert list(batched(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    running, peak, drawn, lock = [0], [0], [], threading.Lock()

    def slow_square(n):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01 * (n % 3))  # later items often finish first: the order is still the items'
        with lock:
            running[0] -= 1
        return n * n

    def source():
        for n in range(40):
            drawn.append(n)
            yield n

    results = bounded_map(slow_square, source(), 4)
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    assert len(drawn) <= 3 + 4  # drawn lazily: the ones handed back, and at most 4 in flight
    assert list(results) == [n * n for n in range(3, 40)]
    assert peak[0] == 4

    started = []

    def fail_on_five(n):
        started.append(n)
        if n == 5:
            raise ValueError("item 5 refused")
        time.sleep(0.02)
        return n

    with pytest.raises(ValueError, match="item 5 refused"):
        list(bounded_map(fail_on_five, range(1000), 3))
    assert max(started) < 5 + 3 + 1  # nothing far beyond the failure was started
    assert list(bounded_map(lambda n: n + 1, range(5), 1)) == [1, 2, 3, 4, 5]


def test_put_files_uploads_many_files_at_once_each_exact(s3_client, bucket, backup_date, tmp_path):
    """Files of a tree (one larger than a part) uploaded several at once: each artifact holds its file's bytes,
    the list comes back in the order given."""
    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB, concurrency=3)
    contents = {f"tree/{i:02d}.bin": os.urandom(1000 * i) for i in range(12)}
    contents["tree/big.bin"] = os.urandom(11 * MiB)
    files = []
    for path, data in contents.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_bytes(data)
        files.append((path, tmp_path / path))
    artifacts = repo.put_files(backup_date, "test", files, compression="zstd")
    assert [a.key for a in artifacts] == [f"{backup_date}/test/{path}.zst" for path, _ in files]
    for (path, _), artifact in zip(files, artifacts, strict=True):
        assert b"".join(repo.iter_artifact(artifact)) == contents[path]
        assert artifact.raw_sha256 == hashlib.sha256(contents[path]).hexdigest()

    (tmp_path / "tree/03.bin").unlink()  # a file gone: the error names it
    with pytest.raises(FileNotFoundError, match="03.bin"):
        repo.put_files(backup_date, "test2", files)


def test_a_rotated_keyring_reads_backups_of_its_retired_keys(s3_client, bucket, backup_date):
    """Key rotation: new artifacts use the keyring's first key; one written with a retired key is read (and
    verified) with that key while it stays in the list; a keyring without it names both fingerprints."""
    import base64

    from ragvault.crypto import Cipher, EncryptionError, parse_keyring

    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    old_key, new_key = os.urandom(32), os.urandom(32)
    body = b'{"prompt": "You are the archive assistant"}\n' * 5_000
    made_with_old = repo.put_artifact(backup_date, "gpt", "prompts/old.json", body, compression="zstd",
                                      cipher=parse_keyring(base64.b64encode(old_key).decode()))

    rotated = parse_keyring(f"{base64.b64encode(new_key).decode()}, {old_key.hex()}")  # newest first
    assert rotated.fingerprints == [Cipher(new_key).key_fingerprint, Cipher(old_key).key_fingerprint]
    made_with_new = repo.put_artifact(backup_date, "gpt", "prompts/new.json", body, compression="zstd",
                                      cipher=rotated)
    assert made_with_new.key_fingerprint == Cipher(new_key).key_fingerprint  # new backups: the newest key
    for artifact in (made_with_old, made_with_new):
        assert b"".join(repo.iter_artifact(artifact, cipher=rotated)) == body
        assert repo.verify_artifact(artifact.to_dict(), rotated) == []

    # the keyed digest of the content: equal under one key, different under another, never the bare SHA-256
    again = repo.put_artifact(backup_date, "gpt", "prompts/again.json", body, compression="zstd", cipher=rotated)
    assert again.content_mac == made_with_new.content_mac and again.sha256 != made_with_new.sha256
    assert made_with_old.content_mac != made_with_new.content_mac
    assert hashlib.sha256(body).hexdigest() not in (made_with_new.content_mac, made_with_new.raw_sha256)
    # a tampered digest in the manifest is a problem verify reports
    tampered = {**made_with_new.to_dict(), "content_mac": made_with_old.content_mac}
    [problem] = repo.verify_artifact(tampered, rotated)
    assert "decrypted content differs" in problem, problem

    only_new = parse_keyring(base64.b64encode(new_key).decode())
    with pytest.raises(RepositoryError, match=f"fingerprint {Cipher(old_key).key_fingerprint}, but the "
                                              rf"configured backup key\(s\) have fingerprint\(s\) "
                                              f"{only_new.key_fingerprint}"):
        b"".join(repo.iter_artifact(made_with_old, cipher=only_new))
    with pytest.raises(EncryptionError, match="key 2 of 2"):
        parse_keyring(f"{new_key.hex()},not-a-key")


def test_a_part_is_read_from_its_pieces_as_one_stream():
    """What botocore does with a part's body: reads it in blocks to sign it, seeks back, reads it again to send
    it (and once more after a retry); every way of reading gives the pieces' bytes, in order, exactly."""
    data = os.urandom(3 * MiB + 12345)
    cuts = [0, 1, 7, 300_000, 300_001, MiB, 2 * MiB + 17, len(data)]
    pieces = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    pieces[2] = memoryview(bytearray(pieces[2]))  # a piece split off a larger write is a view
    body = _PartBody(pieces)
    for block in (1000, 16384, MiB, 5 * MiB):
        body.seek(0)
        read, got = [], 0
        while chunk := body.read(block):
            assert len(chunk) == min(block, len(data) - got)  # never short before the end
            read.append(bytes(chunk))
            got += len(chunk)
        assert b"".join(read) == data and body.tell() == len(data)
        assert body.read(10) == b""
    assert body.seek(0, 2) == len(data) and body.seek(0) == 0  # how botocore measures the length
    assert bytes(body.read()) == data
    body.seek(MiB - 3)
    assert bytes(body.read(10)) == data[MiB - 3:MiB + 7]
    assert body.seek(-5, 2) == len(data) - 5 and bytes(body.read()) == data[-5:]
    with pytest.raises(ValueError, match="negative seek"):
        body.seek(-1)
    assert _PartBody([]).read() == b""


def test_over_plain_http_the_parts_are_signed_and_not_checksummed_twice(bucket, backup_date):
    """Over plain HTTP botocore signs each request's bytes (SigV4: their SHA-256 is in the signature, which the
    server checks); the repository's client then adds no CRC32 of the same bytes. A part altered on the way is
    refused by the server all the same, and nothing is left of the upload."""
    from botocore.config import Config

    assert payload_signed("http://minio:9000", None) and payload_signed("http://minio:9000", Config())
    assert not payload_signed("https://s3.example.com", None)  # unsigned there: botocore's CRC32 is the check
    assert not payload_signed(None, None)
    assert not payload_signed("http://minio:9000", Config(s3={"payload_signing_enabled": False}))
    assert not payload_signed("http://minio:9000", Config(request_checksum_calculation="when_supported"))

    repo = BackupRepository.from_connection("minio_s3", bucket, part_size=5 * MiB)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hooks_client = S3Hook(aws_conn_id="minio_s3").get_conn()  # the client the connection gives anywhere else
    assert (repo.client.meta.region_name, repo.client.meta.endpoint_url) == \
        (hooks_client.meta.region_name, hooks_client.meta.endpoint_url)
    sent: list[dict[str, str]] = []
    repo.client.meta.events.register("before-send.s3.UploadPart",
                                     lambda request, **_: sent.append(dict(request.headers)))
    payload = os.urandom(12 * MiB)
    artifact = repo.put_artifact(backup_date, "test", "signed.bin",
                                 [payload[i:i + MiB] for i in range(0, 12 * MiB, MiB)])
    assert get(repo.client, bucket, artifact.key) == payload
    assert len(sent) == 3
    for headers in sent:
        signed = headers["X-Amz-Content-SHA256"]
        assert re.fullmatch(rb"[0-9a-f]{64}", signed if isinstance(signed, bytes) else signed.encode())
        assert not any(name.lower().startswith("x-amz-checksum-") for name in headers)

    def alter(request, **_):
        request.body = b"\0" * int(request.headers["Content-Length"])  # same length, other bytes

    repo.client.meta.events.register("before-send.s3.UploadPart", alter)
    with pytest.raises(Exception, match="(?i)sha256|digest"):
        repo.put_artifact(backup_date, "test", "altered.bin", [payload])
    assert repo.head(f"{backup_date}/test/altered.bin") is None
    assert repo.client.list_multipart_uploads(Bucket=bucket, Prefix=f"{backup_date}/test/altered.bin"
                                              ).get("Uploads", []) == []


def test_over_https_the_parts_carry_botocores_crc32_and_land_exact(monkeypatch, backup_date):
    """Over HTTPS botocore does not sign the bytes: each part goes aws-chunked with a CRC32 trailer, which the
    server checks, and the repository leaves that as it is. The part bodies (views of the chunks written, see
    ``_PartBody``) go through botocore's chunked encoder as they do over plain HTTP: a real MinIO on TLS gets
    every byte, of an incompressible and of a compressed stream alike (small compressor outputs included)."""
    from devstack.state import spare_minio_tls

    with spare_minio_tls() as (endpoint, ca, user, password):
        monkeypatch.setenv("AIRFLOW_CONN_MINIO_TLS", json.dumps({
            "conn_type": "aws", "login": user, "password": password,
            "extra": {"endpoint_url": endpoint, "verify": str(ca), "region_name": "us-east-1"}}))
        repo = BackupRepository.from_connection("minio_tls", "tls-bucket", part_size=5 * MiB, concurrency=3)
        assert repo.client.meta.config.request_checksum_calculation in (None, "when_supported")
        repo.client.create_bucket(Bucket="tls-bucket")
        sent: list[dict[str, str]] = []
        repo.client.meta.events.register("before-send.s3.UploadPart",
                                         lambda request, **_: sent.append(dict(request.headers)))
        payload = os.urandom(6 * MiB) + b"ragvault chunk " * (5 * MiB // 15)
        chunks = [payload[i:i + 333_333] for i in range(0, len(payload), 333_333)]
        for compression in (None, "zstd"):
            sent.clear()
            artifact = repo.put_artifact(backup_date, "test", f"tls-{compression}.bin", chunks,
                                         compression=compression)
            assert b"".join(repo.iter_artifact(artifact)) == payload
            assert artifact.sha256 == hashlib.sha256(get(repo.client, "tls-bucket", artifact.key)).hexdigest()
            assert len(sent) >= 2
            for headers in sent:
                assert headers["X-Amz-Content-SHA256"] in ("STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                                           b"STREAMING-UNSIGNED-PAYLOAD-TRAILER")
                assert headers["X-Amz-Trailer"] in ("x-amz-checksum-crc32", b"x-amz-checksum-crc32")
