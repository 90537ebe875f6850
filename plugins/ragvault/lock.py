"""The bucket's lock: one run at a time (a backup, a backfill day or a restore) pauses ingestion and writes.

The lock is one object, ``s3://<bucket>/ragvault.lock``, created only if absent (``If-None-Match: *``) and
changed only if unchanged since it was read (``If-Match``), so two runs never both believe they hold it.

It is a *lease*: its holder writes when it expires (``expires_at``, ``lease_seconds`` after its last renewal)
and renews it while it works (:meth:`BucketLock.keep_alive`, a thread of every long task of the run). A run
that dies (its worker killed, its machine gone) stops renewing, and the next run takes the lock over once the
lease has run out: minutes, not hours. A run that finds its lock taken over (it stalled past its lease) is
told so at its next renewal and commits nothing (:meth:`BucketLock.renew` is the fence before a manifest).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from ragvault.repository import RepositoryError

log = logging.getLogger(__name__)

LOCK_KEY = "ragvault.lock"
#: how long a lease lasts without renewal, unless the settings say otherwise (``lock.lease_seconds``)
DEFAULT_LEASE = 600.0


class LockedError(RepositoryError):
    """Another run holds the bucket's lock."""


class LockLostError(RepositoryError):
    """This run's lease ran out and another run took the lock over."""


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    # milliseconds: a lease written to the second would lose up to a second of its length
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expires_at(holder: dict[str, Any], lease: float) -> datetime:
    """When a lock's lease runs out: its ``expires_at``; for a lock written without one, its last renewal (or
    acquisition) plus ``lease``; a lock whose times cannot be read has expired."""
    recorded = _parse(holder.get("expires_at"))
    if recorded is not None:
        return recorded
    since = _parse(holder.get("renewed_at")) or _parse(holder.get("acquired_at"))
    return since + timedelta(seconds=lease) if since else datetime.min.replace(tzinfo=UTC)


