"""intelligence_backup and intelligence_restore run by a real Airflow scheduler, end to end.

One scenario, in order, against the local services and a private Airflow (see ``conftest.py``): everything
goes through the REST API v2, the scheduler and LocalExecutor run the tasks, the test reads the bucket and
the servers.

1. Seed the stack: Qdrant, MongoDB, Redis, the infra files, LangSmith runs on three past days D1..D3 and
   today, and a Mongo log collection (``applogs.events``, BSON datetime ``ts``) over the same days. The
   settings list it in ``components.mongodb.interval_collections``.
2. Unpause intelligence_backup. With ``catchup`` False the scheduler at once creates the run of the latest
   cron tick (Airflow 3's CronTriggerTimetable): the backup of yesterday. Then a manual run, triggered as the
   README says (`airflow dags trigger intelligence_backup`, no logical date), backs up today.
   Both are complete backups with every component captured.
3. Backfill D1..D3 (``POST /backfills``), days older than both: each run backs up only the interval data of
   its data interval (LangSmith runs, the log collection's documents), the state-only components are
   skipped, and the manifest says why, naming the newer complete backup.
4. Wipe the targets and restore ``latest`` (a REST trigger without a logical date, on the restore DAG that is
   active from its creation): it resolves to the manual run's backup (the newest captured
   state), and the stores hold the seeded data again.
5. The restore form refuses invalid dates and unknown components at the API: no run is created.

Choices where the backfill contract leaves room (asserted as written here):

* the schedule is ``0 0 * * *`` (UTC). In Airflow 3 the logical date of a scheduled or backfill run of
  this timetable is the *start* of its data interval (the run is triggered at its end), so the run whose
  ``ds`` (folder) is D covers exactly the UTC day D; a manual run covers the 24 hours *before* its logical
  date. Log documents stamped exactly at midnight test that an interval is ``[start, end)``;
* "the reason names the newer complete backup": the state reason contains the date of the newest complete
  backup (today's), which is what a backfilled day is older than;
* interval collections are exported for the run's interval in every mode, ``capture`` included, so the
  restored log collection holds the documents of the manual run's interval only;
* in ``interval`` mode MongoDB writes only the interval collections' objects; a ``skipped`` component is
  in the manifest with ``items == {}`` and writes no object; a backup without state has
  ``state.captured_at == null``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import zstandard
from bson import json_util

from devstack import seed, seed_langsmith, stack
from devstack.localconfig import local_settings
from ragvault.components import REGISTRY, RESTORE_ORDER

BACKUP_DAG = "intelligence_backup"
RESTORE_DAG = "intelligence_restore"
ENABLED = ("qdrant", "mongodb", "redis", "langsmith", "infra")
STATE_ONLY = ("qdrant", "redis", "infra")
INTERVAL_ONLY = ("mongodb", "langsmith")   # what a backfill backs up: interval data
LOG_DB, LOG_COLLECTION = "applogs", "events"
DEMO_INFRA = Path(__file__).resolve().parents[2] / "include" / "demo" / "infra"

SCHEDULED_RUN_APPEARS = 120   # seconds for the scheduler to create the run of the latest tick once unpaused
BACKUP_TIMEOUT = 300          # seconds for one backup run (about 30 s on the devstack)
BACKFILL_TIMEOUT = 600        # seconds for the three backfill runs, one at a time
RESTORE_TIMEOUT = 420         # seconds for the restore run
# the whole module (about 5 minutes on the devstack): the sum of every bound above and of the deployment's
# (migration, start-up, parsing), plus the seeding
MODULE_TIMEOUT = 2700
MIDNIGHT_MARGIN = 20          # minutes: the module does not start this close to midnight UTC

pytestmark = pytest.mark.timeout(MODULE_TIMEOUT)


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


def parse_time(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def interval_of(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    """A DAG run's data interval ``[start, end)``, as the API reports it."""
    start, end = parse_time(run["data_interval_start"]), parse_time(run["data_interval_end"])
    assert start < end, f"run {run['dag_run_id']} has an empty data interval: {start} .. {end}"
    return start, end


def ds(run: dict[str, Any]) -> str:
    """The run's folder in the bucket: the day of its logical date in UTC (its ``ds``); for a run triggered
    without a logical date, the day it was triggered for (its ``run_after``)."""
    return parse_time(run["logical_date"] or run["run_after"]).date().isoformat()


