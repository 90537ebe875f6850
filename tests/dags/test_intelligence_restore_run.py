"""Whole runs of intelligence_restore with `airflow dags test`: the round trip backup -> clean servers ->
restore -> equal state, and every way a restore must refuse to write.

The backup made here is the hardened set-up: every artifact encrypted (``encryption.scope: all``) with the
stack's key, in a bucket with object lock (``object_lock.mode: governance``); the restores run after a key
rotation (a new key first in the connection's password, the backup's key after it), so the round trip also
shows that a backup made with a retired key restores."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re

import pytest

from devstack import seed
from devstack.localconfig import REPO, state_dir, write_local_settings
from devstack.stack import seed_everything, wipe_everything
from devstack.state import mongo_state, qdrant_state, redis_state, same_redis_state, scraped
from ragvault.components import REGISTRY

pytestmark = pytest.mark.timeout(1200)

BACKUP, RESTORE = "intelligence_backup", "intelligence_restore"
COMPONENTS = ["qdrant", "mongodb", "redis"]
KEY_CONN = "AIRFLOW_CONN_RAGVAULT_ENCRYPTION"


def key_connection(*keys: str) -> str:
    return json.dumps({"conn_type": "generic", "password": ",".join(keys)})


#: the key the backup is made with (the stack's), and a newer one put in front of it before the restores
BACKUP_KEY = json.loads(os.environ[KEY_CONN])["password"]
NEW_KEY = base64.b64encode(os.urandom(32)).decode()
ROTATED = {KEY_CONN: key_connection(NEW_KEY, BACKUP_KEY)}


class Stack:
    """The three data stores of the local stack, through the package's own hooks."""

    def __init__(self):
        from airflow.providers.mongo.hooks.mongo import MongoHook

        from ragvault.hooks.qdrant import QdrantHook
        from ragvault.hooks.redis import RedisHook

        self.qdrant = QdrantHook()
        self.redis = RedisHook()
        self.mongo_hook = MongoHook()
        self.mongo = self.mongo_hook.get_conn()

    def wipe(self):
        """The seed's 'bring up clean instances'."""
        seed.wipe_qdrant(self.qdrant.client)
        seed.wipe_mongo(self.mongo)
        seed.wipe_redis(self.redis.connection_kwargs)

    def seed(self):
        self.wipe()
        return {"qdrant": seed.seed_qdrant(self.qdrant.client), "mongodb": seed.seed_mongo(self.mongo),
                "redis": seed.seed_redis(self.redis.connection_kwargs)}

    def state(self):
        return {"qdrant": qdrant_state(self.qdrant), "mongodb": mongo_state(self.mongo),
                "redis": redis_state(self.redis.get_conn)}

    def assert_same(self, before, after):
        assert after["qdrant"] == before["qdrant"]
        assert after["mongodb"] == before["mongodb"]
        assert same_redis_state(before["redis"], after["redis"], ttl_tolerance_ms=1000) == []


@pytest.fixture(scope="module")
def restore_bucket(new_bucket):
    """A bucket of this module's own, so that `latest` is the backup made here."""
    return new_bucket("ragvault-restore", object_lock=True)


@pytest.fixture(scope="module")
def stack():
    return Stack()


@pytest.fixture(scope="module")
def backup(airflow, tmp_path_factory, fresh_date, restore_bucket, stack):
    """The seeded stack (all nine components) backed up by a real run of the backup DAG:
    (date, config, state of the data stores at backup time)."""
    date = fresh_date()
    seed_everything(date)
    config = write_local_settings(tmp_path_factory.mktemp("restore") / "ragvault.yaml", bucket=restore_bucket,
                                  retries=0, encryption={"scope": "all"},
                                  object_lock={"mode": "governance", "days": 1})
    proc = airflow.run("dags", "test", BACKUP, date,
                       env={"RAGVAULT_CONFIG": str(config), KEY_CONN: key_connection(BACKUP_KEY)})
    assert proc.returncode == 0, proc.stdout[-5000:]
    return date, config, stack.state()


def restore(airflow, config, keys=ROTATED, **conf):
    conf.setdefault("components", COMPONENTS)
    proc = airflow.run("dags", "test", RESTORE, "--conf", json.dumps(conf),
                       env={"RAGVAULT_CONFIG": str(config), **keys})
    runs = [r for r in airflow.json_output("dags", "list-runs", RESTORE)]
    run = max(runs, key=lambda r: r["run_after"])
    return proc, airflow.task_states(RESTORE, run["run_id"])


