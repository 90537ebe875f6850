"""Redis backup against a real redis-server: the fetched dump.rdb, loaded by a second server, holds every key."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile

import pytest

from devstack import seed
from devstack.state import free_port, redis_state, same_redis_state, spare_redis
from ragvault.components.base import ComponentError
from ragvault.components.redis import RedisComponent
from ragvault.hooks.redis import RedisHook


@pytest.fixture(scope="module")
def redis_hook():
    return RedisHook()


@pytest.fixture(scope="module")
def seeded_redis(redis_hook):
    kwargs = redis_hook.connection_kwargs
    seed.wipe_redis(kwargs)
    return seed.seed_redis(kwargs)


def test_rdb_holds_every_key_with_type_value_and_ttl(settings, context, repo, redis_hook, seeded_redis, tmp_path):
    source = redis_state(redis_hook.get_conn)
    assert len(source) >= 3, "the seed spreads keys over several dbs"
    kinds = {kind for keys in source.values() for kind, _, _ in keys.values()}
    assert kinds >= {"string", "list", "set", "hash", "zset", "stream"}
    assert any(ttl > 0 for keys in source.values() for _, _, ttl in keys.values())

    result = RedisComponent(settings).backup(context("redis"), None)

    rdb = next(a for a in result.artifacts if a.key.endswith("/redis/dump.rdb"))
    path = tmp_path / "dump.rdb"
    with path.open("wb") as handle:
        for chunk in repo.iter_artifact(rdb):
            handle.write(chunk)
    assert path.read_bytes()[:5] == b"REDIS"
    with spare_redis(path) as (_, client_for_db):
        loaded = redis_state(client_for_db)
    assert same_redis_state(source, loaded, ttl_tolerance_ms=1000) == []

    expected = {f"db{db}": len(keys) for db, keys in source.items()}
    assert {db: s["keys"] for db, s in result.details["keyspace"].items()} == expected
    assert result.counts["keys"] == sum(expected.values())


def test_aof_directory_is_archived_when_mounted(settings, context, repo, redis_hook, seeded_redis):
    data_dir = os.environ.get("RAGVAULT_REDIS_DATA_DIR") or redis_hook.get_conn().config_get("dir")["dir"]
    component = RedisComponent(settings)
    component.config = {"aof_dir": data_dir}
    result = component.backup(context("redis"), None)
    aof = next(a for a in result.artifacts if a.key.endswith("appendonly.aof.tar.zst"))
    archive = tarfile.open(fileobj=io.BytesIO(b"".join(repo.iter_artifact(aof))))
    names = archive.getnames()
    assert any(n.endswith(".manifest") for n in names), names
    assert any(".base." in n for n in names), names
    manifest = archive.extractfile(next(n for n in names if n.endswith(".manifest"))).read().decode()
    for line in manifest.splitlines():  # every file the AOF manifest names is in the archive
        listed = line.split()[1]
        assert any(n.endswith("/" + listed) for n in names), (listed, names)


def test_aof_dir_that_does_not_hold_the_aof_fails_clearly(settings, context, tmp_path, seeded_redis):
    component = RedisComponent(settings)
    component.config = {"aof_dir": str(tmp_path)}
    with pytest.raises(Exception, match=r"redis\[appendonly.aof\]: AOF is on but .*aof_dir"):
        component.backup(context("redis"), None)


def test_wrong_password_names_the_server(settings, context, monkeypatch):
    conn = json.loads(os.environ["AIRFLOW_CONN_REDIS_DEFAULT"])
    conn["password"] = "wrong"
    monkeypatch.setenv("AIRFLOW_CONN_REDIS_BAD", json.dumps(conn))
    bad = dataclasses.replace(settings, data={**settings.data, "connections": {"redis": "redis_bad"}})
    with pytest.raises(Exception, match="(?i)(auth|password)"):
        RedisComponent(bad).backup(context("redis"), None)


def test_a_cluster_node_is_not_backed_up_as_a_whole_server_nor_taken_as_a_target_without_slots(
        settings, context, backed_up, restore_context, target_settings, seeded_redis, monkeypatch, repo, backup_date):
    """A real redis-server in cluster mode, alone, serving no slot: backed up as a whole server (item ``all``, as
    if the nodes had not been listed) it fails naming the node and the cause, before writing anything; as a
    restore target, the pre-flight check says it serves none of the slots and that the backup's other dbs have
    no place in a cluster. (A whole cluster: test_redis_cluster.py.)"""
    manifest = backed_up(RedisComponent(settings))
    # the cluster bus on a port of its own (the default, port + 10000, may not exist for a high free port)
    cluster = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()))
    with spare_redis(extra_args=cluster) as (port, _):
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_CLUSTER", json.dumps({
            "conn_type": "redis", "host": "127.0.0.1", "port": port}))
        node = RedisComponent(target_settings("redis", "redis_cluster"))
        before = {o["Key"] for o in repo.client.list_objects_v2(Bucket=repo.bucket, Prefix=f"{backup_date}/").get(
            "Contents", [])}
        with pytest.raises(ComponentError, match=rf"redis\[dump.rdb\]: .*127.0.0.1:{port} is a Redis Cluster node "
                                                 r".*only the keys of that node's slots"):
            node.backup(context("redis"), "all")
        after = {o["Key"] for o in repo.client.list_objects_v2(Bucket=repo.bucket, Prefix=f"{backup_date}/").get(
            "Contents", [])}
        assert after == before
        problems = node.preflight(restore_context(manifest, "redis", node.settings), "all")
        assert any(f"127.0.0.1:{port} (0 masters) serves 0 of the 16384 hash slots" in p for p in problems), problems
        assert any("keys in db1" in p and "which has db 0 only" in p for p in problems), problems


# -- restore ----------------------------------------------------------------------------------------------


def with_redis_config(settings, **config):
    data = {**settings.data, "components": {**settings.data["components"],
                                            "redis": {**settings.data["components"]["redis"], **config}}}
    return dataclasses.replace(settings, data=data)


@pytest.mark.parametrize("method", ["replication", "restore"])
def test_restore_onto_a_blank_server_over_the_network(settings, backed_up, restore_context, target_settings,
                                                      redis_hook, seeded_redis, monkeypatch, method):
    """replication: the target loads dump.rdb itself as the replica of the task for one full sync; restore: one
    RESTORE per key. Both give the source's keys, values and TTLs, over data or not."""
    source = redis_state(redis_hook.get_conn)
    manifest = backed_up(RedisComponent(settings))
    with spare_redis(password="target-secret") as (port, client_for_db):
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_TARGET", json.dumps({
            "conn_type": "redis", "host": "127.0.0.1", "port": port, "password": "target-secret"}))
        restorer = RedisComponent(with_redis_config(target_settings("redis", "redis_target"), restore_method=method))
        ctx = restore_context(manifest, "redis", restorer.settings)
        assert restorer.restore_items(ctx.section) == ["all"]
        assert not restorer.inspect_target(ctx, "all")["holds_data"]
        counts = restorer.restore(ctx, "all")
        assert counts["keys"] == sum(len(keys) for keys in source.values())
        assert counts.get("replicated", 0) == (method == "replication")
        assert client_for_db(0).info("replication")["role"] == "master"
        assert same_redis_state(source, redis_state(client_for_db), ttl_tolerance_ms=1000) == []
        assert restorer.verify_restore(ctx, "all") == []

        # Over data: the plan says it, the restore flushes first, and the verification notices a change.
        client_for_db(9).set("stray", "x")
        assert restorer.inspect_target(ctx, "all")["holds_data"]
        restorer.restore(ctx, "all")
        assert same_redis_state(source, redis_state(client_for_db), ttl_tolerance_ms=1000) == []
        client_for_db(0).delete(next(iter(source[0])))
        assert any(p.startswith("db0:") for p in restorer.verify_restore(ctx, "all"))


