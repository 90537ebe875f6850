"""Retention on the real MinIO: a simulated year of nightly backups, the GFS rules, the protected dates, and
``ragvault prune`` with its dry run, lock and exit codes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ragvault.catalog import backup_dates
from ragvault.lock import BucketLock
from ragvault.repository import BackupRepository
from ragvault.retention import Policy, apply_retention, plan_retention

RAGVAULT = str(Path(sys.executable).with_name("ragvault"))
TODAY = dt.date(2032, 1, 2)
POLICY = Policy(enabled=True, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=2, min_age_days=3,
                incomplete_after_days=7)
#: worked out by hand from the calendar: 7 days; the newest backup of ISO weeks 2032-W01 (Wed 12-31), 2031-W52
#: (Sun 12-28), W51 (12-21), W50 (12-14); the last day of each month; the year 2031 (12-31); plus the protected:
#: 06-15 (newest captured state), 03-10 (unreadable manifest), 02-14 (the running backup's), 2032-01-01 (an
#: incomplete date younger than min_age_days)
KEPT = sorted(
    [f"2031-12-{d}" for d in range(25, 32)]
    + ["2031-12-14", "2031-12-21"]
    + ["2031-01-31", "2031-02-28", "2031-03-31", "2031-04-30", "2031-05-31", "2031-06-30", "2031-07-31",
       "2031-08-31", "2031-09-30", "2031-10-31", "2031-11-30"]
    + ["2031-06-15", "2031-03-10", "2031-02-14", "2032-01-01"])


def nightly(repo: BackupRepository, date: str, state_at: str | None) -> None:
    """One night's backup: an artifact object and its manifest (written by the repository, with its summary)."""
    key = f"{date}/redis/dump.rdb.zst"
    repo.client.put_object(Bucket=repo.bucket, Key=key, Body=b"rdb of " + date.encode())
    repo._write_manifest({
        "format": "ragvault.manifest/v1", "backup_date": date, "bucket": repo.bucket, "created_at": f"{date}T02:05:00Z",
        "run": {"run_id": f"scheduled__{date}"}, "artifacts": [{"key": key, "component": "redis", "item": "all",
                                                                 "size": 7 + len(date), "sha256": "0" * 64}],
        "components": {"redis": {"mode": "capture", "captured_at": state_at, "counts": {"keys": 1}, "items": {}}},
        "state": {"captured": state_at is not None, "captured_at": state_at}})


@pytest.fixture
def year(new_bucket, s3_client):
    """A bucket holding a nightly backup for every day of 2031, except: 04-02 left incomplete (an artifact, no
    manifest), 03-10 with a manifest that is not one, 06-15 rerun with the newest captured state, 2032-01-01
    incomplete (still running, say)."""
    repo = BackupRepository(s3_client, new_bucket("ragvault-retention"))
    day = dt.date(2031, 1, 1)
    while day.year == 2031:
        date = day.isoformat()
        if date == "2031-04-02":
            repo.client.put_object(Bucket=repo.bucket, Key=f"{date}/qdrant/export/docs.jsonl.zst", Body=b"cut short")
        elif date == "2031-03-10":
            repo.client.put_object(Bucket=repo.bucket, Key=f"{date}/manifest.json", Body=b"{not json")
        else:
            nightly(repo, date, "2032-01-01T09:00:00Z" if date == "2031-06-15" else f"{date}T02:01:00Z")
        day += dt.timedelta(days=1)
    repo.client.put_object(Bucket=repo.bucket, Key="2032-01-01/redis/dump.rdb.zst", Body=b"in progress")
    return repo