def errors(proc) -> str:
    """The error lines of a run's output (the whole output is too long for an assertion message)."""
    lines = (proc.stdout + proc.stderr).splitlines()
    return "\n".join(line[:600] for line in lines if "Error" in line or "error" in line.split("]")[0]
                     or re.match(r"^\s+[a-z]+\[[^\]]*\]: ", line))[-8000:]  # or a problem, indented


def written(states) -> list[str]:
    """Restore tasks that ran (a restore that writes nothing has none)."""
    return [t for t, s in states.items() if ".restore" in t and s not in ("skipped", "upstream_failed", None)]


def test_round_trip_of_all_nine_components_onto_clean_servers(airflow, backup, stack, restore_bucket):
    date, config, at_backup = backup
    files = state_dir() / "demo-files"
    wipe_everything()
    assert not files.exists()
    # Prometheus keeps its TSDB (it cannot be emptied while it runs): the restore adds the backed-up blocks
    # beside it, which the plan calls an overwrite, so the date is confirmed.
    proc, states = restore(airflow, config, backup_date="latest", components=list(REGISTRY), confirm=date)
    assert proc.returncode == 0, errors(proc)
    assert {t: s for t, s in states.items() if s != "success"} == {}, states
    output = proc.stdout + proc.stderr
    assert "post-restore verification" in output
    for name in REGISTRY:  # every component's row in the verification table says equal
        assert re.search(rf"^{name} +\d+ +\d+ +yes\b", output, re.MULTILINE), name
    # and pushed: the restore passed, every component's items equal (through the real Prometheus)
    bucket = f'bucket="{restore_bucket}"'
    assert scraped(f"ragvault_restore_passed{{{bucket}}}", bool) == {"": 1.0}
    equal = scraped(f"ragvault_restore_items_equal{{{bucket}}}", lambda f: set(f) == set(REGISTRY))
    assert all(value >= 1 for value in equal.values()), equal
    stack.assert_same(at_backup, stack.state())
    # the stack's files are back byte for byte
    demo = REPO / "include" / "demo"
    for source in demo.rglob("*"):
        if source.is_file():
            assert (files / source.relative_to(demo)).read_bytes() == source.read_bytes(), source


# -- the weekly restore drill (intelligence_restore_drill), on the same backup --------------------------------

DRILL = "intelligence_restore_drill"


