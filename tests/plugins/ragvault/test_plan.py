"""Planning a run (state captured or not, staged or not) and committing it, against a real MinIO bucket.

Each test has a bucket of its own, so the complete backups it reasons about are exactly the ones it writes.
"""

from __future__ import annotations

import pytest

from ragvault.components import REGISTRY
from ragvault.config import load_settings
from ragvault.plan import KEPT, BackupPlan, assemble_manifest, make_plan, staging_token
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
    manifest = assemble_manifest(repo, plan, results, {"run_id": f"run-{plan.date}"})
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


# -- a commit cut short at every step ---------------------------------------------------------------------


class Killed(BaseException):
    """The worker dies: a BaseException, so no ``except Exception`` on the way does any more work."""


class DyingClient:
    """The S3 client of a worker that is killed right before its ``fatal``-th write call (PUT, copy, DELETE,
    multipart): that call and every later one never happen. Reads pass through."""

    WRITES = ("put_object", "copy_object", "copy", "delete_object", "create_multipart_upload", "upload_part",
              "upload_part_copy", "complete_multipart_upload", "abort_multipart_upload")

    def __init__(self, client, fatal: int | None):
        self._client, self.fatal, self.writes = client, fatal, []

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if name not in self.WRITES:
            return attribute

        def write(*args, **kwargs):
            if self.fatal is not None and len(self.writes) + 1 >= self.fatal:
                raise Killed(f"killed before write #{len(self.writes) + 1}: {name}")
            self.writes.append(name)
            return attribute(*args, **kwargs)

        return write


def readable(repo: BackupRepository, date: str) -> dict:
    """The date's manifest, with every artifact it names read back whole and matching it."""
    manifest = repo.read_manifest(date)
    assert manifest is not None, f"{date} has no manifest"
    for artifact in manifest["artifacts"]:
        assert repo.verify_artifact(artifact) == [], artifact
    return manifest


def rerun_commit(repo: BackupRepository, settings, fatal: int | None) -> tuple[dict, DyingClient]:
    """Rerun 2030-03-07 (qdrant kept, langsmith re-exported, a new item) and commit it on a client that dies
    before write number ``fatal``."""
    plan = make_plan(repo, settings, "2030-03-07", "rerun")
    results = []
    for name, path, body in (("langsmith", "data.bin", b"runs v2"), ("langsmith", "more.bin", b"more runs v2")):
        artifact = repo.put_artifact(plan.date, name, path, body, staging=plan.staging)
        results.append(ItemResult(name, path, utcnow_iso(), None, {"bytes": len(body)}, [artifact]))
    manifest = assemble_manifest(repo, plan, results, {"run_id": "rerun"})
    dying = DyingClient(repo.client, fatal)
    BackupRepository(dying, repo.bucket).commit_manifest(manifest)
    return manifest, dying


def test_a_commit_killed_at_any_step_leaves_the_old_or_the_new_backup_whole(s3_client, new_bucket, plan_settings):
    """Kill the commit of a rerun before each of its writes in turn: the date always has a manifest whose every
    object reads back whole, the previous backup or the new one, and the next run (its plan) finishes the move."""
    settings = plan_settings()
    probe = BackupRepository(s3_client, new_bucket("ragvault-commit"))
    commit(probe, make_plan(probe, settings, "2030-03-07", "r1"), {"qdrant": b"state", "langsmith": b"runs v1"},
           "2030-03-07T02:00:00Z")
    commit(probe, make_plan(probe, settings, "2030-03-10", "r2"), {"qdrant": b"newer"})
    _, whole = rerun_commit(probe, settings, None)
    steps = len(whole.writes)
    assert steps >= 5, whole.writes  # manifest, 2 copies, manifest again, removals

    for fatal in range(1, steps + 1):
        repo = BackupRepository(s3_client, new_bucket("ragvault-commit"))
        old = commit(repo, make_plan(repo, settings, "2030-03-07", "r1"),
                     {"qdrant": b"state", "langsmith": b"runs v1"}, "2030-03-07T02:00:00Z")
        commit(repo, make_plan(repo, settings, "2030-03-10", "r2"), {"qdrant": b"newer"})
        with pytest.raises(Killed):
            rerun_commit(repo, settings, fatal)
        after_crash = readable(repo, "2030-03-07")
        keys = sorted(a["key"] for a in after_crash["artifacts"])
        if after_crash["run"]["run_id"] != "rerun":
            assert after_crash == old, fatal
        else:  # the new backup: the kept state and the rerun's two objects
            assert keys == ["2030-03-07/langsmith/data.bin", "2030-03-07/langsmith/more.bin",
                            "2030-03-07/qdrant/data.bin"], (fatal, keys)
        assert "2030-03-07" in repo.complete_dates()

        # the next run of the date finishes what the crash left, then plans as usual
        repo.repair("2030-03-07")
        final = readable(repo, "2030-03-07")
        assert not any(a.get("stored_at") for a in final["artifacts"]), fatal
        if final["run"]["run_id"] == "rerun":
            listed = {o["Key"] for o in repo.list_keys("2030-03-07/")}
            assert listed == set(keys) | {"2030-03-07/manifest.json"}, (fatal, listed)
            assert read(repo, "2030-03-07/langsmith/data.bin") == b"runs v2"
            assert read(repo, "2030-03-07/qdrant/data.bin") == b"state"


