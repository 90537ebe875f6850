"""The bucket's lock against a real MinIO: exclusive, re-entrant for its run, a lease that a dead run loses
within its lease time, renewed by a live one, and a fence for a run that lost it."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from ragvault.lock import LOCK_KEY, BucketLock, LockedError, LockLostError


@pytest.fixture
def lock_repo(s3_client, new_bucket):
    from ragvault.repository import BackupRepository

    return BackupRepository(s3_client, new_bucket("ragvault-lock"))


def lock(repo, owner: str, lease: float = 3600) -> BucketLock:
    return BucketLock(repo.client, repo.bucket, owner, lease=lease)


def stored(repo) -> dict:
    return json.loads(repo.client.get_object(Bucket=repo.bucket, Key=LOCK_KEY)["Body"].read())


def test_lock_is_exclusive_reentrant_and_released_by_its_owner_only(lock_repo):
    a, b = lock(lock_repo, "run-a"), lock(lock_repo, "run-b")
    a.acquire(wait=0)
    a.acquire(wait=0)  # a retry of the same run
    with pytest.raises(LockedError, match="held by run run-a"):
        b.acquire(wait=1, poll=0.2)
    assert not b.release()
    assert stored(lock_repo)["owner"] == "run-a"
    assert a.release()
    assert a.holder() is None
    b.acquire(wait=0)
    assert stored(lock_repo)["owner"] == "run-b"


def test_the_lock_records_its_lease(lock_repo):
    before = datetime.now(UTC).replace(microsecond=0)
    lock(lock_repo, "run-a", lease=120).acquire(wait=0)
    body = stored(lock_repo)
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert body["owner"] == "run-a" and body["lease_seconds"] == 120
    assert before + timedelta(seconds=119) <= expires <= datetime.now(UTC) + timedelta(seconds=121)


def test_a_dead_holder_is_taken_over_once_its_lease_runs_out(lock_repo):
    dead = lock(lock_repo, "dead-run", lease=2)
    dead.acquire(wait=0)
    with pytest.raises(LockedError, match="lease until"):
        lock(lock_repo, "run-1", lease=2).acquire(wait=0)
    # the dead run renews nothing; after its 2 s lease the next run takes the lock, waiting for it
    started = time.monotonic()
    lock(lock_repo, "run-1", lease=60).acquire(wait=30, poll=0.5)
    assert time.monotonic() - started < 10
    assert stored(lock_repo)["owner"] == "run-1"
    # the dead run, if it wakes up, is told at its next renewal and commits nothing
    with pytest.raises(LockLostError, match="now held by run run-1"):
        dead.renew()
    assert not dead.release()
    assert stored(lock_repo)["owner"] == "run-1"


def test_a_stale_lock_is_taken_over_by_exactly_one_run(lock_repo):
    old = json.dumps({"owner": "dead-run", "acquired_at": "2020-01-01T00:00:00Z", "host": "gone"}).encode()
    lock_repo.client.put_object(Bucket=lock_repo.bucket, Key=LOCK_KEY, Body=old)
    winners, errors = [], []

    def take(owner):
        try:
            lock(lock_repo, owner, lease=60).acquire(wait=0)
            winners.append(owner)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1, (winners, errors)
    assert all(isinstance(e, LockedError) for e in errors), errors
    assert stored(lock_repo)["owner"] == winners[0]


def test_a_lock_that_is_not_json_is_treated_as_expired(lock_repo):
    lock_repo.client.put_object(Bucket=lock_repo.bucket, Key=LOCK_KEY, Body=b"locked by hand")
    lock(lock_repo, "run-a").acquire(wait=0)
    assert stored(lock_repo)["owner"] == "run-a"


def test_keep_alive_renews_the_lease_while_the_run_works(lock_repo):
    mine = lock(lock_repo, "run-a", lease=4)
    mine.acquire(wait=0)
    first = stored(lock_repo)["expires_at"]
    with mine.keep_alive(interval=0.2):
        # longer than the lease: without the renewals another run could take it. The renewals come every
        # 0.2 s, so the lease survives a worker stalled for more than three seconds on a busy machine.
        time.sleep(5)
        with pytest.raises(LockedError):
            lock(lock_repo, "run-b", lease=4).acquire(wait=0)
    body = stored(lock_repo)
    assert body["owner"] == "run-a" and body["expires_at"] > first
    assert body["acquired_at"] <= first  # a renewal keeps when the lock was taken


def test_keep_alive_refuses_to_start_for_a_run_that_lost_the_lock(lock_repo):
    lock(lock_repo, "run-b").acquire(wait=0)
    with pytest.raises(LockLostError, match="run-b"):
        with lock(lock_repo, "run-a").keep_alive():
            pytest.fail("a run that lost the lock must not work")


def test_renewing_an_expired_lock_nobody_took_takes_it_again(lock_repo):
    mine = lock(lock_repo, "run-a")
    mine.acquire(wait=0)
    lock_repo.client.delete_object(Bucket=lock_repo.bucket, Key=LOCK_KEY)
    mine.renew()
    assert stored(lock_repo)["owner"] == "run-a"


def test_tasks_of_one_run_renewing_at_once_all_keep_the_lease(lock_repo):
    """Mapped tasks of a run start together and each renews the lease: a renewal that loses the race to a
    sibling's is a renewal all the same, never a failure."""
    lock(lock_repo, "run-a", lease=60).acquire(wait=0)
    errors = []

    def renew():
        try:
            lock(lock_repo, "run-a", lease=60).renew()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=renew) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stored(lock_repo)["owner"] == "run-a"
