"""Retention: which dated backups to keep, GFS style, and the removal of the others.

The rules are restic's ``forget --keep-daily/weekly/monthly/yearly``: going from the newest complete backup to the
oldest, ``keep_daily`` keeps the newest backup of each of the last N days that have one, ``keep_weekly`` of each of
the last N ISO weeks that have one, ``keep_monthly`` of N months, ``keep_yearly`` of N years; a backup kept by any
rule stays. Whatever the rules say, these are never removed:

- the newest complete backup, and the one whose state was captured last (what ``latest`` restores);
- a backup younger than ``min_age_days`` (by its date);
- a date the caller protects (the date the running backup just committed);
- a date whose manifest cannot be read (nothing is removed that cannot be understood).

A date without a manifest (a run that never committed) is removed once older than ``incomplete_after_days``.
Every decision carries the rule that made it; a removal deletes the manifest first, so a removal cut short
leaves an incomplete date (never a manifest naming missing objects), which the next prune finishes.

With object lock (``ragvault.immutability``), a date still locked is kept ("locked until ..."), never tried;
a kept backup whose rules keep it beyond its lock gets its lock extended (a weekly backup: ``keep_weekly``
weeks after its date; monthly: ``keep_monthly`` months of 31 days; yearly: ``keep_yearly`` years of 366 days);
and a removal deletes every version of the date's objects, so the space is freed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from ragvault.immutability import ObjectLock, day_start, delete_versions, extend, is_versioned, locked_until
from ragvault.repository import BackupRepository, batched

log = logging.getLogger(__name__)

RULES = ("daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Policy:
    """The retention settings (``retention`` in the settings file)."""

    enabled: bool = False
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 12
    keep_yearly: int = 2
    min_age_days: int = 3
    incomplete_after_days: int = 7

    @classmethod
    def from_settings(cls, data: dict[str, Any]) -> Policy:
        values = {}
        for name in cls.__dataclass_fields__:
            if name in data and data[name] is not None:
                values[name] = bool(data[name]) if name == "enabled" else int(data[name])
        policy = cls(**values)
        negative = [n for n in cls.__dataclass_fields__ if n != "enabled" and getattr(policy, n) < 0]
        if negative:
            raise ValueError(f"retention: {', '.join(negative)} must be 0 or more")
        return policy


def _bucket_key(rule: str, day: dt.date) -> str:
    if rule == "daily":
        return day.isoformat()
    if rule == "weekly":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if rule == "monthly":
        return f"{day.year}-{day.month:02d}"
    return str(day.year)


def plan_retention(entries: list[dict[str, Any]], policy: Policy, today: dt.date,
                   protect: frozenset[str] | set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Decide, for each of ``entries`` (``ragvault.catalog.list_backups``), whether it is kept and why.

    Returns ``{date: {"keep": bool, "reasons": [str, ...], "complete": bool, "size": int | None}}``.
    """
    decisions: dict[str, dict[str, Any]] = {
        e["date"]: {"keep": False, "reasons": [], "complete": e["complete"], "size": e.get("size")} for e in entries}
    complete = sorted((e for e in entries if e["complete"]), key=lambda e: e["date"], reverse=True)
    for rule in RULES:
        wanted, seen = getattr(policy, f"keep_{rule}"), []
        for entry in complete:
            if len(seen) >= wanted:
                break
            key = _bucket_key(rule, dt.date.fromisoformat(entry["date"]))
            if key not in seen:
                seen.append(key)
                decisions[entry["date"]]["reasons"].append(f"{rule} {key}")
    if complete:
        decisions[complete[0]["date"]]["reasons"].insert(0, "newest complete backup")
        stateful = [e for e in complete if e.get("state_captured_at")]
        if stateful:
            newest = max(stateful, key=lambda e: (e["state_captured_at"], e["date"]))
            decisions[newest["date"]]["reasons"].insert(0, "newest captured state (what `latest` restores)")
    for entry in entries:
        date, decision = entry["date"], decisions[entry["date"]]
        age = (today - dt.date.fromisoformat(date)).days
        if date in protect:
            decision["reasons"].insert(0, "the running backup's date")
        if entry.get("problem"):
            decision["reasons"].insert(0, "its manifest cannot be read: left alone")
        if age < policy.min_age_days:
            decision["reasons"].append(f"younger than min_age_days ({age} < {policy.min_age_days})")
        if not entry["complete"] and not entry.get("problem") and not decision["reasons"]:
            if age <= policy.incomplete_after_days:
                decision["reasons"].append(f"incomplete, {age} days old (removed after "
                                           f"{policy.incomplete_after_days})")
        decision["keep"] = bool(decision["reasons"])
        if not decision["keep"]:
            decision["reasons"] = [f"incomplete for more than incomplete_after_days ({age} > "
                                   f"{policy.incomplete_after_days})" if not entry["complete"]
                                   else "no keep rule matched"]
    return dict(sorted(decisions.items()))


