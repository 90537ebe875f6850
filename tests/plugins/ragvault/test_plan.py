"""Planning a run (state captured or not, staged or not) and committing it, against a real MinIO bucket.

Each test has a bucket of its own, so the complete backups it reasons about are exactly the ones it writes.
"""

from __future__ import annotations

import pytest

from ragvault.components import REGISTRY
from ragvault.config import load_settings
from ragvault.plan import KEPT, BackupPlan, kept_sections, make_plan, staging_token, state_summary
from ragvault.repository import BackupRepository, ItemResult, RepositoryError, utcnow_iso


@pytest.fixture
def own_repo(s3_client, new_bucket):
    return BackupRepository(s3_client, new_bucket("ragvault-plan"))


@pytest.fixture
def plan_settings(make_config):
    return lambda **overrides: load_settings(make_config(**overrides))


def commit(repo: BackupRepository, plan: BackupPlan, payloads: dict[str, bytes], captured_at: str | None = None):
    """A backup the way commit_manifest makes one: an object per component the plan backs up, kept ones kept."""
    results = []
    for name, decision in plan.components.items():
        if decision["mode"] in ("capture", "interval") and name in payloads:
            artifact = repo.put_artifact(plan.date, name, "data.bin", payloads[name], staging=plan.staging)
            results.append(ItemResult(name, "all", captured_at or utcnow_iso(), None, {"bytes": len(payloads[name])},
                                      [artifact]))
    manifest = repo.build_manifest(plan.date, results, {"run_id": f"run-{plan.date}"})
    sections, kept = kept_sections(plan, repo.previous_manifest(plan.date, plan.staging) if plan.staging else None)
    manifest["components"].update(sections)
    manifest["artifacts"] += kept
    for name, decision in plan.components.items():
        section = manifest["components"].setdefault(name, {"captured_at": None, "counts": {}, "items": {}})
        section.setdefault("mode", decision["mode"])
        section.setdefault("reason", decision["reason"])
    manifest["state"] = state_summary(plan, manifest)
    repo.commit_manifest(manifest)
    return manifest


def read(repo: BackupRepository, key: str) -> bytes:
    return repo.client.get_object(Bucket=repo.bucket, Key=key)["Body"].read()


def test_a_run_with_no_newer_backup_captures_everything(own_repo, plan_settings):
    settings = plan_settings()
    plan = make_plan(own_repo, settings, "2030-03-10", "scheduled__2030-03-10")
    assert plan.capture_state and plan.staging is None and plan.newer_backup is None
    assert {d["mode"] for d in plan.components.values()} == {"capture"}
    assert list(plan.components) == list(REGISTRY)

    # An older date exists: still nothing newer.
    commit(own_repo, plan, {"qdrant": b"q"})
    later = make_plan(own_repo, settings, "2030-03-11", "scheduled__2030-03-11")
    assert later.capture_state and later.newer_backup is None