def test_a_year_of_nightly_backups_keeps_exactly_the_gfs_dates_and_the_protected_ones(year):
    dry = apply_retention(year, POLICY, today=TODAY, protect={"2031-02-14"}, dry_run=True)
    assert sorted(d for d, v in dry["decisions"].items() if v["keep"]) == KEPT
    assert len(backup_dates(year)) == 366 and dry["removed"] == []  # a dry run removes nothing

    reasons = dry["decisions"]
    assert reasons["2031-12-31"]["reasons"][:1] == ["newest complete backup"]
    assert "weekly 2031-W52" in reasons["2031-12-28"]["reasons"]
    assert "monthly 2031-02" in reasons["2031-02-28"]["reasons"]
    assert reasons["2031-06-15"]["reasons"] == ["newest captured state (what `latest` restores)"]
    assert reasons["2031-03-10"]["reasons"][0].startswith("its manifest cannot be read")
    assert reasons["2031-04-02"]["reasons"] == ["incomplete for more than incomplete_after_days (275 > 7)"]
    assert reasons["2031-07-04"]["reasons"] == ["no keep rule matched"]

    done = apply_retention(year, POLICY, today=TODAY, protect={"2031-02-14"})
    assert done["failed"] == {} and len(done["removed"]) == 366 - len(KEPT)
    assert backup_dates(year) == KEPT  # nothing is left of a removed date, not even its artifacts
    assert set(year.catalog_index()) == set(KEPT) - {"2031-03-10", "2032-01-01"}  # nor its index names
    assert [o["Key"] for o in year.list_keys("2031-07-04/")] == []
    assert year.read_manifest("2031-12-31") is not None and year.read_manifest("2031-06-15") is not None
    # applied again, the same rules find nothing more to remove
    again = apply_retention(year, POLICY, today=TODAY, protect={"2031-02-14"})
    assert again["removed"] == [] and backup_dates(year) == KEPT


def test_min_age_and_zero_rules_keep_only_what_is_protected():
    """With every keep_* at 0, only the protected dates stay: the newest, the newest state, the young ones."""
    entries = [{"date": f"2031-05-{d:02d}", "complete": True, "state_captured_at": f"2031-05-{d:02d}T02:00:00Z",
                "size": 10} for d in range(1, 11)]
    policy = Policy(enabled=True, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0, min_age_days=4)
    decisions = plan_retention(entries, policy, dt.date(2031, 5, 12))
    assert sorted(d for d, v in decisions.items() if v["keep"]) == ["2031-05-09", "2031-05-10"]
    assert decisions["2031-05-09"]["reasons"] == ["younger than min_age_days (3 < 4)"]
    with pytest.raises(ValueError, match="keep_daily must be 0 or more"):
        Policy.from_settings({"keep_daily": -1})


def prune(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAGVAULT, "--config", str(config), "prune", *args], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})


def test_ragvault_prune_dry_run_then_prune_under_the_lock(s3_client, new_bucket, tmp_path):
    repo = BackupRepository(s3_client, new_bucket("ragvault-prune"))
    today = dt.datetime.now(dt.UTC).date()
    dates = [(today - dt.timedelta(days=n)).isoformat() for n in range(40, -1, -1)]
    for date in dates:
        nightly(repo, date, f"{date}T02:01:00Z")
    config = tmp_path / "ragvault.yaml"
    settings = {"bucket": repo.bucket, "retention": {"keep_daily": 5, "keep_weekly": 0, "keep_monthly": 0,
                                                      "keep_yearly": 0, "min_age_days": 2}}
    config.write_text(yaml.safe_dump(settings))

    refused = prune(config)  # not enabled: only the dry run is allowed
    assert refused.returncode == 2 and "retention is not enabled" in refused.stderr
    dry = prune(config, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["decisions"]
    assert sorted(d for d, v in planned.items() if v["keep"]) == dates[-5:]
    assert backup_dates(repo) == dates
    text = prune(config, "--dry-run")
    assert "would remove" in text.stdout and "36 to remove" in text.stdout and "daily" in text.stdout

    settings["retention"]["enabled"] = True
    config.write_text(yaml.safe_dump(settings))
    holder = BucketLock(s3_client, repo.bucket, "scheduled__running")
    holder.acquire(wait=0)
    try:
        locked = prune(config)
        assert locked.returncode == 3 and "held by run scheduled__running" in locked.stderr
        assert backup_dates(repo) == dates
    finally:
        holder.release()
    done = prune(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 kept, 36 removed" in done.stdout
    assert backup_dates(repo) == dates[-5:]
    assert BucketLock(s3_client, repo.bucket, "x").holder() is None  # released
