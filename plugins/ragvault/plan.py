"""What one backup run captures, decided once by ``plan_backup`` before any component runs.

A backup holds two kinds of parts (``ragvault.components.base``): the *state* of the servers and files, which
can only be captured as it is when the task runs, and *interval* data (LangSmith runs, Prometheus blocks,
Mongo ``interval_collections``), of which each run exports the part stamped within its data interval. A run
for a past day (a backfill, a rerun of an old date) gets that day's interval data, but not that day's state:
Qdrant, Mongo, Redis or a config file only ever exist in their current state.

So each run is planned, per component, as one of these modes, recorded in the manifest with the reason:

``capture``
    every part: the state as it is now (``captured_at`` says when), the interval data of the run's interval.
    The mode of every run whose date is not older than a complete backup already in the bucket, and of
    every run when ``backfill.state_parts`` is ``capture``.
``interval``
    only the interval parts: the run's date is older than a complete backup in the bucket and
    ``backfill.state_parts`` is ``skip`` (the default), and the component holds interval data.
``skipped``
    nothing: the same situation, for a component that holds only state.
``kept``
    the same situation, in a rerun of a date that already holds a complete backup with the component's
    state (captured back then): those parts are kept as they are, with their original ``captured_at``.

A run over a date that already holds a complete backup writes its objects aside (``staging``) and swaps
them in when it commits, so the previous backup stays whole until the new one is (see
``BackupRepository.commit_manifest``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from ragvault.components import REGISTRY
from ragvault.components.base import INTERVAL, STATE
from ragvault.config import Settings
from ragvault.repository import BackupRepository, ItemResult, check_date

CAPTURE, INTERVAL_ONLY, SKIPPED, KEPT = "capture", "interval", "skipped", "kept"
POLICIES = ("skip", "capture")


@dataclass
class BackupPlan:
    """The decision for one run; it travels through XCom."""

    date: str
    policy: str
    capture_state: bool
    reason: str
    #: the newest complete backup with a later date, if any
    newer_backup: str | None = None
    #: the run writes aside under ``<date>/.staging/<staging>/`` (the date already holds a complete backup)
    staging: str | None = None
    #: component -> {"mode": ..., "reason": ...}
    components: dict[str, dict[str, str]] = field(default_factory=dict)

    def mode(self, component: str) -> str:
        return self.components.get(component, {}).get("mode", CAPTURE if self.capture_state else SKIPPED)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupPlan:
        return cls(**data)


def staging_token(run_id: str) -> str:
    """A short name, safe in an object key, for a run's staging folder."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:16]


def make_plan(repo: BackupRepository, settings: Settings, date: str, run_id: str) -> BackupPlan:
    """Decide what the run of ``date`` captures, from the complete backups in the bucket and the settings."""
    check_date(date)
    policy = settings.data.get("backfill", {}).get("state_parts", "skip")
    if policy not in POLICIES:
        raise ValueError(f"backfill.state_parts is {policy!r}: expected one of {', '.join(POLICIES)}")
    newer = [entry["date"] for entry in repo.catalog() if entry["date"] > date]
    existing = repo.read_manifest(date)
    newest = newer[-1] if newer else None
    if not newer:
        capture, reason = True, f"no complete backup is newer than {date}: the state is captured now"
    elif policy == "capture":
        capture, reason = True, (
            f"{date} is older than the complete backup of {newest}, and backfill.state_parts is capture: the "
            f"state is captured now, so this backup holds today's state under {date} (its captured_at says when)")
    else:
        capture, reason = False, (
            f"{date} is older than the complete backup of {newest}: the state of {date} can no longer be "
            f"captured, so this run backs up only interval data (LangSmith runs, Prometheus blocks, Mongo "
            f"interval collections) of its data interval (backfill.state_parts: skip)")
    plan = BackupPlan(date=date, policy=policy, capture_state=capture, reason=reason, newer_backup=newest,
                      staging=staging_token(run_id) if existing is not None else None)
    for name, cls in REGISTRY.items():
        if not settings.enabled(name):
            continue
        parts = cls(settings).backup_parts()
        old = (existing or {}).get("components", {}).get(name)
        if capture:
            mode, why = CAPTURE, "state captured now" if STATE in parts else "interval data of the run"
        elif STATE in parts and old and old.get("mode", CAPTURE) in (CAPTURE, KEPT) and old.get("items"):
            mode, why = KEPT, (f"kept from the complete backup of {date} already in the bucket "
                               f"(captured at {old.get('captured_at')}): that day's state cannot be captured again")
        elif INTERVAL in parts:
            mode, why = INTERVAL_ONLY, "interval data only: the state of a past day cannot be captured"
        else:
            mode, why = SKIPPED, "holds only state, which cannot be captured for a past day"
        plan.components[name] = {"mode": mode, "reason": why}
    return plan


def kept_sections(plan: BackupPlan, existing: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest sections and artifacts of the components the plan keeps from the date's existing backup."""
    sections: dict[str, Any] = {}
    artifacts: list[dict[str, Any]] = []
    if not existing:
        return sections, artifacts
    for name, decision in plan.components.items():
        if decision["mode"] != KEPT or name not in existing.get("components", {}):
            continue
        sections[name] = {**existing["components"][name], "mode": KEPT, "reason": decision["reason"]}
        artifacts += [dict(a) for a in existing["artifacts"] if a["component"] == name]
    return sections, artifacts


def assemble_manifest(repo: BackupRepository, plan: BackupPlan, results: list[ItemResult],
                      run: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a run: what its tasks backed up, the parts it keeps from the date's complete backup,
    every planned component's mode and reason, and the ``state`` block."""
    manifest = repo.build_manifest(plan.date, results, run)
    sections, kept = kept_sections(plan, repo.read_manifest(plan.date) if plan.staging else None)
    manifest["components"].update(sections)
    manifest["artifacts"] += kept
    for name, decision in plan.components.items():
        section = manifest["components"].setdefault(
            name, {"source_version": None, "captured_at": None, "counts": {}, "items": {}})
        section.setdefault("mode", decision["mode"])
        section.setdefault("reason", decision["reason"])
    manifest["state"] = state_summary(plan, manifest)
    return manifest


def state_summary(plan: BackupPlan, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``state`` block: whether and when the state parts it holds were captured."""
    times = []
    for name, section in manifest["components"].items():
        cls = REGISTRY.get(name)
        holds_state = cls is not None and STATE in cls.parts and section.get("mode", CAPTURE) in (CAPTURE, KEPT)
        if holds_state and section.get("captured_at"):
            times.append(section["captured_at"])
    return {"captured": plan.capture_state, "captured_at": min(times) if times else None,
            "policy": plan.policy, "reason": plan.reason}