def test_a_day_older_than_a_complete_backup_gets_only_its_interval_data(own_repo, plan_settings):
    settings = plan_settings()
    commit(own_repo, make_plan(own_repo, settings, "2030-03-10", "r0"), {"qdrant": b"q", "langsmith": b"l"})

    plan = make_plan(own_repo, settings, "2030-03-07", "backfill__2030-03-07")
    assert not plan.capture_state and plan.newer_backup == "2030-03-10" and plan.staging is None
    assert "2030-03-10" in plan.reason and "2030-03-07" in plan.reason
    modes = {name: d["mode"] for name, d in plan.components.items()}
    assert modes == {"qdrant": "skipped", "mongodb": "skipped", "redis": "skipped", "langchain": "skipped",
                     "langsmith": "interval", "gpt": "skipped", "infra": "skipped", "prometheus": "interval",
                     "grafana": "skipped"}

    # Mongo holds interval data once log collections are configured.
    with_logs = plan_settings(components={"mongodb": {"interval_collections": {"app.logs": "ts"}}})
    assert make_plan(own_repo, with_logs, "2030-03-07", "r").components["mongodb"]["mode"] == "interval"

    # backfill.state_parts: capture takes the current state anyway, and says so.
    captured = make_plan(own_repo, plan_settings(backfill={"state_parts": "capture"}), "2030-03-07", "r")
    assert captured.capture_state and {d["mode"] for d in captured.components.values()} == {"capture"}
    assert "backfill.state_parts is capture" in captured.reason

    with pytest.raises(ValueError, match="backfill.state_parts"):
        make_plan(own_repo, plan_settings(backfill={"state_parts": "sometimes"}), "2030-03-07", "r")

    # The manifest of such a run: no state, the reason, and the interval parts only.
    manifest = commit(own_repo, plan, {"langsmith": b"runs of the 7th", "qdrant": b"must not be written"})
    assert manifest["state"] == {"captured": False, "captured_at": None, "policy": "skip", "reason": plan.reason}
    assert manifest["components"]["qdrant"]["mode"] == "skipped" and manifest["components"]["qdrant"]["items"] == {}
    assert [a["key"] for a in manifest["artifacts"]] == ["2030-03-07/langsmith/data.bin"]


def test_latest_is_the_newest_captured_state_not_the_newest_date(own_repo, plan_settings):
    settings = plan_settings()
    commit(own_repo, make_plan(own_repo, settings, "2030-03-10", "r1"), {"qdrant": b"a"}, "2030-03-10T02:00:05Z")
    assert own_repo.latest_state() == "2030-03-10"
    # A backfilled day with interval data only is never "latest", even captured later.
    commit(own_repo, make_plan(own_repo, settings, "2030-03-08", "r2"), {"langsmith": b"l"})
    assert own_repo.latest_state() == "2030-03-10"
    # A backfilled day whose state was captured (policy capture) holds a newer state than the 10th.
    capture = plan_settings(backfill={"state_parts": "capture"})
    commit(own_repo, make_plan(own_repo, capture, "2030-03-09", "r3"), {"qdrant": b"b"}, "2030-03-12T09:00:00Z")
    assert own_repo.latest_state() == "2030-03-09"
    catalog = {e["date"]: e["state_captured_at"] for e in own_repo.catalog()}
    assert catalog == {"2030-03-08": None, "2030-03-09": "2030-03-12T09:00:00Z", "2030-03-10": "2030-03-10T02:00:05Z"}


def test_a_rerun_keeps_the_old_state_and_swaps_its_objects_in_at_commit(own_repo, plan_settings):
    settings = plan_settings()
    first = commit(own_repo, make_plan(own_repo, settings, "2030-03-07", "r1"),
                   {"qdrant": b"vectors of the 7th", "langsmith": b"runs v1"}, "2030-03-07T02:00:00Z")
    commit(own_repo, make_plan(own_repo, settings, "2030-03-10", "r2"), {"qdrant": b"vectors of the 10th"})

    plan = make_plan(own_repo, settings, "2030-03-07", "rerun")
    assert plan.staging == staging_token("rerun")
    assert plan.components["qdrant"]["mode"] == KEPT and plan.components["langsmith"]["mode"] == "interval"
    old = {a["key"]: a for a in first["artifacts"]}

    # The rerun writes aside: until it commits, the old backup is whole and verifies.
    staged = own_repo.put_artifact("2030-03-07", "langsmith", "data.bin", b"runs v2", staging=plan.staging)
    assert staged.key == f"2030-03-07/.staging/{plan.staging}/langsmith/data.bin"
    assert read(own_repo, "2030-03-07/langsmith/data.bin") == b"runs v1"
    assert all(own_repo.verify_artifact(a) == [] for a in old.values())

    manifest = commit(own_repo, plan, {"langsmith": b"runs v2"})
    stored = own_repo.read_manifest("2030-03-07")
    assert stored == manifest
    # the state part is the old one, with its own captured_at; the interval part is the new one
    assert stored["components"]["qdrant"]["mode"] == KEPT
    assert stored["components"]["qdrant"]["captured_at"] == "2030-03-07T02:00:00Z"
    assert stored["state"]["captured_at"] == "2030-03-07T02:00:00Z" and stored["state"]["captured"] is False
    assert read(own_repo, "2030-03-07/qdrant/data.bin") == b"vectors of the 7th"
    assert read(own_repo, "2030-03-07/langsmith/data.bin") == b"runs v2"
    keys = {o["Key"] for o in own_repo.list_keys("2030-03-07/")}
    assert keys == {"2030-03-07/manifest.json", "2030-03-07/qdrant/data.bin", "2030-03-07/langsmith/data.bin"}
    for artifact in stored["artifacts"]:
        assert artifact["etag"] == own_repo.head(artifact["key"])["ETag"]
        assert own_repo.verify_artifact(artifact) == []

    # A reader still holding the old manifest is refused the replaced object instead of mixing two runs.
    replaced = old["2030-03-07/langsmith/data.bin"]
    with pytest.raises(RepositoryError, match="replaced after its manifest was written"):
        b"".join(own_repo.iter_artifact(replaced))
    assert "replaced after its manifest was written" in own_repo.verify_artifact(replaced)[0]
    assert own_repo.verify_artifact(old["2030-03-07/qdrant/data.bin"]) == []


