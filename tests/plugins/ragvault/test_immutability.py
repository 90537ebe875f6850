"""Object lock on the real MinIO: a committed backup is locked and MinIO refuses to delete it; retention keeps a
locked date, removes every version of an unlocked one, extends the lock of a backup its rules keep longer; a
rerun of a locked date still commits; a bucket without object lock is refused before anything is written."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from ragvault.config import ConfigError, load_settings
from ragvault.immutability import ObjectLock, check_bucket, day_start, locked_until, retain_until, seal
from ragvault.repository import BackupRepository, ItemResult, RepositoryError
from ragvault.retention import Policy, apply_retention

LOCK = ObjectLock(mode="governance", days=1)


def day(offset: int) -> str:
    """The date ``offset`` days from today, today taken when called: a suite that runs across midnight UTC
    still locks a date whose one-day lock lies ahead."""
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=offset)).isoformat()


@pytest.fixture
def locked_repo(s3_client, new_bucket):
    """A bucket created with object lock (governance mode in these tests, so the session can empty it)."""
    return BackupRepository(s3_client, new_bucket("ragvault-locked", object_lock=True))


def backup(repo: BackupRepository, date: str, body: bytes = b"rdb", staging: str | None = None) -> dict:
    artifact = repo.put_artifact(date, "redis", "dump.rdb", body, staging=staging)
    result = ItemResult(component="redis", item="all", captured_at=f"{date}T02:00:00Z", counts={"keys": 1},
                        artifacts=[artifact])
    manifest = repo.build_manifest(date, [result], {"run_id": f"scheduled__{date}-{uuid.uuid4().hex[:4]}"})
    manifest["state"] = {"captured": True, "captured_at": f"{date}T02:00:00Z"}
    repo.commit_manifest(manifest)
    return manifest


def versions(repo: BackupRepository, prefix: str) -> list[dict]:
    page = repo.client.list_object_versions(Bucket=repo.bucket, Prefix=prefix)
    return page.get("Versions", []) + page.get("DeleteMarkers", [])


def test_a_committed_backup_is_locked_and_minio_refuses_to_delete_it(locked_repo):
    date = day(0)
    manifest = backup(locked_repo, date)
    until = retain_until(date, LOCK.days)
    assert seal(locked_repo, manifest, LOCK, until) == 2  # the artifact and the manifest
    for key in (manifest["artifacts"][0]["key"], locked_repo.manifest_key(date)):
        head = locked_repo.head(key)
        assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("GOVERNANCE", until), key
        with pytest.raises(ClientError, match="WORM protected"):
            locked_repo.client.delete_object(Bucket=locked_repo.bucket, Key=key, VersionId=head["VersionId"])
    assert locked_until(locked_repo, date) == until
    assert seal(locked_repo, manifest, LOCK, until) == 0  # sealed already: nothing to do

    # a rerun of the locked date commits (its staged copies are not locked, the old versions stay locked)
    again = backup(locked_repo, date, body=b"rdb of the rerun", staging="rerun1")
    assert seal(locked_repo, again, LOCK, until) == 2
    assert b"".join(locked_repo.iter_artifact(again["artifacts"][0])) == b"rdb of the rerun"
    assert not list(locked_repo.list_keys(f"{date}/.staging/"))  # no staged copy is left
    kept = [v for v in versions(locked_repo, f"{date}/redis/dump.rdb") if not v.get("IsLatest")]
    assert kept, "the first backup's locked version is kept beside the rerun's"


def test_retention_keeps_locked_dates_extends_locks_and_removes_every_version(locked_repo):
    policy = Policy(enabled=True, keep_daily=1, keep_weekly=2, keep_monthly=0, keep_yearly=0, min_age_days=0,
                    incomplete_after_days=0)
    # today (daily + weekly), 8 days ago (the newest of last week: weekly), 9 and 10 days ago (no rule keeps them)
    newest, last_week, unlocked, briefly = day(0), day(-8), day(-9), day(-10)
    manifests = {d: backup(locked_repo, d) for d in (newest, last_week, unlocked, briefly)}
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=6)
    seal(locked_repo, manifests[briefly], LOCK, soon)  # locked a few seconds more
    seal(locked_repo, manifests[last_week], LOCK, retain_until(last_week, 1))  # its first lock ran out

    outcome = apply_retention(locked_repo, policy, lock=LOCK)
    decisions = outcome["decisions"]
    assert outcome["removed"] == [unlocked] and outcome["failed"] == {}, outcome
    assert versions(locked_repo, f"{unlocked}/") == []  # every version gone, not hidden behind delete markers
    assert decisions[briefly]["keep"] and decisions[briefly]["reasons"][0].startswith(
        f"locked until {soon.isoformat()}"), decisions[briefly]
    # the weekly rule keeps last week's backup 2 weeks after its date: its lock is extended to then
    extended_to = day_start(last_week) + dt.timedelta(days=14)
    assert outcome["extended"] == {last_week: 2, newest: 2}, outcome["extended"]
    assert locked_until(locked_repo, last_week) == extended_to
    assert locked_repo.head(manifests[last_week]["artifacts"][0]["key"])["ObjectLockRetainUntilDate"] == extended_to
    assert locked_until(locked_repo, newest) == day_start(newest) + dt.timedelta(days=14)

    time.sleep(max(0.0, (soon - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    outcome = apply_retention(locked_repo, policy, lock=LOCK)
    assert outcome["removed"] == [briefly] and outcome["failed"] == {}, outcome
    assert versions(locked_repo, f"{briefly}/") == []
    assert outcome["extended"] == {}  # extended already
    assert sorted(d for d, v in outcome["decisions"].items() if v["keep"]) == [last_week, newest]


def test_a_bucket_without_object_lock_is_refused(new_bucket, s3_client):
    repo = BackupRepository(s3_client, new_bucket("ragvault-unlocked"))
    check_bucket(repo, ObjectLock())  # no lock asked: nothing to check
    with pytest.raises(RepositoryError, match="created without object lock .*mc mb --with-lock"):
        check_bucket(repo, LOCK)


def test_object_lock_settings_are_checked(tmp_path):
    path = tmp_path / "ragvault.yaml"
    path.write_text("object_lock:\n  mode: GOVERNANCE\n  days: 30\n")
    assert load_settings(path).object_lock == ObjectLock(mode="governance", days=30)
    path.write_text("object_lock:\n  mode: forever\n")
    with pytest.raises(ConfigError, match="object_lock: mode is 'forever'"):
        _ = load_settings(path).object_lock
    path.write_text("object_lock:\n  mode: compliance\n")  # retention disabled: nothing says how long
    with pytest.raises(ConfigError, match="days must be set when retention is disabled"):
        _ = load_settings(path).object_lock
    path.write_text("object_lock:\n  mode: compliance\nretention:\n  enabled: true\n  keep_daily: 9\n")
    assert load_settings(path).object_lock.lock_days(load_settings(path).retention) == 9
