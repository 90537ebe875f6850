"""Redis Cluster: backed up master by master, restored by hash slot onto a cluster of any shape or a standalone
server. Real redis-server nodes in cluster mode on loopback (``devstack.state.spare_redis_cluster``), a password
on every node."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.crc import key_slot

from devstack import seed
from devstack.state import cluster_state, redis_state, same_redis_state, spare_redis, spare_redis_cluster
from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.redis import RedisComponent
from ragvault.rdb import iter_restore_entries
from ragvault.repository import utcnow_iso

PASSWORD = "cluster-secret"
SLOTS = 16384


def seed_cluster(port: int, password: str | None = PASSWORD, scale: float = 2) -> int:
    return seed.seed_redis_cluster("127.0.0.1", port, password=password, scale=scale)


def connect(monkeypatch, target_settings, conn_id: str, port: int, password: str | None = PASSWORD):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "redis", "host": "127.0.0.1", "port": port, **({"password": password} if password else {})}))
    return RedisComponent(target_settings("redis", conn_id))


@pytest.fixture(scope="module")
def source_ports():
    with spare_redis_cluster(3, password=PASSWORD) as ports:
        yield ports


@pytest.fixture(scope="module")
def source_keys(source_ports) -> int:
    return seed_cluster(source_ports[0])


@pytest.fixture
def cluster_backup(monkeypatch, target_settings, repo, backup_date, source_ports, source_keys):
    """The source cluster backed up the way the DAG does it: its nodes listed, then one backup per node (side by
    side, as mapped tasks run); returns ``(manifest, the state at the backup)``."""
    component = connect(monkeypatch, target_settings, "redis_cluster_source", source_ports[0])
    state = cluster_state(source_ports, PASSWORD)
    ctx = BackupContext(repo=repo, date=backup_date, component="redis", run={"run_id": "test"})
    items = component.list_items()
    with ThreadPoolExecutor(len(items)) as pool:
        results = list(pool.map(lambda item: component.backup(ctx, item), items))
    manifest = repo.build_manifest(backup_date, results, {"run_id": "test", "at": utcnow_iso()})
    repo.commit_manifest(manifest)
    return manifest, state


def restore_all(component: RedisComponent, ctx, parallel: bool = True) -> dict[str, dict]:
    items = component.restore_items(ctx.section)
    with ThreadPoolExecutor(len(items) if parallel else 1) as pool:
        return dict(zip(items, pool.map(lambda item: component.restore(ctx, item), items), strict=True))


def test_a_cluster_is_backed_up_master_by_master_with_its_slots(cluster_backup, source_ports, repo):
    manifest, state = cluster_backup
    section = manifest["components"]["redis"]
    items = list(section["items"])
    assert items == sorted(f"127.0.0.1:{port}" for port in source_ports)
    assert section["counts"]["keys"] == len(state[0]) and section["counts"]["slots"] == SLOTS
    covered = bytearray(SLOTS)
    for port in source_ports:
        item = f"127.0.0.1:{port}"
        details = section["items"][item]["details"]
        node = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
        assert details["cluster"]["node_id"] == node.execute_command("CLUSTER MYID").decode()
        assert details["cluster"]["role"] == "master" and details["cluster"]["masters"] == 3
        for first, last in details["cluster"]["slots"]:
            assert not any(covered[first:last + 1]), "two nodes hold one slot"
            covered[first:last + 1] = b"\x01" * (last - first + 1)
        # the node's RDB holds exactly that node's keys, each in the node's slots
        artifact = next(a for a in manifest["artifacts"] if a["item"] == item)
        assert artifact["key"].endswith(f"/redis/nodes/127.0.0.1_{port}/dump.rdb")
        keys = {entry.key for entry in iter_restore_entries(repo.iter_artifact(artifact))}
        assert keys == set(node.scan_iter(count=1000)) and keys
        assert details["keyspace"]["db0"]["keys"] == len(keys)
        ranges = details["cluster"]["slots"]
        assert all(any(a <= key_slot(k) <= b for a, b in ranges) for k in keys)
    assert all(covered)


def test_restore_onto_a_cluster_of_two_masters(cluster_backup, monkeypatch, target_settings, restore_context):
    """A different shape: every key goes to the master that owns its slot there; the items run side by side."""
    manifest, state = cluster_backup
    with spare_redis_cluster(2, password=PASSWORD) as ports:
        target = connect(monkeypatch, target_settings, "redis_cluster_two", ports[0])
        ctx = restore_context(manifest, "redis", target.settings)
        for item in target.restore_items(ctx.section):
            assert target.preflight(ctx, item) == []
            assert not target.inspect_target(ctx, item)["holds_data"]
        counts = restore_all(target, ctx)
        assert sum(c["keys"] for c in counts.values()) == len(state[0])
        assert same_redis_state(state, cluster_state(ports, PASSWORD), ttl_tolerance_ms=1000) == []
        assert all(target.verify_restore(ctx, item) == [] for item in counts)

        # a key lost after the restore: the verification of the item whose slots hold it says so
        lost = next(iter(state[0]))  # bytes
        redis.RedisCluster(host="127.0.0.1", port=ports[0], password=PASSWORD).delete(lost)
        owner = next(item for item, c in manifest["components"]["redis"]["items"].items()
                     if any(a <= key_slot(lost) <= b for a, b in c["details"]["cluster"]["slots"]))
        problems = target.verify_restore(ctx, owner)
        expected = manifest["components"]["redis"]["items"][owner]["details"]["keyspace"]["db0"]["keys"]
        assert any(f"{expected - 1} keys on the cluster of" in p and f"{expected} in the backup" in p
                   for p in problems), problems


def test_restore_over_the_same_cluster_brings_back_the_backup(cluster_backup, monkeypatch, target_settings,
                                                              restore_context, source_ports):
    """Over data: the plan says what would be deleted, and afterwards the cluster holds the backup's keys and
    nothing else (changed, deleted and new keys alike)."""
    manifest, state = cluster_backup
    cluster = redis.RedisCluster(host="127.0.0.1", port=source_ports[0], password=PASSWORD)
    changed, deleted = sorted(state[0])[:2]
    cluster.delete(changed)
    cluster.set(changed, "changed")
    cluster.delete(deleted)
    for i in range(50):
        cluster.set(f"junk:{i}", i)
    target = connect(monkeypatch, target_settings, "redis_cluster_same", source_ports[0])
    ctx = restore_context(manifest, "redis", target.settings)
    plans = [target.inspect_target(ctx, item) for item in target.restore_items(ctx.section)]
    assert all(p["holds_data"] and "they would be deleted" in p["what"] for p in plans), plans
    restore_all(target, ctx)
    assert same_redis_state(state, cluster_state(source_ports, PASSWORD), ttl_tolerance_ms=1000) == []


def test_restoring_one_node_replaces_only_its_slots(cluster_backup, monkeypatch, target_settings, restore_context):
    manifest, state = cluster_backup
    items = manifest["components"]["redis"]["items"]
    first, *others = sorted(items, key=lambda i: items[i]["details"]["cluster"]["slots"][0][0])
    first_ranges = items[first]["details"]["cluster"]["slots"]

    def in_first(key: str | bytes) -> bool:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return any(a <= slot <= b for a, b in first_ranges)

    with spare_redis_cluster(3, password=PASSWORD) as ports:
        cluster = redis.RedisCluster(host="127.0.0.1", port=ports[0], password=PASSWORD)
        strays = [f"stray:{i}" for i in range(200)]
        for key in strays:
            cluster.set(key, "x")
        target = connect(monkeypatch, target_settings, "redis_cluster_one", ports[0])
        ctx = restore_context(manifest, "redis", target.settings)
        counts = target.restore(ctx, first)
        expected = {k: v for k, v in state[0].items() if in_first(k)}
        assert counts["keys"] == len(expected) and counts["outside"] == 0
        after = cluster_state(ports, PASSWORD)[0]
        assert {k for k in strays if k.encode() in after} == {k for k in strays if not in_first(k)}
        assert same_redis_state({0: expected}, {0: {k: v for k, v in after.items() if not k.startswith(b"stray:")}},
                                ttl_tolerance_ms=1000) == []
        assert target.verify_restore(ctx, first) == []


def test_a_cluster_backup_restores_onto_a_standalone_server(cluster_backup, monkeypatch, target_settings,
                                                            restore_context):
    manifest, state = cluster_backup
    with spare_redis(password="standalone") as (port, client_for_db):
        client_for_db(0).set("stray", "x")
        target = connect(monkeypatch, target_settings, "redis_standalone", port, password="standalone")
        ctx = restore_context(manifest, "redis", target.settings)
        restore_all(target, ctx, parallel=False)
        assert same_redis_state(state, redis_state(client_for_db), ttl_tolerance_ms=1000) == []
        assert all(target.verify_restore(ctx, item) == [] for item in target.restore_items(ctx.section))


def test_a_standalone_backup_restores_onto_a_cluster(monkeypatch, target_settings, restore_context, repo,
                                                     backup_date):
    """db 0 of a standalone server into a cluster of three; a backup with keys in other dbs is refused by the
    pre-flight check, naming them, and so is restore_method replication."""
    with spare_redis() as (port, client_for_db):
        for i in range(300):
            client_for_db(0).set(f"{{tag{i % 7}}}:k{i}", i, px=3_600_000 if i % 3 == 0 else None)
            client_for_db(0).rpush(f"list:{i}", *range(i % 5 + 1))
        source = redis_state(client_for_db)
        component = connect(monkeypatch, target_settings, "redis_single", port, password=None)
        assert component.list_items() == ["all"]
        ctx = BackupContext(repo=repo, date=backup_date, component="redis", run={"run_id": "test"})
        result = component.backup(ctx, "all")
        manifest = repo.build_manifest(backup_date, [result], {"run_id": "test", "at": utcnow_iso()})
        repo.commit_manifest(manifest)
    with_db2 = json.loads(json.dumps(manifest))  # the same backup, as if db 2 had held a key
    with_db2["components"]["redis"]["items"]["all"]["details"]["keyspace"]["db2"] = {"keys": 1, "expires": 0}

    with spare_redis_cluster(3, password=PASSWORD) as ports:
        target = connect(monkeypatch, target_settings, "redis_cluster_three", ports[0])
        ctx = restore_context(manifest, "redis", target.settings)
        assert target.preflight(ctx, "all") == []
        target.restore(ctx, "all")
        assert same_redis_state(source, cluster_state(ports, PASSWORD), ttl_tolerance_ms=1000) == []
        assert target.verify_restore(ctx, "all") == []

        refused = target.preflight(restore_context(with_db2, "redis", target.settings), "all")
        assert any("keys in db2 (1): the cluster of" in p and "is a Redis Cluster, which has db 0 only" in p
                   for p in refused), refused
        strict = RedisComponent(target_settings("redis", "redis_cluster_three"))
        strict.config = {**strict.config, "restore_method": "replication"}
        assert any("restore_method is replication" in p for p in strict.preflight(ctx, "all"))


def test_a_node_that_is_not_in_a_cluster_fails_naming_it(monkeypatch, target_settings, context):
    with spare_redis() as (port, _):
        component = connect(monkeypatch, target_settings, "redis_not_cluster", port, password=None)
        with pytest.raises(ComponentError, match=rf"redis\[127.0.0.1:{port}\]: cannot read the cluster's layout "
                                                 r"from redis://127.0.0.1:\d+: ResponseError: .*cluster"):
            component.backup(context("redis"), f"127.0.0.1:{port}")


def test_a_cluster_with_unassigned_slots_is_not_backed_up(monkeypatch, target_settings, source_ports):
    """A node of a cluster that serves none of the slots (here a lone cluster-mode node): listing fails, saying
    how many slots the cluster serves."""
    from devstack.state import free_port

    args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()))
    with spare_redis(extra_args=args) as (port, _):
        component = connect(monkeypatch, target_settings, "redis_lone_node", port, password=None)
        with pytest.raises(ComponentError, match=r"redis: the cluster of redis://127.0.0.1:\d+ serves 0 of the "
                                                 r"16384 hash slots"):
            component.list_items()


def test_the_ingestion_flag_reaches_the_master_of_its_slot(monkeypatch, target_settings, source_ports):
    """The ingestion pause's flag key (ragvault.ingestion) is written through the hook's key client: on a cluster,
    whatever node the connection names, the key lands on the master that owns its slot."""
    from ragvault.hooks.redis import RedisHook

    connect(monkeypatch, target_settings, "redis_flag", source_ports[-1])
    client = RedisHook("redis_flag").key_client()
    keys = [f"ingestion:paused:{i}" for i in range(20)]  # spread over the three masters' slots
    for key in keys:
        client.set(key, "1")
    nodes = {port: redis.Redis(host="127.0.0.1", port=port, password=PASSWORD) for port in source_ports}
    held = {port: {k.decode() for k in node.scan_iter(match="ingestion:paused:*")} for port, node in nodes.items()}
    owners = {key: [port for port in source_ports if key in held[port]] for key in keys}
    assert all(len(found) == 1 for found in owners.values()), owners
    assert len({found[0] for found in owners.values()}) > 1
    for key in keys:
        client.delete(key)


def test_a_drill_of_a_cluster_backup_runs_on_the_standalone_scratch_server(cluster_backup, monkeypatch,
                                                                          target_settings, repo):
    """The restore drill restores each node of the backup into its scratch Redis (``redis_drill``, a standalone
    server), compares each against the backup, and empties it again."""
    from ragvault.drill import DrillSettings, drill_component
    from ragvault.hooks.redis import RedisHook

    manifest, state = cluster_backup
    settings = target_settings("redis", "redis_cluster_source")
    result = drill_component(repo, manifest, "redis", settings, DrillSettings.from_settings(settings))
    assert result["problems"] == [] and result["items"] == 3 and result["equal"] == 3, result
    assert result["how"] == "scratch server"
    assert RedisHook("redis_drill").get_conn().dbsize() == 0