def scratch_data() -> dict:
    """What the drill's scratch servers hold (their connections: qdrant_drill, mongo_drill, redis_drill)."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    from ragvault.hooks.qdrant import QdrantHook
    from ragvault.hooks.redis import RedisHook

    mongo = MongoHook(mongo_conn_id="mongo_drill").get_conn()
    return {"qdrant": sorted(c.name for c in QdrantHook(qdrant_conn_id="qdrant_drill").client.get_collections()
                             .collections),
            "mongodb": sorted(set(mongo.list_database_names()) - {"admin", "local", "config"}),
            "redis": RedisHook(redis_conn_id="redis_drill").get_conn().dbsize()}


def production_files() -> dict:
    files = state_dir() / "demo-files"
    return {str(p): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}


def test_the_drill_restores_the_newest_backup_into_scratch_and_leaves_the_stack_alone(airflow, backup, stack,
                                                                                     s3_client, restore_bucket):
    date, config, at_backup = backup
    stack.seed()  # the stack holds other data than the backup: a drill that wrote there would show
    before = {"stores": stack.state(), "files": production_files()}
    proc = airflow.run("dags", "test", DRILL, "--conf", "{}", env={"RAGVAULT_CONFIG": str(config), **ROTATED})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, errors(proc)
    run = max(airflow.json_output("dags", "list-runs", DRILL), key=lambda r: r["run_after"])
    states = airflow.task_states(DRILL, run["run_id"])
    assert set(states.values()) == {"success"} and len(states) == len(REGISTRY) + 3, states
    assert f"restore drill of the backup of {date}" in output
    for name in REGISTRY:  # every component's row says ok
        row = rf"^{name} +(scratch server|temporary folder|offline) +\d+ +\d+ +ok\b"
        assert re.search(row, output, re.MULTILINE), [line for line in output.splitlines() if name in line][-5:]
    recorded = json.loads(s3_client.get_object(Bucket=restore_bucket, Key=f"{date}/drill.json")["Body"].read())
    assert recorded["passed"] is True and set(recorded["components"]) == set(REGISTRY)
    assert recorded["components"]["qdrant"]["items"] == len(at_backup["qdrant"])
    # the catalog shows it (ragvault list: the index, then the objects' HEADs)
    from ragvault.catalog import list_backups
    from ragvault.repository import BackupRepository

    for check in (False, True):
        [entry] = [e for e in list_backups(BackupRepository(s3_client, restore_bucket), check=check)
                   if e["date"] == date]
        assert entry["drill"] == {"passed": True, "drilled_at": recorded["drilled_at"], "problems": 0}, check
    # its metrics, through the real Prometheus (which scrapes the Pushgateway)
    assert scraped(f'ragvault_drill_passed{{bucket="{restore_bucket}"}}', lambda f: f.get("") == 1)
    passed = scraped(f'ragvault_drill_component_passed{{bucket="{restore_bucket}"}}',
                     lambda f: set(f) == set(REGISTRY))
    assert passed == dict.fromkeys(REGISTRY, 1.0)
    assert scraped(f'ragvault_drill_backup_date_timestamp_seconds{{bucket="{restore_bucket}"}}', lambda f: bool(f)) \
        == {"": datetime.datetime.fromisoformat(date).replace(tzinfo=datetime.UTC).timestamp()}
    # with a retention run too, every panel of the dashboard the package ships has data for this bucket
    from ragvault.config import load_settings
    from ragvault.metrics import push_retention
    from ragvault.retention import Policy, apply_retention

    kept = apply_retention(BackupRepository(s3_client, restore_bucket), Policy(enabled=True, keep_daily=1000,
                                                                                min_age_days=0))
    assert kept["removed"] == [] and push_retention(load_settings(config), kept)
    board = json.loads((REPO / "include" / "compose" / "grafana" / "dashboards" / "ragvault-backups.json").read_text())
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            assert scraped(target["expr"].replace("$bucket", restore_bucket), bool), (panel["title"], target["expr"])
    # the stack is byte-identical, and no scratch data is left behind
    stack.assert_same(before["stores"], stack.state())
    assert production_files() == before["files"]
    assert scratch_data() == {"qdrant": [], "mongodb": [], "redis": 0}


def test_a_drill_names_the_item_and_the_difference_when_a_scratch_target_differs(backup, s3_client,
                                                                                  restore_bucket):
    """Between the drill's restore and its comparison, a point is removed from a scratch collection, a
    scratch document edited, a scratch Redis value changed: each drill fails naming the item and the
    difference, and still cleans its scratch server."""
    from airflow.providers.mongo.hooks.mongo import MongoHook

    from ragvault.config import load_settings
    from ragvault.drill import DrillSettings, drill_component
    from ragvault.hooks.qdrant import QdrantHook
    from ragvault.hooks.redis import RedisHook
    from ragvault.rdb import iter_restore_entries
    from ragvault.repository import BackupRepository

    date, config, _ = backup
    settings = load_settings(config)
    repo = BackupRepository(s3_client, restore_bucket)
    manifest = repo.read_manifest(date)
    drill = DrillSettings.from_settings(settings)
    collection = sorted(manifest["components"]["qdrant"]["items"])[0]
    database = sorted(manifest["components"]["mongodb"]["items"])[0]
    first_key = {}

    def alter(name, scratch):
        if name == "qdrant":
            client = QdrantHook(qdrant_conn_id="qdrant_drill").client
            point = client.scroll(collection, limit=1)[0][0]
            client.delete(collection, points_selector=[point.id])
        elif name == "mongodb":
            db = MongoHook(mongo_conn_id="mongo_drill").get_conn()[database]
            name_ = sorted(db.list_collection_names())[0]
            document = db[name_].find_one(sort=[("_id", 1)])
            db[name_].update_one({"_id": document["_id"]}, {"$set": {"drill_edit": True}})
            first_key["mongodb"] = f"{name_}: document"
        else:
            from ragvault.components.base import RestoreContext

            ctx = RestoreContext(repo=repo, manifest=manifest, component="redis", settings=scratch)
            entry = next(e for e in iter_restore_entries(ctx.read(ctx.artifact("all", "dump.rdb")))
                         if e.type_name == "string" and e.expire_at_ms is None)
            RedisHook(redis_conn_id="redis_drill").get_conn(db=entry.db).set(entry.key, b"changed by the test")
            first_key["redis"] = f"db{entry.db} key {entry.key!r}: its value differs from the backup's"

    results = {name: drill_component(repo, manifest, name, settings, drill, after_restore=alter)
               for name in ("qdrant", "mongodb", "redis")}
    qdrant, mongodb, redis = (results[n]["problems"] for n in ("qdrant", "mongodb", "redis"))
    points = manifest["components"]["qdrant"]["items"][collection]["counts"]["points"]
    assert f"qdrant[{collection}]: {points - 1} points, {points} in the backup" in qdrant, qdrant
    assert any(p.startswith(f"mongodb[{database}]: {first_key['mongodb']}") and "differs from the export" in p
               for p in mongodb), mongodb
    assert f"redis[all]: {first_key['redis']}" in redis, redis
    assert all(results[n]["equal"] < results[n]["items"] for n in results)
    assert scratch_data() == {"qdrant": [], "mongodb": [], "redis": 0}


def test_a_drill_refuses_a_scratch_connection_that_reaches_production(backup, s3_client, restore_bucket, stack):
    from ragvault.config import Settings, load_settings
    from ragvault.drill import DrillError, DrillSettings, clean_scratch, drill_component
    from ragvault.repository import BackupRepository

    date, config, _ = backup
    data = load_settings(config).data
    # another connection id, the same server: localhost resolves to the production Redis's 127.0.0.1
    redis_default = json.loads(os.environ["AIRFLOW_CONN_REDIS_DEFAULT"])
    os.environ["AIRFLOW_CONN_REDIS_LOOKALIKE"] = json.dumps({**redis_default, "host": "localhost"})
    try:
        settings = Settings(data={**data, "drill": {**data["drill"], "connections": {**data["drill"]["connections"],
                                                                                    "redis": "redis_lookalike"}}},
                            source="test")
        stack.seed()
        before = stack.state()
        repo = BackupRepository(s3_client, restore_bucket)
        with pytest.raises(DrillError, match="'redis_lookalike' reaches redis://localhost:.*the production server"):
            drill_component(repo, repo.read_manifest(date), "redis", settings, DrillSettings.from_settings(settings))
        # the drill's teardown does not empty it either
        assert clean_scratch(settings, repo.read_manifest(date), ["redis"]) == []
        stack.assert_same(before, stack.state())
    finally:
        del os.environ["AIRFLOW_CONN_REDIS_LOOKALIKE"]


def seeded_texts() -> set[bytes]:
    """Lines of the stack's files and values of its seeded data, which no stored object may hold in clear."""
    texts = {b"Answer using only the context below", b"what is the "}
    for source in (REPO / "include" / "demo").rglob("*"):
        if source.is_file():
            texts.update(line.strip() for line in source.read_bytes().splitlines() if len(line.strip()) >= 30)
    return texts