def window_of(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    """The interval a run exports interval data of: its data interval, or for a run without one (triggered
    without a logical date) the 24 hours before the time it was triggered for."""
    if run["data_interval_start"] and run["data_interval_end"]:
        return interval_of(run)
    after = parse_time(run["run_after"])
    return after - dt.timedelta(days=1), after


@dataclass(frozen=True)
class Timeline:
    """The scenario's days, relative to the day the module started (UTC)."""

    started: dt.datetime

    @property
    def today(self) -> dt.date:
        return self.started.date()

    def days_ago(self, n: int) -> dt.date:
        return self.today - dt.timedelta(days=n)

    @property
    def backfill_days(self) -> tuple[dt.date, ...]:
        """D1..D3: the days backfilled (their ``ds``), older than yesterday, which the scheduled run backs up."""
        return self.days_ago(4), self.days_ago(3), self.days_ago(2)

    @property
    def seeded_days(self) -> tuple[dt.date, ...]:
        """D1..D3 and today: the days LangSmith runs and log documents are stamped with."""
        return *self.backfill_days, self.today

    @property
    def start_date(self) -> dt.date:
        return self.days_ago(7)


@dataclass
class Seeded:
    """What step 1 wrote: counts per store, and the time-stamped records by id."""

    qdrant: dict[str, int]
    mongodb: dict[str, int]
    redis: dict[str, int]
    langsmith_runs: dict[str, dt.datetime]   # run id -> start_time
    log_documents: dict[str, dt.datetime]    # _id -> ts

    def runs_in(self, start: dt.datetime, end: dt.datetime) -> set[str]:
        return {i for i, t in self.langsmith_runs.items() if start <= t < end}

    def logs_in(self, start: dt.datetime, end: dt.datetime) -> set[str]:
        return {i for i, t in self.log_documents.items() if start <= t < end}


@dataclass
class Backups:
    """The runs of step 2: the scheduled run the unpause created, then the manual run."""

    scheduled: dict[str, Any]
    manual: dict[str, Any]


# -- bucket helpers -----------------------------------------------------------------------------------------------

def listing(s3_client, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """``{key: object}`` of everything under ``prefix``."""
    return {obj["Key"]: obj for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                                            Prefix=prefix)
            for obj in page.get("Contents", [])}


def read_manifest(s3_client, bucket: str, date: str) -> dict[str, Any]:
    keys = listing(s3_client, bucket, f"{date}/")
    assert f"{date}/manifest.json" in keys, f"no manifest for {date}; objects under {date}/: {sorted(keys)}"
    return json.loads(s3_client.get_object(Bucket=bucket, Key=f"{date}/manifest.json")["Body"].read())


def artifact_lines(s3_client, bucket: str, manifest: dict[str, Any], key: str) -> list[bytes]:
    """The lines of a zstd-compressed JSON Lines artifact of the manifest, read from the bucket."""
    found = [a for a in manifest["artifacts"] if a["key"] == key]
    assert found, f"{key} is not in the manifest: {sorted(a['key'] for a in manifest['artifacts'])}"
    assert not found[0].get("encryption"), found[0]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
    return [line for line in raw.splitlines() if line.strip()]


def captured_times(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every non-null ``captured_at`` of a manifest, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "captured_at" and value is not None:
                yield f"{path}.{key}", value
            else:
                yield from captured_times(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from captured_times(value, f"{path}[{index}]")


def assert_captured_now(manifest: dict[str, Any], timeline: Timeline) -> None:
    """Every captured_at is a real time between the module's start and now, never a logical date."""
    now = dt.datetime.now(dt.UTC)
    times = list(captured_times(manifest))
    assert times, "the manifest has no captured_at"
    for where, value in times:
        assert timeline.started <= parse_time(value) <= now, f"{where} = {value}: not in [{timeline.started}, {now}]"


def assert_complete(s3_client, bucket: str, date: str, manifest: dict[str, Any]) -> None:
    """Every artifact is in the bucket with its size, sha256 and ETag, and nothing else is under the date."""
    objects = listing(s3_client, bucket, f"{date}/")
    assert set(objects) == {a["key"] for a in manifest["artifacts"]} | {f"{date}/manifest.json"}, (
        sorted(set(objects) ^ ({a["key"] for a in manifest["artifacts"]} | {f"{date}/manifest.json"})))
    for artifact in manifest["artifacts"]:
        stored = objects[artifact["key"]]
        assert stored["Size"] == artifact["size"], artifact["key"]
        assert stored["ETag"].strip('"') == str(artifact.get("etag")).strip('"'), artifact
        body = s3_client.get_object(Bucket=bucket, Key=artifact["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"], artifact["key"]


def redis_dbsize(redis_kwargs: dict[str, Any], db: int) -> int:
    with redis.Redis(db=db, **redis_kwargs) as client:
        return client.dbsize()


def langsmith_run_ids() -> set[str]:
    """The ids of every run the LangSmith workspace holds in the seeded projects (the v2 runs query)."""
    from ragvault.hooks.langsmith import LangSmithHook

    with LangSmithHook() as hook:
        client = hook.get_conn()
        project_ids = [str(client.read_project(project_name=name).id) for name, _, _ in seed_langsmith.PROJECTS]
        return {run.id for run in hook.openapi().runs.query_v2(
            project_ids=project_ids, selects=["ID"], min_start_time=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
            max_start_time=dt.datetime(2100, 1, 1, tzinfo=dt.UTC))}


def assert_same_time(recorded: str | None, expected: str) -> None:
    assert recorded is not None and parse_time(recorded) == parse_time(expected), (recorded, expected)


# -- fixtures -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timeline() -> Timeline:
    """The module's start. Its days are fixed then: a module that would run into the next UTC day (where the
    scheduler's latest tick and a manual run's ``ds`` move on) is skipped rather than asserted on."""
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if day_start(started.date() + dt.timedelta(days=1)) - started < dt.timedelta(minutes=MIDNIGHT_MARGIN):
        pytest.skip(f"less than {MIDNIGHT_MARGIN} minutes before midnight UTC: the scenario's days would move")
    return Timeline(started=started)


@pytest.fixture(scope="module")
def e2e_bucket(new_bucket) -> str:
    """A bucket of the module's own: the backups in it are exactly the scenario's (another test's backups,
    dated later, would make every run of the scenario a past day's)."""
    return new_bucket("ragvault-e2e")


@pytest.fixture(scope="module")
def infra_dir(tmp_path_factory) -> Path:
    """A private copy of the stack's infra files (compose file, .env, ETL scripts): backed up, then restored."""
    target = tmp_path_factory.mktemp("e2e_files") / "infra"
    shutil.copytree(DEMO_INFRA, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def ragvault_config(tmp_path_factory, e2e_bucket, timeline, infra_dir) -> Path:
    """The settings the DAGs run with: the local stack's, on the module's bucket, five components on."""
    settings = local_settings(bucket=e2e_bucket, retries=0)
    settings["schedule"] = {"cron": "0 0 * * *", "timezone": "UTC",
                            "start_date": timeline.start_date.isoformat()}
    settings["lock"]["wait_seconds"] = 60
    for name in REGISTRY:
        settings["components"][name]["enabled"] = name in ENABLED
    settings["components"]["mongodb"]["interval_collections"] = {f"{LOG_DB}.{LOG_COLLECTION}": "ts"}
    settings["components"]["infra"].update(compose_path=str(infra_dir / "docker-compose.yaml"),
                                           env_path=str(infra_dir / ".env"),
                                           etl_scripts_dir=str(infra_dir / "etl_scripts"))
    path = tmp_path_factory.mktemp("e2e_config") / "ragvault.yaml"
    path.write_text(json.dumps(settings, indent=2))  # JSON is YAML
    return path


def log_documents(days: tuple[dt.date, ...]) -> list[dict[str, Any]]:
    """Log documents every hour on the hour of each day (midnight included: an interval's boundary) and one
    a millisecond before each midnight (the last instant of an interval)."""
    stamps = [day_start(day) + dt.timedelta(hours=h) for day in days for h in range(24)]
    stamps += [day_start(day) + dt.timedelta(days=1, milliseconds=-1) for day in days]
    levels = ("INFO", "INFO", "WARNING", "ERROR")
    return [{"_id": f"evt-{ts:%Y%m%dT%H%M%S.%f}"[:-3], "ts": ts, "level": levels[n % len(levels)],
             "service": ("api", "ingestion", "retriever")[n % 3], "message": f"event {n} at {ts.isoformat()}"}
            for n, ts in enumerate(sorted(stamps))]


@pytest.fixture(scope="module")
def seeded(timeline) -> Seeded:
    """Step 1: a clean stack seeded (stack.clients and the seeders of include/devstack)."""
    clients = stack.clients()
    seed.wipe_qdrant(clients["qdrant"])
    seed.wipe_mongo(clients["mongo"])
    seed.wipe_redis(clients["redis"])
    counts = {"qdrant": seed.seed_qdrant(clients["qdrant"]), "mongodb": seed.seed_mongo(clients["mongo"]),
              "redis": seed.seed_redis(clients["redis"])}

    documents = log_documents(timeline.seeded_days)
    clients["mongo"][LOG_DB][LOG_COLLECTION].insert_many(documents)

    stack.wipe_langsmith()
    client = seed_langsmith.client_from_connection(seed_langsmith.read_connection()[0])
    try:
        seed_langsmith.seed_langsmith(client, days=timeline.seeded_days)
    finally:
        client.close(timeout=10)
    runs = {run["id"]: parse_time(run["start_time"])
            for project in seed_langsmith.langsmith_dataset(timeline.seeded_days) for run in project.runs}
    return Seeded(**counts, langsmith_runs=runs, log_documents={d["_id"]: d["ts"] for d in documents})


@pytest.fixture(scope="module")
def backups(airflow, seeded) -> Backups:
    """Step 2: unpause the backup DAG; the run the scheduler then creates for the latest cron tick (catchup
    is False), and after it a manual run, both succeed."""
    api = airflow.api
    api.set_paused(BACKUP_DAG, False)
    scheduled = api.wait_for(lambda: api.dag_runs(BACKUP_DAG, run_type="scheduled"), SCHEDULED_RUN_APPEARS,
                             f"the scheduled run {BACKUP_DAG} gets once unpaused")
    assert len(scheduled) == 1, scheduled
    api.wait_run(BACKUP_DAG, scheduled[0]["dag_run_id"], BACKUP_TIMEOUT)
    # the README's manual backup, as written (no logical date)
    command = "airflow dags trigger intelligence_backup"
    run_id = f"manual__cli-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    proc = airflow.cli(*shlex.split(command)[1:], "--run-id", run_id)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    api.wait_run(BACKUP_DAG, run_id, BACKUP_TIMEOUT)
    return Backups(scheduled=api.dag_run(BACKUP_DAG, scheduled[0]["dag_run_id"]),
                   manual=api.dag_run(BACKUP_DAG, run_id))


@pytest.fixture(scope="module")
def backfill(airflow, backups, timeline) -> dict[str, dict[str, Any]]:
    """Step 3: a backfill of D1..D3, one run at a time; ``{ds: finished run}``.

    A backfill takes the runs *triggered* between ``from_date`` and ``to_date`` (their ``run_after``); the run
    of day D is triggered when its interval ends, at midnight after D.
    """
    api = airflow.api
    first, last = timeline.backfill_days[0], timeline.backfill_days[-1]
    created = api.post("/backfills", {
        "dag_id": BACKUP_DAG,
        "from_date": day_start(first + dt.timedelta(days=1)).isoformat(),
        "to_date": day_start(last + dt.timedelta(days=1)).isoformat(),
        "max_active_runs": 1,
        "reprocess_behavior": "none",
        "run_backwards": False,
        "dag_run_conf": {},
    })
    assert created["dag_id"] == BACKUP_DAG and created["max_active_runs"] == 1, created

    def all_finished() -> list[dict[str, Any]] | None:
        runs = api.dag_runs(BACKUP_DAG, run_type="backfill")
        return runs if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs) else None

    runs = api.wait_for(all_finished, BACKFILL_TIMEOUT, f"the three backfill runs of backfill {created['id']}")
    return {ds(run): run for run in runs}


# -- the scenario ---------------------------------------------------------------------------------------------------

def test_step1_the_stack_is_seeded(seeded, timeline):
    clients = stack.clients()
    assert {name: clients["qdrant"].count(name, exact=True).count for name in seeded.qdrant} == seeded.qdrant
    assert sum(seeded.mongodb.values()) > 0 and sum(seeded.redis.values()) > 0
    logs = clients["mongo"][LOG_DB][LOG_COLLECTION]
    assert logs.count_documents({}) == len(seeded.log_documents) == 25 * len(timeline.seeded_days)
    # every seeded day has LangSmith runs: each backfilled day (its run's interval), and today
    for day in timeline.seeded_days:
        assert seeded.runs_in(day_start(day), day_start(day + dt.timedelta(days=1))), day
    assert langsmith_run_ids() == set(seeded.langsmith_runs)


def test_step2_scheduled_and_manual_backups_capture_every_component(backups, s3_client, e2e_bucket, timeline):
    scheduled, manual = backups.scheduled, backups.manual
    # The run of the latest tick covers yesterday (logical date = start of its interval); a manual run covers
    # the 24 hours before its logical date (Airflow infers that interval for a manual run).
    yesterday = timeline.days_ago(1)
    assert (ds(scheduled), interval_of(scheduled)) == (
        yesterday.isoformat(), (day_start(yesterday), day_start(timeline.today)))
    # the CLI trigger has no logical date: its folder is the day it was triggered, its interval data that of the
    # 24 hours before
    assert manual["logical_date"] is None, manual
    after = parse_time(manual["run_after"])
    assert (ds(manual), window_of(manual)) == (timeline.today.isoformat(), (after - dt.timedelta(days=1), after))

    for run, run_type in ((scheduled, "scheduled"), (manual, "manual")):
        date = ds(run)
        assert (run["run_type"], run["state"]) == (run_type, "success")
        manifest = read_manifest(s3_client, e2e_bucket, date)
        assert manifest["backup_date"] == date
        recorded = manifest["run"]
        assert (recorded["dag_id"], recorded["run_id"], recorded["run_type"]) == (
            BACKUP_DAG, run["dag_run_id"], run_type)
        if run is manual:
            assert recorded["logical_date"] is None and recorded["data_interval_start"] is None, recorded
            assert_same_time(recorded["run_after"], run["run_after"])
        else:
            assert_same_time(recorded["data_interval_start"], run["data_interval_start"])
            assert_same_time(recorded["data_interval_end"], run["data_interval_end"])
        assert_complete(s3_client, e2e_bucket, date, manifest)

        assert set(manifest["components"]) == set(ENABLED), date
        modes = {name: section.get("mode") for name, section in manifest["components"].items()}
        assert modes == dict.fromkeys(ENABLED, "capture"), (date, modes)
        for name in STATE_ONLY:
            assert manifest["components"][name]["items"], f"{date}: {name}: nothing backed up"
        # the outcome at a glance in the UI: the run's note
        assert (run.get("note") or "").startswith(f"ragvault: complete backup of {date}: 5 components captured"), run
        state = manifest.get("state") or {}
        assert state.get("captured") is True, (date, state)
        assert state.get("captured_at") is not None, (date, state)
        assert_captured_now(manifest, timeline)


def test_step3_backfill_runs_succeed(airflow, backfill, timeline):
    assert sorted(backfill) == [day.isoformat() for day in timeline.backfill_days]
    failed = {date: run["dag_run_id"] for date, run in backfill.items() if run["state"] != "success"}
    assert not failed, "\n\n".join(f"backfill run of {date} failed\n"
                                   + airflow.api.failure_report(BACKUP_DAG, run_id)
                                   for date, run_id in failed.items())


@pytest.mark.parametrize("index", range(3), ids=["day1", "day2", "day3"])
def test_step3_backfilled_day_holds_only_its_interval_data(index, backfill, backups, seeded, timeline, s3_client,
                                                           e2e_bucket):
    day = timeline.backfill_days[index]
    date = day.isoformat()
    run = backfill[date]
    start, end = interval_of(run)
    # Airflow 3's CronTriggerTimetable with an interval: the logical date is the start of the data interval,
    # the run is triggered at its end. The run of ds D covers the day D, [D 00:00, D+1 00:00).
    assert (start, end) == (day_start(day), day_start(day + dt.timedelta(days=1))) == (
        parse_time(run["logical_date"]), parse_time(run["run_after"]))
    newest = ds(backups.manual)

    manifest = read_manifest(s3_client, e2e_bucket, date)
    assert manifest["backup_date"] == date
    assert manifest["run"]["run_type"] == "backfill", manifest["run"]
    assert manifest["run"]["run_id"] == run["dag_run_id"]
    assert_same_time(manifest["run"]["data_interval_start"], run["data_interval_start"])
    assert_same_time(manifest["run"]["data_interval_end"], run["data_interval_end"])
    assert_complete(s3_client, e2e_bucket, date, manifest)

    # no state of that day exists any more: none captured, and the manifest says why
    state = manifest.get("state") or {}
    assert state.get("captured") is False, state
    assert state.get("captured_at") is None, state
    assert state.get("policy") == "skip", state
    assert newest in (state.get("reason") or ""), f"the reason should name the newer backup {newest}: {state}"

    components = manifest["components"]
    assert set(components) == set(ENABLED)
    objects = listing(s3_client, e2e_bucket, f"{date}/")
    for name in STATE_ONLY:
        assert components[name].get("mode") == "skipped", (name, components[name])
        assert components[name]["items"] == {}, (name, components[name])
        assert components[name].get("reason"), (name, components[name])
        assert not [k for k in objects if k.startswith(f"{date}/{name}/")], name
    for name in INTERVAL_ONLY:
        assert components[name].get("mode") == "interval", (name, components[name])
    # a partial backup is told apart from a full one in the UI
    assert (run.get("note") or "").startswith(f"ragvault: PARTIAL backup of {date}: 5 of 5 components not "
                                              "captured by this run"), run.get("note")

    # LangSmith: exactly the seeded runs that started in the run's interval
    expected_runs = seeded.runs_in(start, end)
    assert expected_runs
    lines = artifact_lines(s3_client, e2e_bucket, manifest, f"{date}/langsmith/runs.json.zst")
    backed_up = [json.loads(line)["id"] for line in lines]
    assert len(backed_up) == len(set(backed_up))
    assert set(backed_up) == expected_runs, (len(backed_up), len(expected_runs))
    assert components["langsmith"]["counts"]["runs"] == len(expected_runs)

    # MongoDB: only the log collection, exactly the documents stamped in [start, end)
    mongo_keys = [a["key"] for a in manifest["artifacts"] if a["component"] == "mongodb"]
    assert mongo_keys and all(f"/{LOG_DB}/{LOG_COLLECTION}." in key for key in mongo_keys), mongo_keys
    lines = artifact_lines(s3_client, e2e_bucket, manifest, f"{date}/mongodb/export/{LOG_DB}/{LOG_COLLECTION}.json.zst")
    exported = [json_util.loads(line)["_id"] for line in lines]
    assert set(exported) == seeded.logs_in(start, end) and len(exported) == 25, sorted(exported)

    assert_captured_now(manifest, timeline)


def test_step4_restore_latest_brings_back_the_newest_captured_state(airflow, backups, backfill, seeded, infra_dir):
    api = airflow.api
    date = ds(backups.manual)
    clients = stack.clients()
    stack.wipe_data_stores()
    stack.wipe_langsmith()
    shutil.rmtree(infra_dir)
    assert not clients["qdrant"].get_collections().collections
    assert LOG_DB not in clients["mongo"].list_database_names()

    # the restore DAG is active from the start (no schedule: runs only when triggered), and takes a REST trigger
    # without a logical date
    assert api.get(f"/dags/{RESTORE_DAG}")["is_paused"] is False
    conf = {"backup_date": "latest", "components": list(ENABLED), "dry_run": False, "confirm": date}
    run = api.trigger(RESTORE_DAG, conf, logical_date=None).json()
    assert run["logical_date"] is None, run
    api.wait_run(RESTORE_DAG, run["dag_run_id"], RESTORE_TIMEOUT)

    # "latest" is the newest captured state: the manual run's backup (not yesterday's, nor a backfilled day)
    resolved = api.xcom(RESTORE_DAG, run["dag_run_id"], "resolve_backup")
    assert resolved["date"] == date, resolved
    assert resolved["components"] == [c for c in RESTORE_ORDER if c in ENABLED], resolved
    assert resolved["dry_run"] is False

    # the stores hold the seeded data again
    assert {name: clients["qdrant"].count(name, exact=True).count for name in seeded.qdrant} == seeded.qdrant
    mongo = clients["mongo"]
    assert {ns: mongo[ns.split(".", 1)[0]][ns.split(".", 1)[1]].count_documents({})
            for ns in seeded.mongodb} == seeded.mongodb
    assert {f"db{db}": redis_dbsize(clients["redis"], db) for db in seed.REDIS_DBS} == seeded.redis
    infra_files = {p.relative_to(DEMO_INFRA): p.read_bytes() for p in DEMO_INFRA.rglob("*") if p.is_file()}
    assert {p.relative_to(infra_dir): p.read_bytes() for p in infra_dir.rglob("*") if p.is_file()} == infra_files

    # interval data: what the manual run's interval held
    start, end = window_of(backups.manual)
    restored_logs = {d["_id"] for d in mongo[LOG_DB][LOG_COLLECTION].find({}, {"_id": 1})}
    assert restored_logs == seeded.logs_in(start, end), (len(restored_logs), len(seeded.logs_in(start, end)))
    restored_runs = langsmith_run_ids()
    assert restored_runs == seeded.runs_in(start, end), (len(restored_runs), len(seeded.runs_in(start, end)))


@pytest.mark.parametrize(("conf", "field"), [
    ({"backup_date": "2026-13-45"}, "backup_date"),
    ({"components": ["qdrant", "nope"]}, "components"),
], ids=["impossible-date", "unknown-component"])
def test_step5_invalid_restore_conf_is_refused_by_the_api(airflow, conf, field):
    api = airflow.api
    before = [r["dag_run_id"] for r in api.dag_runs(RESTORE_DAG)]
    response = api.trigger(RESTORE_DAG, conf, logical_date=dt.datetime.now(dt.UTC).isoformat(),
                           expect=(200, 400, 422))
    created = response.json().get("dag_run_id") if response.status_code == 200 else None
    if created:  # accepted by mistake: do not leave it running into the next test
        api.patch(f"/dags/{RESTORE_DAG}/dagRuns/{created}", {"state": "failed"})
    # Param validation fails in DAG.create_dagrun: the API answers 400 Bad Request with the param's error.
    assert response.status_code == 400, f"HTTP {response.status_code}: {response.text}"
    assert field in response.json()["detail"], response.text
    assert [r["dag_run_id"] for r in api.dag_runs(RESTORE_DAG)] == before


def test_step6_the_restore_form_submits_with_its_defaults_in_a_browser(airflow, backups, browser_page, tmp_path):
    """The restore form, in a real browser: every field keeps its default (latest, all nine components, no
    confirmation) but Dry run, switched on; the Trigger button submits it, and the run succeeds."""
    api, page = airflow.api, browser_page
    page.goto(f"{api.base_url}/dags/{RESTORE_DAG}")
    page.get_by_role("button", name="Trigger").first.click()
    form = page.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    # components is a multi-select holding the nine, not a one-per-line text area
    for name in REGISTRY:
        assert form.get_by_text(name, exact=True).count() >= 1, name
    assert form.locator("textarea[name='element_components']").count() == 0
    form.locator("label").filter(has=page.locator("[name='element_dry_run']")).click()
    assert form.locator("[name='element_dry_run']").is_checked()
    submit = form.get_by_role("button", name="Trigger")
    assert submit.is_enabled(), "the form cannot be submitted with its defaults"
    with page.expect_response(lambda r: r.url.endswith(f"/dags/{RESTORE_DAG}/dagRuns")
                              and r.request.method == "POST") as response:
        submit.click()
    assert response.value.status == 200, response.value.text()
    run = response.value.json()
    page.screenshot(path=str(tmp_path / "restore-form-submitted.png"))
    assert run["conf"] == {"backup_date": "latest", "components": list(REGISTRY), "dry_run": True,
                           "confirm": None}, run["conf"]
    finished = api.wait_run(RESTORE_DAG, run["dag_run_id"], RESTORE_TIMEOUT)
    assert finished["state"] == "success"
    states = api.task_states(RESTORE_DAG, run["dag_run_id"])
    assert states["plan_restore"] == "success" and states["verify_backup"] == "success", states
    # a dry run restores nothing
    assert all(state == "skipped" for task, state in states.items() if ".restore" in task), states


README_RESTORE = """airflow dags trigger intelligence_restore --conf '{"backup_date": "latest", "components": ["qdrant", "mongodb", "redis"], "dry_run": true}'"""  # noqa: E501


def test_step7_the_readmes_restore_command_runs_as_written(airflow, backups):
    api = airflow.api
    run_id = f"manual__readme-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    proc = airflow.cli(*shlex.split(README_RESTORE)[1:], "--run-id", run_id)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    api.wait_run(RESTORE_DAG, run_id, RESTORE_TIMEOUT)
    resolved = api.xcom(RESTORE_DAG, run_id, "resolve_backup")
    assert resolved["date"] == ds(backups.manual) and resolved["dry_run"] is True, resolved
    assert resolved["components"] == ["qdrant", "mongodb", "redis"], resolved
    states = api.task_states(RESTORE_DAG, run_id)
    assert all(state == "skipped" for task, state in states.items() if ".restore" in task), states


def test_step8_the_backups_view_lists_details_and_triggers_a_restore_in_a_browser(airflow, backups, browser_page,
                                                                                   s3_client, e2e_bucket, tmp_path):
    """The "Backups" view of the plugin, in a real browser: under Browse, it lists the bucket's dates as
    `ragvault list` does; a date opens its details; its restore form triggers intelligence_restore for that date
    (a dry run, qdrant left out), and the run succeeds. Its endpoints refuse a caller that is not signed in."""
    from ragvault.catalog import list_backups
    from ragvault.repository import BackupRepository

    api, page = airflow.api, browser_page
    assert requests.get(f"{api.base_url}/ragvault/api/backups", timeout=30).status_code == 401
    assert requests.get(f"{api.base_url}/ragvault/backups", timeout=30).status_code == 401
    listed = api.session.get(f"{api.base_url}/ragvault/api/backups", timeout=60).json()
    assert listed == list_backups(BackupRepository(s3_client, e2e_bucket))
    date = ds(backups.manual)
    assert any(e["date"] == date and e["complete"] for e in listed), listed

    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Backups").click()
    page.wait_for_url("**/plugin/backups")
    frame = page.frame_locator("iframe")
    frame.get_by_role("heading", name="Backups").wait_for()
    rows = frame.locator("tbody tr")
    assert rows.count() == len(listed)
    assert "complete" in frame.locator(f"tr[data-date='{date}']").inner_text()
    frame.get_by_role("link", name=date).click()
    frame.get_by_role("heading", name=f"Backup {date}").wait_for()
    manifest = read_manifest(s3_client, e2e_bucket, date)
    shown = {row.get_attribute("data-component") for row in frame.locator("tbody tr[data-component]").all()}
    assert shown == set(manifest["components"])
    page.screenshot(path=str(tmp_path / "backups-view-details.png"))

    frame.get_by_label("qdrant").uncheck()
    assert frame.get_by_label("Dry run (verify every checksum and print the plan; write nothing)").is_checked()
    frame.get_by_role("button", name="Trigger the restore").click()
    outcome = frame.locator("#outcome")
    outcome.wait_for()
    text = outcome.inner_text()
    assert "dry run" in text, text
    run_id = text.split("Run ", 1)[1].split(" of ", 1)[0]
    run = api.dag_run(RESTORE_DAG, run_id)
    expected = sorted(c for c in manifest["components"] if c != "qdrant" and manifest["components"][c]["items"])
    assert run["conf"]["backup_date"] == date and run["conf"]["dry_run"] is True, run["conf"]
    assert sorted(run["conf"]["components"]) == expected, run["conf"]
    finished = api.wait_run(RESTORE_DAG, run_id, RESTORE_TIMEOUT)
    assert finished["state"] == "success"

    # The form posts to the API server it runs in, whatever Host the request names (a port where nothing listens
    # here): a caller cannot make it send the user's token elsewhere.
    forged = api.session.post(f"{api.base_url}/ragvault/backups/{date}/restore", timeout=60,
                              data={"components": ["redis"], "dry_run": "true"}, headers={"Host": "127.0.0.1:9"})
    assert forged.status_code == 200 and "triggered" in forged.text, forged.text[:2000]
    again = forged.text.split("Run <code>", 1)[1].split("</code>", 1)[0]
    assert api.dag_run(RESTORE_DAG, again)["conf"]["components"] == ["redis"]
    assert api.wait_run(RESTORE_DAG, again, RESTORE_TIMEOUT)["state"] == "success"