class BucketLock:
    """The bucket's lock as seen by one run (``owner``: its run id).

    :param client: a boto3 S3 client.
    :param bucket: the bucket holding the backups.
    :param owner: who takes the lock: the run id.
    :param lease: seconds the lock stays held without a renewal.
    """

    def __init__(self, client, bucket: str, owner: str, *, lease: float = DEFAULT_LEASE):
        self.client, self.bucket, self.owner, self.lease = client, bucket, owner, float(lease)
        self.url = f"s3://{bucket}/{LOCK_KEY}"
        self._since: datetime | None = None

    def acquired_at(self) -> datetime:
        """When this run took the lock (as last seen by :meth:`acquire` or :meth:`renew`; now if never)."""
        return self._since or datetime.now(UTC)

    # -- reading ---------------------------------------------------------------------------------------
    def holder(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and ETag, or None when nobody holds it. A body that is not a JSON object (a
        hand-made or truncated lock) reads as a holder without times: it has expired."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=LOCK_KEY)
        except self.client.exceptions.NoSuchKey:
            return None
        raw = response["Body"].read()
        try:
            content = json.loads(raw)
        except ValueError:
            content = None
        if not isinstance(content, dict):
            log.warning("%s does not hold a lock this package wrote (%d bytes): treated as expired", self.url,
                        len(raw))
            content = {"owner": None}
        return content, response["ETag"]

    def _body(self, acquired_at: str | None = None) -> bytes:
        now = datetime.now(UTC)
        self._since = _parse(acquired_at) or now
        return json.dumps({
            "owner": self.owner,
            "host": socket.gethostname(),
            "acquired_at": acquired_at or _iso(now),
            "renewed_at": _iso(now),
            "expires_at": _iso(now + timedelta(seconds=self.lease)),
            "lease_seconds": self.lease,
        }).encode()

    def _put(self, body: bytes, **condition: str) -> bool:
        """A conditional PUT of the lock; False when the condition failed (someone else changed it first)."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=LOCK_KEY, Body=body, ContentType="application/json",
                                   **condition)
            return True
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                             "412", "409"):
                return False
            raise

    # -- taking, renewing, releasing -------------------------------------------------------------------
    def acquire(self, *, wait: float, poll: float = 5.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for another run's to be released or to expire.

        Taking it again as its owner (a retry of the same run) renews it at once.
        """
        deadline = time.monotonic() + wait
        while True:
            if self._put(self._body(), IfNoneMatch="*"):
                log.info("lock %s taken by %s (lease %.0f s)", self.url, self.owner, self.lease)
                return
            held = self.holder()
            if held is None:
                continue
            holder, etag = held
            if holder.get("owner") == self.owner:
                if self._put(self._body(holder.get("acquired_at")), IfMatch=etag):
                    log.info("lock %s already held by this run (%s): renewed", self.url, self.owner)
                    return
                continue
            expiry = expires_at(holder, self.lease)
            if datetime.now(UTC) > expiry:
                if self._put(self._body(), IfMatch=etag):
                    log.warning("lock %s of run %s (host %s, lease ran out at %s) taken over by %s: that run "
                                "stopped renewing it (it died, or stalled)", self.url, holder.get("owner"),
                                holder.get("host"), _iso(expiry), self.owner)
                    return
                continue  # someone else changed it first: look again
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.url} is held by run {holder.get('owner')} (host {holder.get('host')}, since "
                    f"{holder.get('acquired_at')}, lease until {_iso(expiry)}); waited {wait:.0f} s. A run that "
                    f"died stops renewing its lease: the lock is free after {_iso(expiry)}")
            log.info("lock held by %s until %s: waiting", holder.get("owner"), _iso(expiry))
            time.sleep(min(poll, max(0.1, deadline - time.monotonic())))

    def renew(self) -> None:
        """Extend this run's lease. Takes the lock again if nobody holds it (the lease ran out and no run took
        it); raises :class:`LockLostError` if another run holds it."""
        for _ in range(5):
            held = self.holder()
            if held is None:
                if self._put(self._body(), IfNoneMatch="*"):
                    log.warning("lock %s had expired with nobody holding it: taken again by %s", self.url,
                                self.owner)
                    return
                continue
            holder, etag = held
            if holder.get("owner") != self.owner:
                raise LockLostError(
                    f"{self.url} is now held by run {holder.get('owner')} (host {holder.get('host')}, since "
                    f"{holder.get('acquired_at')}): the lease of {self.owner} ran out (lock.lease_seconds = "
                    f"{self.lease:.0f}) and was taken over. This run stops here and commits nothing")
            if self._put(self._body(holder.get("acquired_at")), IfMatch=etag):
                return
            # Changed since read: by another task of this run renewing it too (the lease is extended
            # either way), or taken over, which the next look says.
            again = self.holder()
            if again is not None and again[0].get("owner") == self.owner:
                self._since = _parse(again[0].get("acquired_at")) or self._since
                return
        raise RepositoryError(f"{self.url}: could not renew the lease of {self.owner}: it kept changing under it")

    def release(self, *, attempts: int = 1, delay: float = 2.0) -> bool:
        """Release the lock if this run holds it; True if it was released. Retried ``attempts`` times (doubling
        ``delay``) when the bucket cannot be reached; the last error is raised."""
        for attempt in range(1, attempts + 1):
            try:
                held = self.holder()
                if held is None or held[0].get("owner") != self.owner:
                    return False
                self.client.delete_object(Bucket=self.bucket, Key=LOCK_KEY, IfMatch=held[1])
                log.info("lock %s released by %s", self.url, self.owner)
                return True
            except LockLostError:
                raise
            except Exception as exc:
                if attempt == attempts:
                    raise
                log.warning("lock %s: could not release it (try %d of %d): %s: %s; again in %.0f s", self.url,
                            attempt, attempts, type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay *= 2
        return False

    @contextmanager
    def keep_alive(self, interval: float | None = None) -> Iterator[BucketLock]:
        """Renew the lease every ``interval`` seconds (a quarter of the lease by default) while the block runs.

        The lease is renewed once on entry: a run whose lock was taken over fails here, before it works. A
        renewal that fails for another reason (the bucket briefly unreachable) is retried at the next tick.
        """
        self.renew()
        stop = threading.Event()
        every = interval if interval is not None else max(1.0, self.lease / 4)

        def beat() -> None:
            while not stop.wait(every):
                try:
                    self.renew()
                except LockLostError as exc:
                    log.error("%s", exc)
                    return
                except Exception as exc:  # the next tick tries again; the lease outlives a few failures
                    log.warning("lock %s: lease renewal failed: %s: %s", self.url, type(exc).__name__, exc)

        thread = threading.Thread(target=beat, name=f"ragvault-lease-{self.owner}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=every + 30)


def lease_seconds(lock_settings: dict[str, Any]) -> float:
    """The lease from the ``lock`` settings."""
    return float(lock_settings.get("lease_seconds") or DEFAULT_LEASE)
