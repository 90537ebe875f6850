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

import base64
import bisect
import hashlib
import json
import logging
import os
import queue
import re
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard
from botocore.config import Config

from ragvault.crypto import Cipher, EncryptionError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: the last ``verify`` of a date's backup (see ``ragvault.catalog``): beside its manifest, never an artifact
VERIFICATION_NAME = "verification.json"
#: the last restore drill's result, beside the manifest (see ``ragvault.drill``)
DRILL_NAME = "drill.json"
MANIFEST_FORMAT = "ragvault.manifest/v1"
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
COALESCE = 256 * 1024  # small writes are gathered into blocks of this size
DEFAULT_CONCURRENCY = 4  # parts in flight per artifact
PROGRESS_EVERY = 256 * MiB
SUFFIXES = {None: "", "zstd": ".zst", "gzip": ".gz"}


class RepositoryError(RuntimeError):
    """The bucket is unreachable, an object is missing, or what is stored does not match the manifest."""


class ManifestError(RepositoryError):
    """A ``manifest.json`` that is not a manifest of this package for its date."""


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
    #: of an encrypted artifact: a digest of its original content keyed by its key (``Cipher.content_mac``),
    #: where an unencrypted one records ``raw_sha256``: it compares contents without revealing them
    content_mac: str | None = None
    content_type: str = "application/octet-stream"
    #: the object's ETag in the bucket, recorded at commit: readers fetch it If-Match, so an object replaced
    #: after the manifest was written is refused rather than mixed with the others
    etag: str | None = None
    #: where the object is while a commit moves it into place, when that is not ``key`` (a rerun's object,
    #: still under ``<date>/.staging/<token>/``): readers read it there
    stored_at: str | None = None

    @property
    def location(self) -> str:
        """The object to read: ``stored_at`` while it is set, else ``key``."""
        return self.stored_at or self.key

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
    #: how long the backup of the item took
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["artifacts"] = [a.to_dict() for a in self.artifacts]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemResult:
        values = dict(data)
        values["artifacts"] = [Artifact.from_dict(a) for a in data.get("artifacts", [])]
        return cls(**values)


def _compressor(compression: str | None, threads: int = -1):
    if compression is None:
        return None
    if compression == "zstd":
        # threads=-1: zstd's own workers, one per CPU, compress while this thread reads and hashes (a single
        # thread compresses JSON at about 200 MB/s, slower than the network); 0 where several artifacts are
        # written at once (the files are the parallelism: each compressor's workers and buffers would only add
        # memory). Level 1: on Prometheus chunk segments twice as fast as level 3 for 3.14x instead of 3.22x,
        # on JSON Lines 3.93x instead of 3.96x.
        return zstandard.ZstdCompressor(level=1, write_checksum=True, threads=threads).compressobj()
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


def prefetched(items: Iterable[Any], depth: int = 4, name: str = "ragvault-prefetch") -> Iterator[Any]:
    """``items``, produced by a thread of their own at most ``depth`` ahead of the consumer: reading (a database
    cursor, a download) overlaps with what the consumer does with the previous ones. An error in the producer
    is raised in the consumer; a consumer that stops early stops the producer."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def offer(item: Any) -> bool:
        """Put ``item`` in a free slot; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
        except BaseException as exc:  # handed to the consumer
            failure.append(exc)
        offer(done)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        thread.join()


def file_chunks(path: Path, size: int = MiB) -> Iterator[bytes]:
    """The bytes of the file at ``path``, ``size`` at a time."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter), drawn lazily."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int,
                name: str = "ragvault-worker") -> Iterator[Any]:
    """``fn(item)`` for each of ``items`` on up to ``workers`` threads, the results yielded in the items' order.

    ``items`` is drawn lazily: at most ``workers`` of them are in flight (so a stream of batches stays bounded in
    memory). The first failure is raised once the calls already running have ended; no further item starts.
    With ``workers`` 1 everything runs on the caller's thread.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                if len(pending) >= workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            wait(pending)


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


#: where each multipart upload in progress is noted until it completes or is aborted
UPLOADS_PREFIX = ".ragvault/uploads/"
#: the catalog's index: empty objects whose names carry each date's manifest summary and last verification, so
#: that one LIST (a thousand names a page) lists years of backups; see :meth:`BackupRepository.catalog_index`
CATALOG_PREFIX = ".ragvault/catalog/"