def test_auto_falls_back_to_restore_when_the_server_cannot_connect_back(
    settings, backed_up, restore_context, target_settings, redis_hook, seeded_redis, monkeypatch, caplog
):
    """A server that cannot reach the worker (here: told to connect to an address nothing listens on) stays a
    master with its data, and the restore goes on key by key, saying why."""
    import logging

    caplog.set_level(logging.WARNING, logger="ragvault")
    source = redis_state(redis_hook.get_conn)
    manifest = backed_up(RedisComponent(settings))
    with spare_redis() as (port, client_for_db):
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_TARGET", json.dumps({"conn_type": "redis", "host": "127.0.0.1",
                                                                    "port": port}))
        restorer = RedisComponent(with_redis_config(
            target_settings("redis", "redis_target"), replication_advertise_host="127.0.0.3",
            replication_accept_seconds=2))
        ctx = restore_context(manifest, "redis", restorer.settings)
        counts = restorer.restore(ctx, "all")
        assert "replicated" not in counts and counts["keys"] == sum(len(keys) for keys in source.values())
        assert same_redis_state(source, redis_state(client_for_db), ttl_tolerance_ms=1000) == []
        assert client_for_db(0).info("replication")["role"] == "master"
        assert any("did not connect back to 127.0.0.3:" in r.getMessage() and "key by key" in r.getMessage()
                   for r in caplog.records)

        strict = RedisComponent(with_redis_config(restorer.settings, restore_method="replication"))
        with pytest.raises(ComponentError, match="restore_method replication: .* did not connect back"):
            strict.restore(ctx, "all")


def test_a_damaged_rdb_is_refused_by_the_server_and_its_data_kept(
    settings, backed_up, restore_context, target_settings, redis_hook, seeded_redis, monkeypatch, repo
):
    """A server that loads a damaged RDB from its master exits (rdbReportError, Redis's rdb.c): the task checks
    the file's CRC64 before it makes the server a replica, refuses the damaged file and leaves the server as it
    was."""
    manifest = backed_up(RedisComponent(settings))
    artifact = next(a for a in manifest["artifacts"] if a["key"].endswith("/redis/dump.rdb"))
    rdb = bytearray(b"".join(repo.iter_artifact(artifact)))
    rdb[len(rdb) // 2] ^= 0xFF
    damaged = repo.put_artifact(manifest["backup_date"], "redis-damaged", "dump.rdb", bytes(rdb))
    broken = json.loads(json.dumps(manifest))
    broken["artifacts"] = [{**damaged.to_dict(), "key": a["key"], "stored_at": damaged.key, "component": "redis",
                            "item": a["item"]} if a is artifact or a["key"] == artifact["key"] else a
                           for a in broken["artifacts"]]
    with spare_redis() as (port, client_for_db):
        client_for_db(0).set("kept", "yes")
        monkeypatch.setenv("AIRFLOW_CONN_REDIS_TARGET", json.dumps({"conn_type": "redis", "host": "127.0.0.1",
                                                                    "port": port}))
        restorer = RedisComponent(with_redis_config(target_settings("redis", "redis_target"),
                                                    restore_method="replication"))
        ctx = restore_context(broken, "redis", restorer.settings)
        with pytest.raises(ComponentError, match="dump.rdb fails its CRC64 check .* nothing was sent"):
            restorer.restore(ctx, "all")
        assert client_for_db(0).info("replication")["role"] == "master"
        assert client_for_db(0).get("kept") == b"yes"