def remove_date(repo: BackupRepository, date: str, *, versioned: bool = False) -> tuple[int, int]:
    """Delete the backup folder ``<date>/``: its manifest first (from then on the date reads as incomplete), then
    every other object, a thousand per request, then its names in the catalog's index. In a versioned bucket
    (object lock), every version of them: a plain delete would only hide them. Returns (objects, bytes)
    removed."""
    if versioned:
        try:
            removed, size = delete_versions(repo, f"{date}/", first=repo.manifest_key(date))
            delete_versions(repo, repo.index_prefix(date))
        except Exception as exc:
            raise RetentionError(f"{date}: {exc}") from exc
        return removed, size
    removed = size = 0
    manifest = repo.manifest_key(date)
    if repo.head(manifest) is not None:
        repo.client.delete_object(Bucket=repo.bucket, Key=manifest)
        removed += 1
    for page in batched(repo.list_keys(f"{date}/"), 1000):
        answer = repo.client.delete_objects(Bucket=repo.bucket, Delete={
            "Objects": [{"Key": o["Key"]} for o in page], "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            raise RetentionError(f"{date}: {len(errors)} object(s) could not be removed, e.g. {first.get('Key')}: "
                                 f"{first.get('Code')} {first.get('Message')}")
        removed += len(page)
        size += sum(o.get("Size", 0) for o in page)
    repo.drop_index(date)
    return removed, size


class RetentionError(RuntimeError):
    """An object of a date chosen for removal could not be removed."""


def keep_until(date: str, reasons: list[str], policy: Policy) -> dt.datetime | None:
    """How long the rules named in ``reasons`` keep the backup of ``date`` at least (see the module's doc), or
    None when no GFS rule keeps it."""
    days = {"daily": policy.keep_daily, "weekly": 7 * policy.keep_weekly, "monthly": 31 * policy.keep_monthly,
            "yearly": 366 * policy.keep_yearly}
    kept = [days[r.split()[0]] for r in reasons if r.split()[0] in days]
    return day_start(date) + dt.timedelta(days=max(kept)) if kept else None


def _locks(repo: BackupRepository, decisions: dict[str, dict[str, Any]], policy: Policy, lock: ObjectLock,
           now: dt.datetime, dry_run: bool) -> dict[str, int]:
    """Keep the dates still locked; extend the locks the rules outlast. Returns ``{date: objects extended}``."""
    extended = {}
    for date, decision in decisions.items():
        if not decision["complete"]:
            continue
        until = locked_until(repo, date)
        if not decision["keep"]:
            if until is not None and until > now:
                decision["keep"] = True
                decision["reasons"] = [f"locked until {until.isoformat()} (object lock): "
                                       f"{decision['reasons'][0]} then"]
            continue
        wanted = keep_until(date, decision["reasons"], policy)
        if wanted is None or wanted <= now or (until is not None and until >= wanted):
            continue
        decision["reasons"].append(f"lock {'to be ' if dry_run else ''}extended to {wanted.date().isoformat()}")
        if not dry_run:
            extended[date] = extend(repo, date, lock, wanted)
    return extended


def apply_retention(repo: BackupRepository, policy: Policy, *, today: dt.date | None = None,
                    protect: frozenset[str] | set[str] = frozenset(), dry_run: bool = False,
                    entries: list[dict[str, Any]] | None = None, lock: ObjectLock | None = None) -> dict[str, Any]:
    """Plan and (unless ``dry_run``) remove; every decision is logged with its rule. With ``lock`` enabled,
    locked dates are kept and locks extended where the rules keep a backup longer. Returns
    ``{"decisions": ..., "removed": [dates], "objects": n, "bytes": n, "failed": {date: error},
    "extended": {date: objects}}``."""
    from ragvault.catalog import list_backups

    today = today or dt.datetime.now(dt.UTC).date()
    decisions = plan_retention(list_backups(repo) if entries is None else entries, policy, today, protect)
    lock = lock or ObjectLock()
    extended = _locks(repo, decisions, policy, lock, dt.datetime.now(dt.UTC), dry_run) if lock.enabled else {}
    versioned = lock.enabled or is_versioned(repo)
    removed, objects, size, failed = [], 0, 0, {}
    for date, decision in decisions.items():
        verb = "keep" if decision["keep"] else ("would remove" if dry_run else "remove")
        log.info("retention: %s %s (%s): %s", verb, date, "complete" if decision["complete"] else "incomplete",
                 "; ".join(decision["reasons"]))
        if decision["keep"] or dry_run:
            continue
        try:
            count, nbytes = remove_date(repo, date, versioned=versioned)
        except Exception as exc:  # the others still go; the caller fails on any
            failed[date] = f"{type(exc).__name__}: {exc}"
            log.error("retention: %s could not be removed: %s", date, failed[date])
            continue
        removed.append(date)
        objects += count
        size += nbytes
    kept = sum(1 for d in decisions.values() if d["keep"])
    log.info("retention: %d dates kept, %d %s (%d objects, %d bytes)%s", kept, len(decisions) - kept,
             "to remove (dry run)" if dry_run else "removed", objects, size,
             f"; {len(failed)} failed" if failed else "")
    return {"decisions": decisions, "removed": removed, "objects": objects, "bytes": size, "failed": failed,
            "extended": extended}