def test_every_object_of_the_backup_is_locked_and_none_holds_plaintext(backup, s3_client, restore_bucket):
    from ragvault.crypto import MAGIC, SCHEME, Cipher, parse_key

    date, _, _ = backup
    manifest = json.loads(s3_client.get_object(Bucket=restore_bucket, Key=f"{date}/manifest.json")["Body"].read())
    assert {c for c in manifest["components"]} == set(REGISTRY)
    key = Cipher(parse_key(BACKUP_KEY)).key_fingerprint
    texts = seeded_texts()
    assert len(texts) > 50
    listed = s3_client.list_objects_v2(Bucket=restore_bucket, Prefix=f"{date}/")["Contents"]
    others = {o["Key"] for o in listed} - {a["key"] for a in manifest["artifacts"]}
    # nothing else: the manifest, and the results of a verification and of a restore drill beside it
    assert others <= {f"{date}/manifest.json", f"{date}/verification.json", f"{date}/drill.json"}, others
    for artifact in manifest["artifacts"]:
        assert (artifact["encryption"], artifact["key_fingerprint"]) == (SCHEME, key), artifact["key"]
        assert artifact.get("raw_sha256") is None and artifact.get("content_mac"), artifact["key"]
    for listed_object in listed:
        if listed_object["Key"] not in others or listed_object["Key"].endswith("/manifest.json"):
            # sealed once committed: locked until the day after the backup's date
            head = s3_client.head_object(Bucket=restore_bucket, Key=listed_object["Key"])
            assert head["ObjectLockMode"] == "GOVERNANCE", listed_object["Key"]
            assert head["ObjectLockRetainUntilDate"].date().isoformat() > date, listed_object["Key"]
        body = s3_client.get_object(Bucket=restore_bucket, Key=listed_object["Key"])["Body"].read()
        if listed_object["Key"] not in others:
            assert body.startswith(MAGIC), listed_object["Key"]
        found = [t for t in texts if t in body]
        assert not found, (listed_object["Key"], found[:3])


