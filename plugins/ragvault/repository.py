"""The backup repository: the one object that knows the bucket layout, the checksums and the manifest.

Layout (the seed's, one folder per day and per component)::

    s3://<bucket>/<YYYY-MM-DD>/manifest.json          written last: a date without it is incomplete
    s3://<bucket>/<YYYY-MM-DD>/<component>/<path>     the component's artifacts

Every artifact is streamed: bytes go through an optional compressor into an S3 multipart upload whose parts
are sent as soon as they fill up, so memory stays bounded by one part whatever the artifact's size. The
object only appears in the bucket when the upload completes; a failure aborts the upload, leaving nothing
half-written. While streaming, the SHA-256 and size of both the stored bytes and the original bytes are
computed, and they go into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import zstandard

from ragvault.crypto import Cipher

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ragvault.manifest/v1"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
PROGRESS_EVERY = 256 * MiB
SUFFIXES = {None: "", "zstd": ".zst", "gzip": ".gz"}


class RepositoryError(RuntimeError):
    """The bucket is unreachable, an object is missing, or what is stored does not match the manifest."""


class LockedError(RepositoryError):
    """Another run holds the bucket's lock."""


LOCK_KEY = "ragvault.lock"
#: a rerun of a date that holds a complete backup writes aside, under ``<date>/.staging/<token>/``
STAGING_DIR = ".staging"
STAGING_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_date(date: str) -> str:
    """Return ``date`` if it is a real ``YYYY-MM-DD`` date, else raise ``ValueError`` saying so."""
    if not isinstance(date, str) or not DATE_RE.match(date):
        raise ValueError(f"backup date {date!r} is not of the form YYYY-MM-DD")
    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"backup date {date!r} is not a calendar date") from None
    return date