def manifest_summary(manifest: dict[str, Any]) -> dict[str, str]:
    """What the catalog lists of a backup, carried in its manifest object's metadata so that a listing of years
    of backups reads one HEAD a date, not every manifest: artifacts, stored bytes, each component's mode
    (``name:mode`` pairs), when and by which run it was written."""
    artifacts = manifest.get("artifacts") or []
    modes = ",".join(f"{name}:{section.get('mode') or 'capture'}"
                     for name, section in sorted((manifest.get("components") or {}).items()))
    return {"artifacts": str(len(artifacts)), "stored-bytes": str(sum(int(a.get("size") or 0) for a in artifacts)),
            "components": modes, "created-at": str(manifest.get("created_at") or ""),
            # metadata is ASCII: a run id typed by hand may not be
            "run-id": str((manifest.get("run") or {}).get("run_id") or "")[:200].encode("ascii", "replace").decode()}


def payload_signed(endpoint_url: str | None, config: Config | None) -> bool:
    """Whether botocore signs the bytes of every request to ``endpoint_url`` (SigV4 over plain HTTP, unless the
    connection's config turns payload signing off), and no other request checksum was asked for."""
    if config is not None and (config.request_checksum_calculation
                               or (config.s3 or {}).get("payload_signing_enabled") is False
                               or config.signature_version not in (None, "s3v4", "v4")):
        return False
    if os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
        return False
    return bool(endpoint_url) and endpoint_url.lower().startswith("http://")


def upload_marker_key(key: str, upload_id: str) -> str:
    digest = hashlib.sha256(f"{key} {upload_id}".encode()).hexdigest()
    return f"{UPLOADS_PREFIX}{digest[:32]}.json"


def parse_manifest(body: bytes, where: str, date: str) -> dict[str, Any]:
    """A manifest from its bytes, checked to be one of this package's for ``date``; :class:`ManifestError`
    naming ``where`` and what is wrong otherwise."""
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise ManifestError(f"{where} is not JSON ({len(body)} bytes: {exc}): not a ragvault manifest") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where} holds a JSON {type(manifest).__name__}, not a ragvault manifest")
    found = manifest.get("format")
    if found != MANIFEST_FORMAT:
        raise ManifestError(f"{where} is of format {found!r}, not {MANIFEST_FORMAT!r}: not a ragvault manifest")
    if manifest.get("backup_date") != date:
        raise ManifestError(f"{where} is the manifest of {manifest.get('backup_date')!r}, not of {date}: it was "
                            "copied from another date")
    if not isinstance(manifest.get("components"), dict) or not isinstance(manifest.get("artifacts"), list):
        raise ManifestError(f"{where} has no components or artifacts: not a whole ragvault manifest")
    return manifest


class _BackgroundHash:
    """A SHA-256 fed in order and computed by a thread of its own once the data is large: hashlib releases the
    GIL, so hashing runs beside reading, compressing and sending instead of after them. At most ``depth``
    MiB slices wait for it (slices of the chunks being uploaded anyway)."""

    INLINE = 256 * 1024  # below this much data, a thread is not worth starting

    def __init__(self, depth: int = 16):
        self._hash = hashlib.sha256()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._inline = 0

    def update(self, data: bytes) -> None:
        if self._thread is None and self._inline + len(data) < self.INLINE:
            self._inline += len(data)
            self._hash.update(data)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ragvault-sha256", daemon=True)
            self._thread.start()
        view = memoryview(data)
        for start in range(0, len(view), MiB):  # the queue holds at most depth MiB beyond the chunk at hand
            self._queue.put(view[start:start + MiB])

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def digest(self) -> bytes:
        self.close()
        return self._hash.digest()


class _PartBody:
    """One part's bytes as a read-only, seekable stream over the pieces they were written in, so that a part is
    never joined into one more copy: botocore reads it to sign it, seeks back, and sends it (again after a
    retry). A read within one piece is a view of it; one across pieces joins just what it asks for."""

    def __init__(self, pieces: list[bytes | memoryview]):
        self._pieces = [memoryview(piece) for piece in pieces if len(piece)]
        self._ends: list[int] = []
        total = 0
        for piece in self._pieces:
            total += len(piece)
            self._ends.append(total)
        self._size = total
        self._pos = 0
        self._index = 0  # the piece holding self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = min(base + offset, self._size)
        self._index = bisect.bisect_right(self._ends, self._pos)
        return self._pos

    def read(self, size: int = -1) -> bytes | memoryview:
        left = self._size - self._pos
        size = left if size is None or size < 0 else min(size, left)
        if size == 0:
            return b""
        out: list[memoryview] = []
        need = size
        while need:
            piece = self._pieces[self._index]
            start = self._pos - (self._ends[self._index] - len(piece))
            take = min(need, len(piece) - start)
            out.append(piece[start:start + take])
            self._pos += take
            need -= take
            if start + take == len(piece):
                self._index += 1
        return out[0] if len(out) == 1 else b"".join(out)