def test_a_committed_manifest_naming_staged_objects_is_restorable_as_it_is(own_repo, plan_settings):
    settings = plan_settings()
    commit(own_repo, make_plan(own_repo, settings, "2030-03-07", "r1"), {"langsmith": b"runs v1"})
    plan = make_plan(own_repo, settings, "2030-03-07", "rerun")
    artifact = own_repo.put_artifact("2030-03-07", "langsmith", "data.bin", b"runs v2", staging=plan.staging)
    manifest = assemble_manifest(own_repo, plan, [ItemResult("langsmith", "all", utcnow_iso(), None, {},
                                                             [artifact])], {"run_id": "rerun"})
    # dies right after the manifest is written (write 2; write 1 drops the date's old catalog index name), before
    # its new index name and the first copy
    dying = DyingClient(own_repo.client, 3)
    with pytest.raises(Killed):
        BackupRepository(dying, own_repo.bucket).commit_manifest(manifest)
    assert dying.writes == ["delete_object", "put_object"]
    stored = own_repo.read_manifest("2030-03-07")
    [entry] = stored["artifacts"]
    assert entry["key"] == "2030-03-07/langsmith/data.bin" and entry["stored_at"] == artifact.key
    assert b"".join(own_repo.iter_artifact(entry)) == b"runs v2"
    assert read(own_repo, "2030-03-07/langsmith/data.bin") == b"runs v1"  # not moved yet
    done = own_repo.repair("2030-03-07")
    assert done["moved"] == 1 and done["removed"] >= 1
    assert own_repo.repair("2030-03-07") is None
    assert read(own_repo, "2030-03-07/langsmith/data.bin") == b"runs v2"


def test_a_manifest_that_is_not_one_is_reported_and_skipped(own_repo, plan_settings, caplog):
    from ragvault.repository import ManifestError

    settings = plan_settings()
    commit(own_repo, make_plan(own_repo, settings, "2030-03-07", "r1"), {"qdrant": b"a"})
    commit(own_repo, make_plan(own_repo, settings, "2030-03-08", "r2"), {"qdrant": b"b"})
    client, bucket = own_repo.client, own_repo.bucket
    client.put_object(Bucket=bucket, Key="2030-03-09/manifest.json", Body=b"{ not json")
    client.copy_object(Bucket=bucket, Key="2030-03-10/manifest.json", MetadataDirective="REPLACE",
                       CopySource={"Bucket": bucket, "Key": "2030-03-08/manifest.json"})
    client.put_object(Bucket=bucket, Key="2030-03-11/manifest.json", Body=b'{"format": "velero/v1"}')
    with caplog.at_level("WARNING", logger="ragvault.repository"):
        assert own_repo.complete_dates() == ["2030-03-07", "2030-03-08"]
    for key in ("2030-03-09/manifest.json", "2030-03-10/manifest.json", "2030-03-11/manifest.json"):
        assert key in caplog.text, key
    assert "copied from another date" in caplog.text and "is not JSON" in caplog.text
    assert own_repo.latest_state() == "2030-03-08"
    with pytest.raises(ManifestError, match=r"2030-03-09/manifest.json is not JSON"):
        own_repo.read_manifest("2030-03-09")
    # planning another date still works
    assert make_plan(own_repo, settings, "2030-03-12", "r3").capture_state