def test_without_the_backups_key_the_restore_names_it_and_writes_nothing(airflow, backup, stack):
    from ragvault.crypto import Cipher, parse_key

    date, config, _ = backup
    stack.wipe()
    proc, states = restore(airflow, config, keys={KEY_CONN: key_connection(NEW_KEY)}, backup_date=date,
                           confirm=date)
    assert states["verify_backup"] == "failed", states
    assert written(states) == [], states
    assert stack.state() == {"qdrant": {}, "mongodb": {}, "redis": {}}
    retired, current = Cipher(parse_key(BACKUP_KEY)).key_fingerprint, Cipher(parse_key(NEW_KEY)).key_fingerprint
    output = proc.stdout + proc.stderr
    assert f"encrypted with the key of fingerprint {retired}" in output, errors(proc)
    assert f"have fingerprint(s) {current}: add the key the backup was made with" in output, errors(proc)
    assert BACKUP_KEY not in output and NEW_KEY not in output


def test_dry_run_writes_nothing(airflow, backup, stack):
    date, config, _ = backup
    stack.wipe()
    proc, states = restore(airflow, config, backup_date=date, dry_run=True)
    assert proc.returncode == 0, errors(proc)
    assert states["plan_restore"] == "success" and states["verify_backup"] == "success"
    assert written(states) == [], states
    assert stack.state() == {"qdrant": {}, "mongodb": {}, "redis": {}}
    output = proc.stdout + proc.stderr
    assert "restore plan" in output and "dry run: nothing is written" in output


def test_restore_over_data_needs_confirm(airflow, backup, stack):
    date, config, at_backup = backup
    stack.seed()
    before = stack.state()
    proc, states = restore(airflow, config, backup_date=date)
    assert states["plan_restore"] == "failed", states
    assert written(states) == [], states
    assert states["resume_ingestion"] == "success"
    assert f"trigger the restore again with confirm = {date}" in proc.stdout + proc.stderr
    stack.assert_same(before, stack.state())

    proc, states = restore(airflow, config, backup_date=date, confirm=date)
    assert proc.returncode == 0, errors(proc)
    stack.assert_same(at_backup, stack.state())