class _MultipartSink:
    """Bytes in, one S3 object out: a multipart upload fed part by part, aborted on failure.

    Up to ``concurrency`` parts are sent at once by a small thread pool while the caller keeps producing (and
    compressing, and encrypting) the next one: memory holds at most ``concurrency`` parts in flight and one part
    filling. A part is sent from the chunks as they were written (no copy, see :class:`_PartBody`); the SHA-256
    of the stored bytes is computed as they are written, in order.
    """

    def __init__(self, client, bucket: str, key: str, content_type: str, part_size: int, concurrency: int = 1):
        self.client, self.bucket, self.key = client, bucket, key
        self.content_type = content_type
        self.part_size = max(part_size, 5 * MiB)
        self.concurrency = max(1, concurrency)
        self._chunks: deque[bytes | memoryview] = deque()
        self._buffered = 0
        self.upload_id: str | None = None
        self.marker: str | None = None
        self._etags: dict[int, str] = {}
        self._submitted = 0
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: set[Future] = set()
        self.sha256 = _BackgroundHash()
        self.size = 0
        self._next_progress = PROGRESS_EVERY

    @property
    def parts(self) -> list[dict[str, Any]]:
        """The parts sent so far, in order (number and ETag)."""
        return [{"PartNumber": number, "ETag": self._etags[number]} for number in sorted(self._etags)]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not isinstance(data, bytes):  # the caller may reuse a mutable buffer: keep a copy of its bytes
            data = bytes(data)
        self.sha256.update(data)
        self.size += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        while self._buffered >= self._current_part_size():
            self._send(self._take(self._current_part_size()))
        if self.size >= self._next_progress:
            log.info("%s: %d MiB streamed so far", self.key, self.size // MiB)
            self._next_progress += PROGRESS_EVERY

    def _take(self, n: int) -> list[bytes | memoryview]:
        """The first ``n`` buffered bytes, as the pieces they were written in (a piece split at the end)."""
        pieces: list[bytes | memoryview] = []
        need = n
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                pieces.append(self._chunks.popleft())
                need -= len(chunk)
            else:
                view = memoryview(chunk)
                pieces.append(view[:need])
                self._chunks[0] = view[need:]
                need = 0
        self._buffered -= n
        return pieces

    def _current_part_size(self) -> int:
        # S3 allows 10,000 parts: double the part size every 1,000 parts so no artifact is too large.
        return self.part_size * (2 ** (self._submitted // 1000))

    def _start(self) -> None:
        response = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key, ContentType=self.content_type)
        self.upload_id = response["UploadId"]
        # Noted in the bucket, so that the upload of a worker killed before it completes or aborts is found
        # and aborted by a later run (MinIO lists open uploads only by their exact key after a restart).
        self.marker = upload_marker_key(self.key, self.upload_id)
        self.client.put_object(Bucket=self.bucket, Key=self.marker, ContentType="application/json",
                               Body=json.dumps({"key": self.key, "upload_id": self.upload_id,
                                                "started": utcnow_iso()}).encode())

    def _send(self, body: list[bytes | memoryview]) -> None:
        """Hand one part to the pool, after waiting for a free slot (a failed part raises here)."""
        if self.upload_id is None:
            self._start()
        self._submitted += 1
        if self.concurrency == 1:
            self._upload_part(self._submitted, body)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ragvault-upload")
        while len(self._inflight) >= self.concurrency:
            self._reap(FIRST_COMPLETED)
        self._inflight.add(self._pool.submit(self._upload_part, self._submitted, body))

    def _reap(self, return_when: str) -> None:
        done, self._inflight = wait(self._inflight, return_when=return_when)
        for future in done:
            future.result()

    def _upload_part(self, number: int, pieces: list[bytes | memoryview]) -> None:
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, PartNumber=number, UploadId=self.upload_id, Body=_PartBody(pieces)
        )
        self._etags[number] = response["ETag"]

    def complete(self) -> None:
        try:
            if self.upload_id is None:
                # Small object: one plain PUT.
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=b"".join(self._take(self._buffered)),
                                       ContentType=self.content_type)
            else:
                if self._buffered:
                    self._send(self._take(self._buffered))
                self._reap(ALL_COMPLETED)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
                self.upload_id = None  # completed: nothing left to abort
                self._forget_marker()
        finally:
            self._close_pool()
        self._chunks.clear()
        self._buffered = 0

    def _close_pool(self) -> None:
        if self._pool is not None:
            for future in self._inflight:
                future.cancel()
            self._pool.shutdown(wait=True)  # no part may land after the upload is aborted
            self._pool = None
            self._inflight = set()

    def _forget_marker(self) -> None:
        if self.marker is not None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.marker)
            except Exception:  # a later run's clean-up removes it with the upload it names
                log.warning("%s: could not remove the upload note %s", self.key, self.marker, exc_info=True)
            self.marker = None

    def abort(self) -> None:
        self._chunks.clear()
        self._buffered = 0
        self.sha256.close()
        self._close_pool()
        if self.upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
                self._forget_marker()
            except Exception:  # the next run aborts it (BackupRepository.abort_stale_uploads)
                log.warning("%s: could not abort multipart upload %s; the next backup run aborts it", self.key,
                            self.upload_id, exc_info=True)
            self.upload_id = None