@dataclass
class Artifact:
    """One object of a backup, as the manifest records it."""

    key: str
    size: int
    sha256: str
    raw_size: int | None = None
    raw_sha256: str | None = None
    compression: str | None = None
    encryption: str | None = None
    key_fingerprint: str | None = None
    content_type: str = "application/octet-stream"
    #: the object's ETag in the bucket, recorded at commit: readers fetch it If-Match, so an object replaced
    #: after the manifest was written is refused rather than mixed with the others
    etag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class ItemResult:
    """What backing up one item (a collection, a database, a whole instance...) produced.

    It travels through XCom, so it holds only small metadata: keys, sizes, checksums and counts.
    """

    component: str
    item: str
    captured_at: str
    source_version: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["artifacts"] = [a.to_dict() for a in self.artifacts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemResult:
        values = dict(data)
        values["artifacts"] = [Artifact.from_dict(a) for a in data.get("artifacts", [])]
        return cls(**values)


def _compressor(compression: str | None):
    if compression is None:
        return None
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    if compression == "gzip":
        # wbits=31: gzip container; no file name and mtime 0, so equal input gives equal bytes.
        return zlib.compressobj(6, zlib.DEFLATED, 31)
    raise ValueError(f"unknown compression {compression!r} (expected one of zstd, gzip or none)")


def decoded_chunks(chunks: Iterable[bytes], compression: str | None) -> Iterator[bytes]:
    """Undo ``compression`` on a stream of chunks, chunk by chunk."""
    if compression is None:
        yield from chunks
        return
    if compression == "zstd":
        decompressor = zstandard.ZstdDecompressor().decompressobj()
    elif compression == "gzip":
        decompressor = zlib.decompressobj(31)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    for chunk in chunks:
        out = decompressor.decompress(chunk)
        if out:
            yield out
    tail = decompressor.flush()
    if tail:
        yield tail


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-blank lines of a stream of chunks (JSON Lines, say), one line in memory at a time."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def decrypted_chunks(chunks: Iterable[bytes], cipher: Cipher) -> Iterator[bytes]:
    decryptor = cipher.decryptor()
    for chunk in chunks:
        out = decryptor.update(chunk)
        if out:
            yield out
    tail = decryptor.finalize()
    if tail:
        yield tail


def state_captured_at(manifest: dict[str, Any]) -> str | None:
    """When a manifest's state parts were captured: its ``state.captured_at``; for manifests written before
    that field existed (which captured everything), the oldest ``captured_at`` of its components."""
    if "state" in manifest:
        return manifest["state"].get("captured_at")
    times = [c.get("captured_at") for c in manifest.get("components", {}).values() if c.get("captured_at")]
    return min(times) if times else None


class _MultipartSink:
    """Bytes in, one S3 object out: a multipart upload fed part by part, aborted on failure."""

    def __init__(self, client, bucket: str, key: str, content_type: str, part_size: int):
        self.client, self.bucket, self.key = client, bucket, key
        self.content_type = content_type
        self.part_size = max(part_size, 5 * MiB)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._next_progress = PROGRESS_EVERY

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.sha256.update(data)
        self.size += len(data)
        self.buffer += data
        while len(self.buffer) >= self._current_part_size():
            n = self._current_part_size()
            self._upload_part(bytes(self.buffer[:n]))
            del self.buffer[:n]
        if self.size >= self._next_progress:
            log.info("%s: %d MiB streamed so far", self.key, self.size // MiB)
            self._next_progress += PROGRESS_EVERY

    def _current_part_size(self) -> int:
        # S3 allows 10,000 parts: double the part size every 1,000 parts so no artifact is too large.
        return self.part_size * (2 ** (len(self.parts) // 1000))

    def _upload_part(self, body: bytes) -> None:
        if self.upload_id is None:
            response = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )
            self.upload_id = response["UploadId"]
        number = len(self.parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, PartNumber=number, UploadId=self.upload_id, Body=body
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def complete(self) -> None:
        if self.upload_id is None:
            # Small object: one plain PUT.
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer), ContentType=self.content_type
            )
        else:
            if self.buffer:
                self._upload_part(bytes(self.buffer))
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.buffer = bytearray()

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception:  # the upload is abandoned either way; MinIO/S3 expire it
                log.warning("%s: could not abort multipart upload %s", self.key, self.upload_id, exc_info=True)
            self.upload_id = None


class ArtifactWriter:
    """A write-only stream that becomes one artifact: ``with repo.open_artifact(...) as w: w.write(b)``.

    On a clean exit the upload completes and :attr:`artifact` describes it; on an exception it is aborted.
    """

    def __init__(self, sink: _MultipartSink, compression: str | None, content_type: str,
                 precompressed: bool = False, cipher: Cipher | None = None):
        self._sink = sink
        self._compression = compression
        self._precompressed = precompressed
        self._compressor = None if precompressed else _compressor(compression)
        self._cipher = cipher
        self._encryptor = cipher.encryptor() if cipher is not None else None
        self._content_type = content_type
        self._raw_sha256 = hashlib.sha256()
        self._raw_size = 0
        self.artifact: Artifact | None = None

    @property
    def key(self) -> str:
        return self._sink.key

    def write(self, data: bytes) -> int:
        if self.artifact is not None:
            raise ValueError(f"{self.key}: write after close")
        self._raw_sha256.update(data)
        self._raw_size += len(data)
        self._store(self._compressor.compress(data) if self._compressor else data)
        return len(data)

    def _store(self, data: bytes) -> None:
        self._sink.write(self._encryptor.update(data) if self._encryptor else data)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> Artifact:
        if self.artifact is None:
            if self._compressor is not None:
                self._store(self._compressor.flush())
            if self._encryptor is not None:
                self._sink.write(self._encryptor.finalize())
            self._sink.complete()
            self.artifact = Artifact(
                key=self._sink.key,
                size=self._sink.size,
                sha256=self._sink.sha256.hexdigest(),
                raw_size=None if self._precompressed else self._raw_size,
                # the hash of a secret's plaintext would let anyone holding the manifest test guesses of it
                raw_sha256=None if self._precompressed or self._cipher else self._raw_sha256.hexdigest(),
                compression=self._compression,
                encryption=self._cipher.scheme if self._cipher else None,
                key_fingerprint=self._cipher.key_fingerprint if self._cipher else None,
                content_type=self._content_type,
            )
            log.info(
                "uploaded %s (%d bytes stored, %d bytes original, sha256 %s)",
                self.key, self.artifact.size, self._raw_size, self.artifact.sha256,
            )
        return self.artifact

    def abort(self) -> None:
        self._sink.abort()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class BackupRepository:
    """The bucket seen as a set of dated backups, each closed by its manifest."""

    def __init__(self, client, bucket: str, *, part_size: int = DEFAULT_PART_SIZE):
        self.client = client
        self.bucket = bucket
        self.part_size = part_size

    @classmethod
    def from_connection(cls, aws_conn_id: str, bucket: str, **kwargs: Any) -> BackupRepository:
        """Build the repository on an Airflow aws connection (MinIO: ``endpoint_url`` in its extra)."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return cls(S3Hook(aws_conn_id=aws_conn_id).get_conn(), bucket, **kwargs)

    # -- layout ---------------------------------------------------------------------------------------
    @staticmethod
    def artifact_key(date: str, component: str, path: str, compression: str | None = None,
                     staging: str | None = None) -> str:
        """``<date>/<component>/<path>[.zst|.gz]``: the one rule every component's objects follow.

        With ``staging`` (a run's token), the object is written aside first, under
        ``<date>/.staging/<token>/<component>/<path>``, and moved into place when the run commits: see
        :meth:`commit_manifest`.
        """
        check_date(date)
        path = path.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"artifact path {path!r} of component {component!r} is not a clean relative path")
        if staging is not None and not STAGING_TOKEN_RE.match(staging):
            raise ValueError(f"staging token {staging!r} is not made of [A-Za-z0-9_-]")
        where = BackupRepository.staging_prefix(date, staging) if staging else f"{date}/"
        return f"{where}{component}/{path}{SUFFIXES[compression]}"

    @staticmethod
    def staging_prefix(date: str, staging: str) -> str:
        """``<date>/.staging/<token>/``: where a run writes aside until it commits."""
        return f"{date}/{STAGING_DIR}/{staging}/"

    @staticmethod
    def final_key(key: str) -> str:
        """Where an object written aside (staged) ends up: ``<date>/.staging/<token>/<rest>`` -> ``<date>/<rest>``."""
        date, _, rest = key.partition("/")
        if rest.startswith(f"{STAGING_DIR}/"):
            rest = rest.split("/", 2)[2]
        return f"{date}/{rest}"

    @classmethod
    def previous_manifest_key(cls, date: str, staging: str) -> str:
        """Where a rerun keeps the date's previous manifest while it swaps its staged objects in."""
        return f"{cls.staging_prefix(date, staging)}previous-{MANIFEST_NAME}"

    def previous_manifest(self, date: str, staging: str) -> dict[str, Any] | None:
        """The manifest ``date`` had before a rerun's commit started: the current one, or the copy kept aside."""
        current = self.read_manifest(date)
        if current is not None:
            return current
        key = self.previous_manifest_key(check_date(date), staging)
        return json.loads(b"".join(self.iter_object(key))) if self.head(key) is not None else None

    @staticmethod
    def manifest_key(date: str) -> str:
        return f"{check_date(date)}/{MANIFEST_NAME}"

    # -- writing --------------------------------------------------------------------------------------
    def check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "?")
            raise RepositoryError(
                f"bucket {self.bucket!r} at {endpoint} is not reachable or does not exist: {exc}"
            ) from exc

    def open_artifact(
        self,
        date: str,
        component: str,
        path: str,
        *,
        compression: str | None = None,
        precompressed: bool = False,
        cipher: Cipher | None = None,
        content_type: str = "application/octet-stream",
        staging: str | None = None,
    ) -> ArtifactWriter:
        """A streaming writer for one artifact.

        :param compression: ``zstd`` or ``gzip`` to compress on the way (the key gets ``.zst``/``.gz``).
        :param precompressed: the bytes written are already compressed with ``compression``: store them as
            they are (the original size and checksum are then unknown and recorded as null).
        :param cipher: encrypt client-side (after compression) with this key; the manifest records the
            scheme and the key's fingerprint, never the key.
        :param staging: write aside under this run's staging token (see :meth:`artifact_key`).
        """
        key = self.artifact_key(date, component, path, compression, staging)
        sink = _MultipartSink(self.client, self.bucket, key, content_type, self.part_size)
        return ArtifactWriter(sink, compression, content_type, precompressed, cipher)

    def put_artifact(
        self,
        date: str,
        component: str,
        path: str,
        chunks: Iterable[bytes] | bytes,
        **kwargs: Any,
    ) -> Artifact:
        """Upload ``chunks`` (bytes, or any iterable of bytes) as one artifact."""
        with self.open_artifact(date, component, path, **kwargs) as writer:
            writer.write_all([chunks] if isinstance(chunks, bytes | bytearray) else chunks)
        return writer.artifact

    # -- reading --------------------------------------------------------------------------------------
    def iter_object(self, key: str, chunk_size: int = MiB, etag: str | None = None) -> Iterator[bytes]:
        """The object's bytes, streamed; with ``etag``, only if the object is still that version of it."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key, **({"IfMatch": etag} if etag else {}))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise RepositoryError(f"s3://{self.bucket}/{key} does not exist") from None
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
            raise RepositoryError(
                f"s3://{self.bucket}/{key} was replaced after its manifest was written (ETag {etag} expected): a "
                "rerun of that date is replacing the backup, or the object was changed by hand") from None
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def iter_artifact(self, artifact: Artifact | dict[str, Any], chunk_size: int = MiB,
                      cipher: Cipher | None = None) -> Iterator[bytes]:
        """The artifact's original bytes (decrypted with ``cipher`` if it is encrypted, decompressed), streamed."""
        if isinstance(artifact, dict):
            artifact = Artifact.from_dict(artifact)
        chunks = self.iter_object(artifact.key, chunk_size, artifact.etag)
        if artifact.encryption:
            if cipher is None:
                raise RepositoryError(f"{artifact.key} is encrypted ({artifact.encryption}, key "
                                      f"{artifact.key_fingerprint}): a key is needed to read it")
            if cipher.key_fingerprint != artifact.key_fingerprint:
                raise RepositoryError(f"{artifact.key} was encrypted with key {artifact.key_fingerprint}, "
                                      f"not with the given key {cipher.key_fingerprint}")
            chunks = decrypted_chunks(chunks, cipher)
        return decoded_chunks(chunks, artifact.compression)

    def verify_artifact(self, artifact: dict[str, Any], cipher: Cipher | None = None) -> list[str]:
        """Read an artifact back whole and check it against its manifest entry; return the problems found.

        Size and SHA-256 of the stored bytes; for encrypted ones, that they decrypt (needs ``cipher``); and the
        SHA-256 of the original bytes where the manifest has it.
        """
        key = artifact["key"]
        stored, original = hashlib.sha256(), hashlib.sha256()
        size = 0

        def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                stored.update(chunk)
                size += len(chunk)
                yield chunk

        try:
            chunks = counted(self.iter_object(key, etag=artifact.get("etag")))
            if artifact.get("encryption"):
                if cipher is None:
                    return [f"{key}: encrypted, and no key was given to check it"]
                chunks = decrypted_chunks(chunks, cipher)
            for chunk in decoded_chunks(chunks, artifact.get("compression")):
                original.update(chunk)
        except Exception as exc:  # each artifact's problem is reported; the caller fails on any
            return [f"{key}: {type(exc).__name__}: {exc}"]
        if size != artifact["size"] or stored.hexdigest() != artifact["sha256"]:
            return [f"{key}: stored bytes differ from the manifest ({size} bytes, sha256 {stored.hexdigest()[:12]}; "
                    f"expected {artifact['size']} bytes, sha256 {artifact['sha256'][:12]})"]
        if artifact.get("raw_sha256") and original.hexdigest() != artifact["raw_sha256"]:
            return [f"{key}: its decoded content differs from the manifest"]
        return []

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def list_keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    # -- lock ---------------------------------------------------------------------------------------------
    # One run at a time pauses ingestion and writes (backup) or reads and restores (restore): the lock is an
    # object created only if absent (If-None-Match), taken over only if unchanged (If-Match) once stale.

    def lock_holder(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and ETag, or None when nobody holds it."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=LOCK_KEY)
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(response["Body"].read()), response["ETag"]

    def acquire_lock(self, owner: str, *, stale_after: float, wait: float, poll: float = 5.0) -> None:
        """Take the bucket's lock for ``owner`` (a run id), waiting up to ``wait`` seconds for another run.

        A lock older than ``stale_after`` seconds (its run died without releasing it) is taken over. Taking
        it again as its owner (a retry of the same run) succeeds at once.
        """
        deadline = time.monotonic() + wait
        while True:
            body = json.dumps({"owner": owner, "acquired_at": utcnow_iso(), "host": socket.gethostname()}).encode()
            try:
                self.client.put_object(Bucket=self.bucket, Key=LOCK_KEY, Body=body, IfNoneMatch="*",
                                       ContentType="application/json")
                log.info("lock s3://%s/%s taken by %s", self.bucket, LOCK_KEY, owner)
                return
            except self.client.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
            held = self.lock_holder()
            if held is None:
                continue
            holder, etag = held
            if holder.get("owner") == owner:
                log.info("lock s3://%s/%s already held by this run (%s)", self.bucket, LOCK_KEY, owner)
                return
            age = (datetime.now(UTC) - datetime.fromisoformat(holder["acquired_at"].replace("Z", "+00:00")))
            if age.total_seconds() > stale_after:
                try:
                    self.client.put_object(Bucket=self.bucket, Key=LOCK_KEY, Body=body, IfMatch=etag,
                                           ContentType="application/json")
                    log.warning("lock s3://%s/%s of %s (taken %s, %.0f s ago) was stale: taken over by %s",
                                self.bucket, LOCK_KEY, holder.get("owner"), holder["acquired_at"],
                                age.total_seconds(), owner)
                    return
                except self.client.exceptions.ClientError:
                    continue  # someone else changed it first: look again
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"s3://{self.bucket} is locked by run {holder.get('owner')} (host {holder.get('host')}, since "
                    f"{holder['acquired_at']}); waited {wait:.0f} s. If that run is dead, delete "
                    f"s3://{self.bucket}/{LOCK_KEY} or wait until the lock is stale ({stale_after:.0f} s)")
            log.info("lock held by %s since %s: waiting", holder.get("owner"), holder["acquired_at"])
            time.sleep(poll)

    def release_lock(self, owner: str) -> bool:
        """Release the lock if ``owner`` holds it; True if it was released."""
        held = self.lock_holder()
        if held is None or held[0].get("owner") != owner:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=LOCK_KEY)
        log.info("lock s3://%s/%s released by %s", self.bucket, LOCK_KEY, owner)
        return True

    # -- manifest -------------------------------------------------------------------------------------
    def build_manifest(self, date: str, results: Iterable[ItemResult], run: dict[str, Any]) -> dict[str, Any]:
        components: dict[str, dict[str, Any]] = {}
        artifacts: list[dict[str, Any]] = []
        for result in sorted(results, key=lambda r: (r.component, r.item)):
            comp = components.setdefault(
                result.component,
                {"source_version": result.source_version, "captured_at": result.captured_at,
                 "counts": {}, "items": {}},
            )
            comp["captured_at"] = min(comp["captured_at"], result.captured_at)
            comp["source_version"] = comp["source_version"] or result.source_version
            for name, value in result.counts.items():
                comp["counts"][name] = comp["counts"].get(name, 0) + value
            comp["items"][result.item] = {
                "captured_at": result.captured_at,
                "counts": result.counts,
                "artifacts": [self.final_key(a.key) for a in result.artifacts],
                **({"details": result.details} if result.details else {}),
            }
            for artifact in result.artifacts:
                entry = {**artifact.to_dict(), "key": self.final_key(artifact.key), "component": result.component,
                         "item": result.item}
                if entry["key"] != artifact.key:
                    entry["staged_key"] = artifact.key
                artifacts.append(entry)
        keys = [a["key"] for a in artifacts]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise RepositoryError(f"two items wrote the same object(s): {', '.join(duplicates)}")
        return {
            "format": MANIFEST_FORMAT,
            "backup_date": check_date(date),
            "bucket": self.bucket,
            "created_at": utcnow_iso(),
            "run": run,
            "components": components,
            "artifacts": artifacts,
        }

    def commit_manifest(self, manifest: dict[str, Any]) -> str:
        """Close a backup: put every artifact in place, record its ETag, write the manifest last, prune the rest.

        Artifacts written aside (``staged_key``: a rerun of a date that already held a complete backup) are
        checked, then the old manifest is removed, each is copied into place server-side and checked again;
        until that moment the previous backup of the date stayed whole and restorable, and a failure here
        leaves the date without a manifest (incomplete, never half-restored) and the staged objects in place
        for a retry. Every other artifact must already be in place with its recorded size. Objects under the
        date that the new manifest does not name (an earlier run's, staging folders) are removed afterwards.
        """
        date = manifest["backup_date"]
        problems = []
        for artifact in manifest["artifacts"]:
            source = artifact.get("staged_key") or artifact["key"]
            head = self.head(source)
            if head is None:
                problems.append(f"{source}: missing")
            elif head["ContentLength"] != artifact["size"]:
                problems.append(f"{source}: {head['ContentLength']} bytes stored, {artifact['size']} expected")
            elif artifact.get("etag") and not artifact.get("staged_key") and head["ETag"] != artifact["etag"]:
                problems.append(f"{source}: changed since it was recorded (ETag {head['ETag']}, "
                                f"not {artifact['etag']})")
            else:
                artifact["etag"] = head["ETag"]
        if problems:
            raise RepositoryError(f"backup {date} is not consistent, manifest not written: " + "; ".join(problems))
        staged = [a for a in manifest["artifacts"] if a.get("staged_key")]
        key = self.manifest_key(date)
        if staged:
            # Kept aside until the new manifest is written, so a retry after a failure below still finds it.
            aside = self.previous_manifest_key(date, staged[0]["staged_key"].split("/", 3)[2])
            if self.head(key) is not None:
                self.client.copy_object(Bucket=self.bucket, Key=aside, CopySource={"Bucket": self.bucket, "Key": key})
            if self.discard_manifest(date):
                log.info("backup %s: previous manifest removed, moving %d staged objects into place", date, len(staged))
            for artifact in staged:
                self._promote(artifact)
        state = manifest.get("state") or {}
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                               Metadata={"state-captured-at": state.get("captured_at") or ""})
        log.info("manifest s3://%s/%s written: %d artifacts", self.bucket, key, len(manifest["artifacts"]))
        keep = {a["key"] for a in manifest["artifacts"]} | {key}
        for obj in self.list_keys(f"{date}/"):
            if obj["Key"] not in keep:
                log.info("removing %s: not part of the backup of %s (an earlier run's, or staged)", obj["Key"], date)
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
        return key

    def _promote(self, artifact: dict[str, Any]) -> None:
        """Copy a staged object to its final key (server-side), check it, record its ETag."""
        from boto3.s3.transfer import TransferConfig

        source = artifact.pop("staged_key")
        # One CopyObject up to 4 GiB (metadata kept); S3's multipart copy beyond, part by part.
        config = TransferConfig(multipart_threshold=4 * 1024 * MiB, multipart_chunksize=512 * MiB)
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, artifact["key"], Config=config)
        head = self.head(artifact["key"])
        if head is None or head["ContentLength"] != artifact["size"]:
            raise RepositoryError(f"{source} -> {artifact['key']}: the copy is missing or has another size")
        artifact["etag"] = head["ETag"]
        if artifact["size"] >= PROGRESS_EVERY:
            log.info("moved %s into place (%d MiB)", artifact["key"], artifact["size"] // MiB)

    def read_manifest(self, date: str) -> dict[str, Any] | None:
        key = self.manifest_key(date)
        if self.head(key) is None:
            return None
        return json.loads(b"".join(self.iter_object(key)))

    def _manifest_heads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(date, HEAD of its manifest)`` for every date folder that holds a manifest."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Delimiter="/"):
            for prefix in page.get("CommonPrefixes", []):
                date = prefix["Prefix"].rstrip("/")
                if DATE_RE.match(date):
                    head = self.head(f"{date}/{MANIFEST_NAME}")
                    if head is not None:
                        yield date, head

    def complete_dates(self) -> list[str]:
        """Dates that hold a manifest (complete backups), oldest first."""
        return sorted(date for date, _ in self._manifest_heads())

    def catalog(self) -> list[dict[str, Any]]:
        """The complete backups, oldest date first: ``{"date", "state_captured_at"}`` each.

        ``state_captured_at`` is when the backup's state parts were captured (None for a backup that holds
        only interval data); it comes from the manifest's object metadata, or from the manifest itself for
        manifests written without it.
        """
        entries = []
        for date, head in self._manifest_heads():
            metadata = head.get("Metadata") or {}
            if "state-captured-at" in metadata:
                captured = metadata["state-captured-at"] or None
            else:
                captured = state_captured_at(self.read_manifest(date) or {})
            entries.append({"date": date, "state_captured_at": captured})
        return sorted(entries, key=lambda e: e["date"])

    def latest_state(self, catalog: list[dict[str, Any]] | None = None) -> str | None:
        """The date of the complete backup whose state was captured last (ties: the later date); None if none.

        :param catalog: :meth:`catalog`'s answer, when the caller already has it.
        """
        candidates = [e for e in (self.catalog() if catalog is None else catalog) if e["state_captured_at"]]
        if not candidates:
            return None
        return max(candidates, key=lambda e: (e["state_captured_at"], e["date"]))["date"]

    def discard_manifest(self, date: str) -> bool:
        """Remove a date's manifest (marks the date incomplete while it is rewritten). True if one existed."""
        key = self.manifest_key(date)
        existed = self.head(key) is not None
        if existed:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return existed
