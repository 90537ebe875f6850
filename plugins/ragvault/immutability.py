"""Immutable backups with S3 Object Lock: nobody holding the bucket's credentials (nor ransomware on a worker)
can delete or overwrite a backup before its date.

With ``object_lock.mode`` set (``governance`` or ``compliance``), the bucket must have been created with object
lock enabled (which also turns versioning on): :func:`check_bucket` says so before a run writes anything. Once a
backup is committed, every object of it (artifacts first, the manifest last) gets a retention (mode and
retain-until date) on its current version: :func:`seal`. Objects a run writes aside (staging) are never locked,
so a rerun can still move its objects into place and remove its staging copies.

The retain-until date is when retention could first remove the backup: ``object_lock.days`` after its date,
or by default ``max(retention.min_age_days, retention.keep_daily)`` days after it. Retention extends the lock
of a backup that a weekly, monthly or yearly rule keeps longer (:func:`extend`), never tries to remove a date
still locked (:func:`locked_until`), and removes a date's every version (:func:`delete_versions`), so that a
removal frees the space instead of leaving delete markers over locked versions.

In a locked bucket, a plain DELETE only adds a delete marker and a PUT adds a new version: the locked versions
stay, and can be brought back (``mc undo``, or a GET with ``VersionId``). The manifest records each object's
ETag, so a restore refuses an object replaced behind it rather than mixing it in.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from ragvault.repository import BackupRepository, RepositoryError, batched

log = logging.getLogger(__name__)

MODES = ("governance", "compliance")


@dataclass(frozen=True)
class ObjectLock:
    """The ``object_lock`` settings: ``mode`` (None: no lock) and ``days`` (None: from the retention rules)."""

    mode: str | None = None
    days: int | None = None

    @classmethod
    def from_settings(cls, data: dict[str, Any] | None) -> ObjectLock:
        data = data or {}
        mode = data.get("mode")
        mode = str(mode).lower() if mode not in (None, "", False) else None
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode is {mode!r}: expected governance, compliance or null")
        days = data.get("days")
        days = None if days in (None, "") else int(days)
        if days is not None and days < 1:
            raise ValueError(f"days is {days}: at least 1 (or null: from the retention rules)")
        return cls(mode=mode, days=days)

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def lock_days(self, policy) -> int:
        """How many days after its date a backup is locked: ``days``, else when retention could first remove
        it (``max(min_age_days, keep_daily)``; ``days`` is needed when retention is disabled)."""
        if self.days is not None:
            return self.days
        if not policy.enabled:
            raise ValueError("days must be set when retention is disabled (nothing says when a backup may go)")
        return max(policy.min_age_days, policy.keep_daily, 1)


def day_start(date: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(date), dt.time(), tzinfo=dt.UTC)


def retain_until(date: str, days: int) -> dt.datetime:
    """Midnight UTC ``days`` after the backup's date."""
    return day_start(date) + dt.timedelta(days=days)


def check_bucket(repo: BackupRepository, lock: ObjectLock) -> None:
    """With a lock mode set, the bucket must have object lock enabled: a RepositoryError saying how otherwise."""
    if not lock.enabled:
        return
    try:
        answer = repo.client.get_object_lock_configuration(Bucket=repo.bucket)
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except repo.client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("ObjectLockConfigurationNotFoundError",
                                                              "ObjectLockConfigurationNotFound", "404"):
            raise
        enabled = False
    if not enabled:
        raise RepositoryError(
            f"object_lock.mode is {lock.mode}, but bucket {repo.bucket!r} was created without object lock (S3 "
            "turns it on only when a bucket is created): create a bucket with it (`mc mb --with-lock`, or "
            "CreateBucket with ObjectLockEnabledForBucket) and copy the backups there (`mc mirror`), or set "
            "object_lock.mode to null")


def _retain(repo: BackupRepository, key: str, mode: str, until: dt.datetime, version_id: str | None = None) -> None:
    repo.client.put_object_retention(
        Bucket=repo.bucket, Key=key, **({"VersionId": version_id} if version_id else {}),
        Retention={"Mode": mode.upper(), "RetainUntilDate": until})


def seal(repo: BackupRepository, manifest: dict[str, Any], lock: ObjectLock, until: dt.datetime) -> int:
    """Lock every object of a committed backup until ``until`` (never shortening a longer lock): its artifacts,
    then its manifest, so a locked manifest means a locked backup. Returns the objects locked; 0 when
    ``until`` has passed already (a backfill of an old day: retention decides about it)."""
    if not lock.enabled:
        return 0
    date = manifest["backup_date"]
    if until <= dt.datetime.now(dt.UTC):
        log.info("object lock: backup %s is older than its lock period (until %s): not locked", date,
                 until.isoformat())
        return 0
    keys = [a.get("stored_at") or a["key"] for a in manifest["artifacts"]] + [repo.manifest_key(date)]
    locked = 0
    for key in keys:
        current = _locked_until(repo, key)
        if current is not None and current >= until:
            continue
        _retain(repo, key, lock.mode, until)
        locked += 1
    log.info("object lock: backup %s locked (%s) until %s: %d objects", date, lock.mode, until.isoformat(), locked)
    return locked


def _locked_until(repo: BackupRepository, key: str) -> dt.datetime | None:
    head = repo.head(key)
    if head is None:
        return None
    return head.get("ObjectLockRetainUntilDate")


def locked_until(repo: BackupRepository, date: str) -> dt.datetime | None:
    """Until when the backup of ``date`` is locked (its manifest's retain-until date, which :func:`seal` sets
    last), or None when it is not locked."""
    return _locked_until(repo, repo.manifest_key(date))


def extend(repo: BackupRepository, date: str, lock: ObjectLock, until: dt.datetime) -> int:
    """Lengthen the lock of every object of the backup of ``date`` to ``until`` (retention keeps it longer than
    its first lock). Returns the objects whose lock was extended."""
    manifest = repo.read_manifest(date)
    if manifest is None:
        return 0
    return seal(repo, manifest, lock, until)


def is_versioned(repo: BackupRepository) -> bool:
    """Whether the bucket keeps versions (object lock turns versioning on)."""
    try:
        answer = repo.client.get_bucket_versioning(Bucket=repo.bucket)
    except repo.client.exceptions.ClientError as exc:  # a key without s3:GetBucketVersioning
        log.warning("bucket %s: its versioning cannot be read (%s): removals delete current versions only",
                    repo.bucket, exc.response.get("Error", {}).get("Code"))
        return False
    return answer.get("Status") in ("Enabled", "Suspended")


def delete_versions(repo: BackupRepository, prefix: str, first: str | None = None) -> tuple[int, int]:
    """Delete every version (and delete marker) of every object under ``prefix``, ``first``'s before the others.
    A version still locked is refused by the server: a RepositoryError names it. Returns (versions, bytes)."""

    def versions(where: str):
        paginator = repo.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=repo.bucket, Prefix=where):
            yield from page.get("Versions", []) + page.get("DeleteMarkers", [])

    removed = size = 0
    passes = ([first] if first else []) + [prefix]
    for where in passes:
        for page in batched(versions(where), 1000):
            answer = repo.client.delete_objects(Bucket=repo.bucket, Delete={
                "Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                e = errors[0]
                raise RepositoryError(f"{len(errors)} version(s) under {prefix} could not be removed, e.g. "
                                      f"{e.get('Key')} (version {e.get('VersionId')}): {e.get('Code')} "
                                      f"{e.get('Message')}")
            removed += len(page)
            size += sum(v.get("Size", 0) for v in page)
    return removed, size