class ArtifactWriter:
    """A write-only stream that becomes one artifact: ``with repo.open_artifact(...) as w: w.write(b)``.

    On a clean exit the upload completes and :attr:`artifact` describes it; on an exception it is aborted.
    """

    def __init__(self, sink: _MultipartSink, compression: str | None, content_type: str,
                 precompressed: bool = False, cipher: Cipher | None = None, compress_threads: int = -1):
        self._sink = sink
        self._compression = compression
        self._precompressed = precompressed
        self._compressor = None if precompressed else _compressor(compression, compress_threads)
        self._cipher = cipher
        self._encryptor = cipher.encryptor() if cipher is not None else None
        self._content_type = content_type
        # stored bytes == original bytes: the sink's SHA-256 is the original's too, computed once
        self._identity = self._compressor is None and self._encryptor is None and not precompressed
        self._raw_sha256 = _BackgroundHash()
        self._raw_size = 0
        self._pending = bytearray()
        self.artifact: Artifact | None = None
        #: the SHA-256 of the bytes written, once closed (of an encrypted artifact too, where the manifest
        #: does not record it): to compare with a checksum the source gave (Qdrant's of its snapshot)
        self.written_sha256: str | None = None

    @property
    def key(self) -> str:
        return self._sink.key

    def write(self, data: bytes) -> int:
        """Take ``data``; small writes (a document, a line) are gathered into blocks of ``COALESCE`` bytes first,
        so hashing, compressing and encrypting run on blocks, not on each small piece."""
        if self.artifact is not None:
            raise ValueError(f"{self.key}: write after close")
        size = len(data)
        if size < COALESCE:
            self._pending += data
            if len(self._pending) >= COALESCE:
                self._flush_pending()
            return size
        self._flush_pending()
        self._process(data)
        return size

    def _flush_pending(self) -> None:
        if self._pending:
            block, self._pending = bytes(self._pending), bytearray()
            self._process(block)

    def _process(self, data: bytes) -> None:
        if not self._identity:
            self._raw_sha256.update(data)
        self._raw_size += len(data)
        self._store(self._compressor.compress(data) if self._compressor else data)

    def _store(self, data: bytes) -> None:
        self._sink.write(self._encryptor.update(data) if self._encryptor else data)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> Artifact:
        if self.artifact is None:
            try:
                self._flush_pending()
                if self._compressor is not None:
                    self._store(self._compressor.flush())
                if self._encryptor is not None:
                    self._sink.write(self._encryptor.finalize())
                self._sink.complete()
            except BaseException:  # the last parts or the completion failed: no upload is left open
                self.abort()
                raise
            raw_sha256 = self._sink.sha256 if self._identity else self._raw_sha256
            self.written_sha256 = raw_sha256.hexdigest()
            self.artifact = Artifact(
                key=self._sink.key,
                size=self._sink.size,
                sha256=self._sink.sha256.hexdigest(),
                raw_size=None if self._precompressed else self._raw_size,
                # the hash of a secret's plaintext would let anyone holding the manifest test guesses of it
                raw_sha256=None if self._precompressed or self._cipher else raw_sha256.hexdigest(),
                compression=self._compression,
                encryption=self._cipher.scheme if self._cipher else None,
                key_fingerprint=self._cipher.key_fingerprint if self._cipher else None,
                content_mac=(self._cipher.content_mac(raw_sha256.digest())
                             if self._cipher and not self._precompressed else None),
                content_type=self._content_type,
            )
            log.info(
                "uploaded %s (%d bytes stored, %d bytes original, sha256 %s)",
                self.key, self.artifact.size, self._raw_size, self.artifact.sha256,
            )
        return self.artifact

    def abort(self) -> None:
        self._pending = bytearray()
        self._raw_sha256.close()
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

    def __init__(self, client, bucket: str, *, part_size: int = DEFAULT_PART_SIZE,
                 concurrency: int = DEFAULT_CONCURRENCY, conn_id: str | None = None):
        self.client = client
        self.bucket = bucket
        #: bytes per multipart part, and parts sent at once per artifact: an upload holds at most
        #: ``(concurrency + 1) * part_size`` bytes in memory
        self.part_size = part_size
        self.concurrency = concurrency
        #: the Airflow connection the client was built from, named in error messages
        self.conn_id = conn_id

    @classmethod
    def from_connection(cls, aws_conn_id: str, bucket: str, **kwargs: Any) -> BackupRepository:
        """Build the repository on an Airflow aws connection (MinIO: ``endpoint_url`` in its extra)."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=aws_conn_id)
        config = hook.config
        if payload_signed(hook.conn_config.get_service_endpoint_url("s3"), config):
            # Every request's bytes are then signed (SHA-256) and checked by the server: the CRC32 that botocore
            # would add to each part by default is a second checksum of the same bytes, computed on both sides.
            config = config.merge(Config(request_checksum_calculation="when_required"))
        return cls(hook.get_client_type(region_name=hook.region_name, config=config), bucket, conn_id=aws_conn_id,
                   **kwargs)

    @classmethod
    def from_settings(cls, settings) -> BackupRepository:
        """The repository of ``settings``: its bucket, on its ``s3`` connection, with its ``transfer`` sizes."""
        transfer = settings.transfer
        return cls.from_connection(settings.conn_id("s3"), settings.bucket,
                                   part_size=transfer["part_size_mib"] * MiB, concurrency=transfer["concurrency"])

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

    @staticmethod
    def manifest_key(date: str) -> str:
        return f"{check_date(date)}/{MANIFEST_NAME}"

    @staticmethod
    def verification_key(date: str) -> str:
        return f"{check_date(date)}/{VERIFICATION_NAME}"

    # -- writing --------------------------------------------------------------------------------------
    def check_bucket(self) -> None:
        """Raise :class:`RepositoryError` saying what is wrong when the bucket cannot be used: the server is not
        reachable, the credentials are refused, or the bucket does not exist."""
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", "?")
        via = f" (connection {self.conn_id})" if self.conn_id else ""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self.client.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") \
                    or status == 403:
                raise RepositoryError(
                    f"{endpoint} refused access to bucket {self.bucket!r} (HTTP 403){via}: the access key or "
                    "secret is wrong, or the key has no permission on that bucket") from exc
            if code in ("404", "NoSuchBucket", "NotFound") or status == 404:
                raise RepositoryError(f"bucket {self.bucket!r} does not exist at {endpoint}{via}: create it (or "
                                      "fix `bucket` in the settings)") from exc
            raise RepositoryError(f"bucket {self.bucket!r} at {endpoint}{via}: {exc}") from exc
        except Exception as exc:
            raise RepositoryError(f"{endpoint}{via} is not reachable ({type(exc).__name__}: {exc}): is MinIO/S3 up, "
                                  "and is endpoint_url right?") from exc

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
        concurrency: int | None = None,
        compress_threads: int = -1,
    ) -> ArtifactWriter:
        """A streaming writer for one artifact.

        :param compression: ``zstd`` or ``gzip`` to compress on the way (the key gets ``.zst``/``.gz``).
        :param precompressed: the bytes written are already compressed with ``compression``: store them as
            they are (the original size and checksum are then unknown and recorded as null).
        :param cipher: encrypt client-side (after compression) with this key; the manifest records the
            scheme and the key's fingerprint, never the key.
        :param staging: write aside under this run's staging token (see :meth:`artifact_key`).
        :param concurrency: parts in flight for this artifact (default: the repository's); 1 when several
            artifacts are written at once (see :meth:`put_files`), so memory stays bounded by their number.
        :param compress_threads: zstd's worker threads (-1: one per CPU; 0: compress on the writing thread).
        """
        key = self.artifact_key(date, component, path, compression, staging)
        sink = _MultipartSink(self.client, self.bucket, key, content_type, self.part_size,
                              self.concurrency if concurrency is None else concurrency)
        return ArtifactWriter(sink, compression, content_type, precompressed, cipher, compress_threads)

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

    def put_files(self, date: str, component: str, files: Iterable[tuple[str, Path]], **kwargs: Any,
                  ) -> list[Artifact]:
        """Upload each local file ``(path, file)`` as the artifact ``path``, up to ``concurrency`` files at once
        (many small files are bound by round trips, not bandwidth), each streamed from disk with one part in
        flight and compressed on its own thread: memory holds at most ``concurrency`` parts. Returns the
        artifacts in the order given; the first failure is raised (the files in flight then end, none further
        starts).
        """

        def upload(job: tuple[str, Path]) -> Artifact:
            path, file = job
            with self.open_artifact(date, component, path, concurrency=1, compress_threads=0, **kwargs) as writer:
                writer.write_all(file_chunks(file))
            return writer.artifact

        return list(bounded_map(upload, files, self.concurrency, name=f"ragvault-{component}-files"))

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
        chunks = self.iter_object(artifact.location, chunk_size, artifact.etag)
        if artifact.encryption:
            if cipher is None:
                raise RepositoryError(f"{artifact.key} is encrypted ({artifact.encryption}, key "
                                      f"{artifact.key_fingerprint}): a key is needed to read it")
            try:
                key = cipher.for_fingerprint(artifact.key_fingerprint, artifact.key)
            except EncryptionError as exc:
                raise RepositoryError(str(exc)) from None
            chunks = decrypted_chunks(chunks, key)
        return decoded_chunks(chunks, artifact.compression)

    def verify_artifact(self, artifact: dict[str, Any], cipher: Cipher | None = None,
                        progress: Callable[[int], None] | None = None) -> list[str]:
        """Read an artifact back whole and check it against its manifest entry; return the problems found.

        Size and SHA-256 of the stored bytes; for encrypted ones, that they decrypt (needs ``cipher``: a key
        or a keyring holding the one the artifact names); and the SHA-256 (or, encrypted, the keyed digest) of
        the original bytes where the manifest has it. ``progress`` is called with each chunk's size.
        """
        key = artifact.get("stored_at") or artifact["key"]
        stored, original = hashlib.sha256(), hashlib.sha256()
        size, read_failed = 0, False

        def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal size, read_failed
            try:
                for chunk in chunks:
                    stored.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                    yield chunk
            except Exception:
                read_failed = True
                raise

        raw = counted(self.iter_object(key, etag=artifact.get("etag")))

        def damaged() -> list[str]:
            if size != artifact["size"] or stored.hexdigest() != artifact["sha256"]:
                return [f"{key}: stored bytes differ from the manifest ({size} bytes, sha256 "
                        f"{stored.hexdigest()[:12]}; expected {artifact['size']} bytes, sha256 "
                        f"{artifact['sha256'][:12]})"]
            return []

        try:
            chunks = raw
            if artifact.get("encryption"):
                if cipher is None:
                    return [f"{key}: encrypted, and no key was given to check it"]
                try:
                    cipher = cipher.for_fingerprint(artifact.get("key_fingerprint"), key)
                except EncryptionError as exc:
                    return [str(exc)]
                chunks = decrypted_chunks(chunks, cipher)
            for chunk in decoded_chunks(chunks, artifact.get("compression")):
                original.update(chunk)
        except Exception as exc:  # each artifact's problem is reported; the caller fails on any
            problem = [f"{key}: {type(exc).__name__}: {exc}"]
            if read_failed:  # the object could not be read: that is the problem
                return problem
            try:  # a damaged object fails to decrypt or decompress: read the rest, to say it is damaged
                for _ in raw:
                    pass
            except Exception:
                return problem
            return damaged() or problem
        if damaged():
            return damaged()
        if artifact.get("raw_sha256") and original.hexdigest() != artifact["raw_sha256"]:
            return [f"{key}: its decoded content differs from the manifest"]
        if artifact.get("content_mac") and cipher.content_mac(original.digest()) != artifact["content_mac"]:
            return [f"{key}: its decrypted content differs from the manifest (keyed digest)"]
        return []

    def abort_stale_uploads(self, before: datetime) -> list[str]:
        """Abort the multipart uploads started before ``before``, which only a dead run can have left (its parts
        stay stored, invisible, until aborted); return their keys. Call it holding the lock: then no other run
        is uploading. Uploads are found in the bucket's listing and through the notes every upload leaves under
        ``.ragvault/uploads/`` until it ends (MinIO lists an open upload only by its exact key after a restart).
        """
        found: dict[tuple[str, str], str | None] = {}
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < before:
                    found[(upload["Key"], upload["UploadId"])] = None
        for note in self.list_keys(UPLOADS_PREFIX):
            if note["LastModified"] >= before:
                continue
            try:
                noted = json.loads(b"".join(self.iter_object(note["Key"])))
                found[(noted["key"], noted["upload_id"])] = note["Key"]
            except (ValueError, KeyError, TypeError):
                log.warning("%s is not an upload note: removed", note["Key"])
                self.client.delete_object(Bucket=self.bucket, Key=note["Key"])
        aborted = []
        for (key, upload_id), note_key in sorted(found.items()):
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                aborted.append(key)
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                    raise
            self.client.delete_object(Bucket=self.bucket, Key=note_key or upload_marker_key(key, upload_id))
        return aborted

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
                **({"seconds": result.seconds} if result.seconds is not None else {}),
            }
            for artifact in result.artifacts:
                entry = {**artifact.to_dict(), "key": self.final_key(artifact.key), "component": result.component,
                         "item": result.item}
                if entry["key"] != artifact.key:
                    entry["stored_at"] = artifact.key  # written aside: moved into place by the commit
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

    def commit_manifest(self, manifest: dict[str, Any], fence: Callable[[], None] | None = None) -> str:
        """Close a backup: check every object, write the manifest, move staged objects into place, prune the rest.

        Every step leaves the date with one complete, restorable backup, the previous one or the new one; no
        step removes a manifest:

        1. every artifact is checked where it is (HEAD: present, with its recorded size) and its ETag recorded;
           nothing is written when one is missing;
        2. ``fence`` is called (the run proves it still holds the bucket's lock), then the manifest is written
           in one PUT, which replaces the previous one atomically. Objects a rerun wrote aside are named
           where they are (``stored_at``, under ``<date>/.staging/<token>/``): the new backup is complete and
           restorable from that instant;
        3. :meth:`finish_commit` copies each staged object to its final key, records the copy's ETag, writes
           the manifest again without ``stored_at``, and removes what the manifest does not name.

        A crash in step 3 leaves a manifest that still names staged objects, which stay until it no longer
        does: readers read them there, and the next run of the date (``plan_backup``) or a retry of the commit
        finishes the move (:meth:`repair`).
        """
        date = manifest["backup_date"]
        problems = []
        for artifact in manifest["artifacts"]:
            where = artifact.get("stored_at") or artifact["key"]
            head = self.head(where)
            if head is None:
                problems.append(f"{where}: missing")
            elif head["ContentLength"] != artifact["size"]:
                problems.append(f"{where}: {head['ContentLength']} bytes stored, {artifact['size']} expected")
            elif artifact.get("etag") and head["ETag"] != artifact["etag"]:
                problems.append(f"{where}: changed since it was recorded (ETag {head['ETag']}, "
                                f"not {artifact['etag']})")
            else:
                artifact["etag"] = head["ETag"]
        if problems:
            raise RepositoryError(f"backup {date} is not consistent, manifest not written: " + "; ".join(problems))
        if fence is not None:
            fence()
        key = self._write_manifest(manifest)
        staged = sum(1 for a in manifest["artifacts"] if a.get("stored_at"))
        if staged:
            log.info("backup %s committed: %d of its objects are still staged, moving them into place", date, staged)
        self.finish_commit(manifest)
        return key

    def finish_commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Move a committed manifest's staged objects into place, write it again, remove what it does not name.

        Idempotent: run again after a crash at any point, it completes what is left. Returns what it did:
        ``{"moved": n, "removed": n, "removed_bytes": n}``.
        """
        date = manifest["backup_date"]
        staged = [a for a in manifest["artifacts"] if a.get("stored_at")]
        for artifact in staged:
            self._promote(artifact)
        if staged:
            self._write_manifest(manifest)
            log.info("backup %s: %d staged objects moved into place", date, len(staged))
        removed, removed_bytes = self._prune(manifest)
        return {"moved": len(staged), "removed": removed, "removed_bytes": removed_bytes}

    def repair(self, date: str) -> dict[str, Any] | None:
        """Finish what a crash left of a commit of ``date``: staged objects its manifest still names are moved
        into place, objects it does not name (staged copies, abandoned staging folders) removed. Call it
        holding the lock. Returns what :meth:`finish_commit` did, or None when there was nothing to do."""
        manifest = self.read_manifest(date)
        if manifest is None:
            return None
        if any(a.get("stored_at") for a in manifest["artifacts"]):
            log.warning("backup %s: its commit (run %s) was interrupted after the manifest was written; finishing "
                        "it", date, manifest.get("run", {}).get("run_id"))
        done = self.finish_commit(manifest)
        return done if done["moved"] or done["removed"] else None

    def _write_manifest(self, manifest: dict[str, Any]) -> str:
        date = manifest["backup_date"]
        key = self.manifest_key(date)
        state = manifest.get("state") or {}
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        summary = manifest_summary(manifest)
        # the index names the manifest it summarises: the old name goes first, so that a crash in between
        # leaves no name at all (the catalog then reads the manifest's HEAD), never a stale one
        self.drop_index(date, "m")
        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                        Metadata={"state-captured-at": state.get("captured_at") or "",
                                                  "backup-date": date, "format": MANIFEST_FORMAT, **summary})
        self.write_index(date, "m", answer["ETag"].strip('"'),
                         {**summary, "state-captured-at": state.get("captured_at") or ""})
        log.info("manifest s3://%s/%s written: %d artifacts", self.bucket, key, len(manifest["artifacts"]))
        return key

    # -- the catalog's index ----------------------------------------------------------------------------
    @staticmethod
    def index_prefix(date: str | None = None) -> str:
        return CATALOG_PREFIX + (f"{check_date(date)}/" if date else "")

    def write_index(self, date: str, kind: str, etag: str, fields: dict[str, str]) -> None:
        """Name ``<prefix><date>/<kind>.<manifest etag>/<fields as base64url JSON>`` (``m``: the manifest's
        summary, ``v``: the last verification of that manifest); the body is empty."""
        packed = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode()
        # in segments of 200: MinIO keeps an object as a file, and a file name ends at 255 bytes
        key = f"{self.index_prefix(date)}{kind}.{etag}/" + "/".join(packed[i:i + 200]
                                                                   for i in range(0, len(packed), 200))
        if len(key.encode()) > 1000:  # S3 names end at 1024 bytes: without a name the catalog reads the HEAD
            log.warning("%s: catalog summary too long for an index name; listing reads the manifest instead", date)
            return
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    def drop_index(self, date: str, kind: str | None = None) -> None:
        """Remove the index names of ``date`` (of one ``kind`` only, when given)."""
        prefix = self.index_prefix(date) + (f"{kind}." if kind else "")
        for obj in list(self.list_keys(prefix)):
            self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    def catalog_index(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every index name, read from one paginated LIST: ``{date: {kind: {"etag", "fields"}}}`` (the newest
        name of a kind wins when a crash left two)."""
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for obj in self.list_keys(CATALOG_PREFIX):
            date, _, name = obj["Key"][len(CATALOG_PREFIX):].partition("/")
            head, _, packed = name.partition("/")
            kind, _, etag = head.partition(".")
            packed = packed.replace("/", "")
            try:
                fields = json.loads(base64.urlsafe_b64decode(packed.encode()))
            except ValueError:
                continue
            seen = found.setdefault(date, {}).get(kind)
            if seen is None or obj["LastModified"] > seen["modified"]:
                found[date][kind] = {"etag": etag, "fields": fields, "modified": obj["LastModified"]}
        return found

    def _prune(self, manifest: dict[str, Any]) -> tuple[int, int]:
        """Remove the objects under the manifest's date that it does not name (an earlier run's, staged copies
        already moved, abandoned staging folders); one line in the log says how many."""
        date = manifest["backup_date"]
        keep = {a.get("stored_at") or a["key"] for a in manifest["artifacts"]} | {
            self.manifest_key(date), self.verification_key(date), f"{date}/{DRILL_NAME}"}
        removed = removed_bytes = 0
        for obj in self.list_keys(f"{date}/"):
            if obj["Key"] not in keep:
                log.debug("removing %s: not part of the backup of %s", obj["Key"], date)
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                removed += 1
                removed_bytes += obj.get("Size", 0)
        if removed:
            log.info("backup %s: removed %d objects (%d bytes) that its manifest does not name (staged copies "
                     "moved into place, an earlier run's objects)", date, removed, removed_bytes)
        return removed, removed_bytes

    def _promote(self, artifact: dict[str, Any]) -> None:
        """Copy a staged object to its final key (server-side), check it, record its ETag."""
        from boto3.s3.transfer import TransferConfig

        source = artifact["stored_at"]
        # One CopyObject up to 4 GiB (metadata kept); S3's multipart copy beyond, part by part.
        config = TransferConfig(multipart_threshold=4 * 1024 * MiB, multipart_chunksize=512 * MiB)
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, artifact["key"], Config=config)
        head = self.head(artifact["key"])
        if head is None or head["ContentLength"] != artifact["size"]:
            raise RepositoryError(f"{source} -> {artifact['key']}: the copy is missing or has another size")
        artifact["etag"] = head["ETag"]
        del artifact["stored_at"]
        if artifact["size"] >= PROGRESS_EVERY:
            log.info("moved %s into place (%d MiB)", artifact["key"], artifact["size"] // MiB)

    def read_manifest(self, date: str) -> dict[str, Any] | None:
        """The manifest of ``date``, or None when the date has none; one that cannot be read as a manifest of
        that date raises :class:`ManifestError` naming the object."""
        key = self.manifest_key(date)
        if self.head(key) is None:
            return None
        return parse_manifest(b"".join(self.iter_object(key)), f"s3://{self.bucket}/{key}", date)

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
        """Dates that hold a readable manifest (complete backups), oldest first."""
        return [entry["date"] for entry in self.catalog()]

    def catalog(self) -> list[dict[str, Any]]:
        """The complete backups, oldest date first: ``{"date", "state_captured_at"}`` each.

        ``state_captured_at`` is when the backup's state parts were captured (None for a backup that holds
        only interval data); it comes from the manifest's object metadata, or from the manifest itself for
        manifests written without it. A manifest that is not one of this package's manifests for its date
        (not JSON, another format, another date: copied by hand, say) is reported by its key and left out, so
        that every other backup stays listed and restorable.
        """
        entries = []
        for date, head in self._manifest_heads():
            metadata = head.get("Metadata") or {}
            try:
                if metadata.get("backup-date") == date and metadata.get("format") == MANIFEST_FORMAT:
                    captured = metadata.get("state-captured-at") or None
                else:  # written before the metadata said it all, or not by this package: read it
                    captured = state_captured_at(self.read_manifest(date) or {})
            except ManifestError as exc:
                log.warning("%s: left out of the catalog", exc)
                continue
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