def test_a_failed_rerun_leaves_the_previous_backup_whole(own_repo, plan_settings):
    settings = plan_settings()
    first = commit(own_repo, make_plan(own_repo, settings, "2030-03-07", "r1"),
                   {"qdrant": b"vectors v1", "langsmith": b"runs v1"})
    plan = make_plan(own_repo, settings, "2030-03-07", "attempt-that-dies")
    own_repo.put_artifact("2030-03-07", "langsmith", "data.bin", b"half of v2", staging=plan.staging)
    # ... the run dies here, before its commit.
    assert own_repo.read_manifest("2030-03-07") == first
    assert all(own_repo.verify_artifact(a) == [] for a in first["artifacts"])
    assert own_repo.latest_state() == "2030-03-07"

    # The next run of the date stages under its own token, and its commit clears the abandoned one.
    again = make_plan(own_repo, settings, "2030-03-07", "next-run")
    assert again.staging not in (None, plan.staging)
    commit(own_repo, again, {"qdrant": b"vectors v3", "langsmith": b"runs v3"})
    keys = {o["Key"] for o in own_repo.list_keys("2030-03-07/")}
    assert keys == {"2030-03-07/manifest.json", "2030-03-07/qdrant/data.bin", "2030-03-07/langsmith/data.bin"}
    assert read(own_repo, "2030-03-07/langsmith/data.bin") == b"runs v3"


def test_a_commit_retried_after_the_old_manifest_was_removed_still_keeps_the_old_state(own_repo, plan_settings):
    settings = plan_settings()
    commit(own_repo, make_plan(own_repo, settings, "2030-03-07", "r1"), {"qdrant": b"state of the 7th"},
           "2030-03-07T02:00:00Z")
    commit(own_repo, make_plan(own_repo, settings, "2030-03-10", "r2"), {"qdrant": b"state of the 10th"})
    plan = make_plan(own_repo, settings, "2030-03-07", "rerun")
    # A first commit attempt kept the manifest aside, removed it, then died while copying.
    aside = own_repo.previous_manifest_key("2030-03-07", plan.staging)
    own_repo.client.copy_object(Bucket=own_repo.bucket, Key=aside,
                                CopySource={"Bucket": own_repo.bucket, "Key": "2030-03-07/manifest.json"})
    own_repo.discard_manifest("2030-03-07")

    manifest = commit(own_repo, plan, {"langsmith": b"runs"})
    assert manifest["components"]["qdrant"]["mode"] == KEPT
    assert read(own_repo, "2030-03-07/qdrant/data.bin") == b"state of the 7th"
    assert own_repo.head(aside) is None