def clone_backup(s3, bucket, date, new_date, damage=None):
    """Copy a backup to another date (manifest rewritten to match), optionally damaging the copy."""
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{date}/manifest.json")["Body"].read())
    for artifact in manifest["artifacts"]:
        new_key = new_date + artifact["key"][len(date):]
        s3.copy_object(Bucket=bucket, Key=new_key, CopySource={"Bucket": bucket, "Key": artifact["key"]})
        artifact["key"] = new_key
        artifact["etag"] = s3.head_object(Bucket=bucket, Key=new_key)["ETag"]
    for component in manifest["components"].values():
        for item in component["items"].values():
            item["artifacts"] = [new_date + k[len(date):] for k in item["artifacts"]]
    manifest["backup_date"] = new_date
    victim = next(a for a in manifest["artifacts"] if a["key"].endswith("/redis/dump.rdb"))
    if damage == "flipped byte":
        del victim["etag"]  # as in a store that keeps no ETags: the checksums alone must catch it
    if damage != "no manifest":
        s3.put_object(Bucket=bucket, Key=f"{new_date}/manifest.json", Body=json.dumps(manifest).encode())
    if damage in ("flipped byte", "replaced object"):
        body = bytearray(s3.get_object(Bucket=bucket, Key=victim["key"])["Body"].read())
        body[len(body) // 2] ^= 0x01
        s3.put_object(Bucket=bucket, Key=victim["key"], Body=bytes(body))
    elif damage == "missing object":
        s3.delete_object(Bucket=bucket, Key=victim["key"])
    return victim["key"]


@pytest.mark.parametrize("case", ["flipped byte", "replaced object", "missing object", "no manifest", "unknown date",
                                  "malformed date"])
def test_a_bad_backup_fails_before_any_write(airflow, backup, stack, s3_client, restore_bucket, fresh_date, case):
    date, config, _ = backup
    stack.wipe()  # empty targets: any write would show
    target = fresh_date()
    victim = None
    if case in ("flipped byte", "replaced object", "missing object", "no manifest"):
        victim = clone_backup(s3_client, restore_bucket, date, target, damage=case)
    elif case == "malformed date":
        target = "2031-02-30"  # the form lets it through: a well-formed day number
    proc, states = restore(airflow, config, backup_date=target, confirm=target)
    output = proc.stdout + proc.stderr
    failed = "verify_backup" if case in ("flipped byte", "replaced object", "missing object") else "resolve_backup"
    assert states[failed] == "failed", states
    assert written(states) == [], states
    assert states["resume_ingestion"] == "success", states
    assert stack.state() == {"qdrant": {}, "mongodb": {}, "redis": {}}
    if case == "flipped byte":
        expected = f"{victim}: stored bytes differ from the manifest"
    elif case == "replaced object":
        expected = f"s3://{restore_bucket}/{victim} was replaced after its manifest was written"
    elif case == "missing object":
        expected = f"s3://{restore_bucket}/{victim} does not exist"
    elif case == "no manifest":
        expected = f"backup {target} is incomplete (it has no manifest.json"
    elif case == "unknown date":
        expected = f"there is no backup for {target}"
    else:
        expected = f"backup date '{target}' is not a calendar date"
    assert expected in output, output[-4000:]


def test_an_invalid_form_is_refused(airflow, backup):
    _, config, _ = backup
    for conf in ({"backup_date": "yesterday"}, {"backup_date": "2031-13-45"},
                 {"components": ["qdrant", "elasticsearch"]}):
        proc = airflow.run("dags", "test", RESTORE, "--conf", json.dumps(conf), env={"RAGVAULT_CONFIG": str(config)})
        assert proc.returncode != 0
        rejected = conf.get("backup_date") or conf["components"][-1]
        assert rejected in proc.stdout + proc.stderr, (conf, proc.stdout[-2000:] + proc.stderr[-2000:])


def tree_bytes(root) -> dict:
    """Every file under ``root`` (links as their target), by relative path."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def test_one_unsafe_artifact_stops_the_restore_before_any_target_is_written(airflow, backup, stack, s3_client,
                                                                           restore_bucket):
    """A backup whose checksums are all right but whose ETL archive would write outside etl_scripts_dir (made
    from a compromised host, say): the restore of redis + infra refuses in plan_restore, before Redis (restored
    first in the seed's order) is flushed, and every target stays byte-identical."""
    import io
    import tarfile

    from ragvault.config import load_settings
    from ragvault.repository import BackupRepository

    date, config, _ = backup
    repo = BackupRepository(s3_client, restore_bucket)
    manifest = repo.read_manifest(date)
    bad_date = "2029-01-01"  # older than the module's backup, so `latest` stays that one
    for artifact in manifest["artifacts"]:
        target = bad_date + artifact["key"][len(date):]
        s3_client.copy_object(Bucket=restore_bucket, Key=target,
                              CopySource={"Bucket": restore_bucket, "Key": artifact["key"]})
        artifact.update(key=target, etag=None)
    for section in manifest["components"].values():
        for item in section["items"].values():
            item["artifacts"] = [bad_date + key[len(date):] for key in item["artifacts"]]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        body = b"#!/bin/sh\necho owned\n"
        member = tarfile.TarInfo("../../escaped.sh")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    unsafe = repo.put_artifact(bad_date, "infra", "etl_scripts.tar", archive.getvalue(), compression="gzip")
    [entry] = [a for a in manifest["artifacts"] if a["key"] == unsafe.key]
    entry.update({k: v for k, v in unsafe.to_dict().items() if k != "content_type"})
    manifest["backup_date"] = bad_date
    repo.commit_manifest(manifest)

    stack.seed()
    infra = load_settings(config).component("infra")
    scripts_dir = infra["etl_scripts_dir"]
    before = {"stores": stack.state(), "scripts": tree_bytes(scripts_dir),
              "compose": open(infra["compose_path"], "rb").read(), "env": open(infra["env_path"], "rb").read()}
    proc, states = restore(airflow, config, backup_date=bad_date, components=["redis", "infra"], confirm=bad_date)
    assert states["verify_backup"] == "success", states  # every checksum is right: only the content is unsafe
    assert states["plan_restore"] == "failed", states
    assert written(states) == [], states
    output = proc.stdout + proc.stderr
    assert "pre-flight checks" in output and "nothing was written to any target" in output, errors(proc)
    assert "infra[all]" in output and "escaped.sh" in output, errors(proc)
    stack.assert_same(before["stores"], stack.state())
    assert tree_bytes(scripts_dir) == before["scripts"]
    assert open(infra["compose_path"], "rb").read() == before["compose"]
    assert open(infra["env_path"], "rb").read() == before["env"]
    from pathlib import Path

    assert not (Path(scripts_dir).parent.parent / "escaped.sh").exists()
