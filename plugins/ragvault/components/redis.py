"""Redis: the cache and the agents' short-term memory, the whole instance at once.

The backup writes, under ``<date>/redis/``:

``dump.rdb``
    a point-in-time RDB of every logical db, fetched over the network exactly like ``redis-cli --rdb``
    (REPLCONF rdb-only + SYNC): the server forks and streams it, no access to its disk is needed. A stock
    redis-server loads it as it is.
``appendonly.aof.tar.zst``
    when AOF is on and the server's data dir is mounted on the worker (``aof_dir``): Redis 7's multi-part
    AOF directory (base, incremental files and manifest) as a tar archive. It is a file-level copy for
    those who replay AOF; the RDB is the consistent snapshot.

The manifest records the key count of every db (``INFO keyspace`` taken just before the SYNC).
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.hooks.redis import RedisError, RedisHook, ReplicationUnavailable
from ragvault.repository import Artifact, ItemResult, utcnow_iso

RDB_MAGIC = b"REDIS"


class RedisComponent(Component):
    name = "redis"
    title = "Redis (cache and memory): dump.rdb through replication, AOF archive"
    item_noun = None

    def hook(self) -> RedisHook:
        return RedisHook(redis_conn_id=self.settings.conn_id("redis"))

    def endpoint(self) -> str:
        return self.hook().describe()

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        hook = self.hook()
        client = hook.get_conn()
        info = client.info()
        if cluster := _cluster_node(info, hook):
            raise ComponentError(self.name, "dump.rdb", f"{cluster}: its dump.rdb would hold only the keys of that "
                                 "node's slots, and this package backs up a single Redis server (Redis Cluster is "
                                 "not supported yet); nothing was written")
        version = info.get("redis_version")
        keyspace = {
            name: {"keys": int(stats["keys"]), "expires": int(stats.get("expires", 0))}
            for name, stats in sorted(info.items())
            if name.startswith("db") and name[2:].isdigit() and isinstance(stats, dict)
        }
        ctx.log.info("redis %s at %s: %s", version, hook.describe(),
                     ", ".join(f"{db} {s['keys']} keys" for db, s in keyspace.items()) or "no keys")
        captured_at = utcnow_iso()
        rdb = ctx.put_artifact("dump.rdb", _checked_rdb(hook.stream_rdb()))
        artifacts: list[Artifact] = [rdb]
        aof = self._aof(ctx, client)
        if aof is not None:
            artifacts.append(aof)
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=version,
            counts={"dbs": len(keyspace), "keys": sum(s["keys"] for s in keyspace.values())},
            artifacts=artifacts,
            details={"keyspace": keyspace, "aof": aof is not None},
        )

    def _aof(self, ctx: BackupContext, client) -> Artifact | None:
        if client.config_get("appendonly").get("appendonly") != "yes":
            ctx.log.info("redis: AOF is off on the server, no appendonly.aof to archive")
            return None
        mounted = self.config.get("aof_dir")
        if not mounted:
            ctx.log.info("redis: AOF is on but components.redis.aof_dir is not set (the server's data dir is "
                         "not mounted here): appendonly.aof skipped, dump.rdb holds the data")
            return None
        dirname = client.config_get("appenddirname").get("appenddirname") or "appendonlydir"
        source = Path(mounted, dirname)
        if not source.is_dir():
            single = Path(mounted, client.config_get("appendfilename").get("appendfilename") or "appendonly.aof")
            if single.is_file():  # Redis before 7: one file
                source = single
            else:
                raise ComponentError(self.name, "appendonly.aof",
                                     f"AOF is on but neither {Path(mounted, dirname)} nor {single} exists on this "
                                     "worker: check components.redis.aof_dir")
        with ctx.open_artifact("appendonly.aof.tar", compression="zstd", content_type="application/x-tar") as writer:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(source.rglob("*")) if source.is_dir() else [source]:
                    if path.is_file():
                        tar.add(path, arcname=str(Path(source.name, path.relative_to(source)))
                                if source.is_dir() else path.name)
                        ctx.log.info("redis: archived %s (%d bytes)", path.name, path.stat().st_size)
        return writer.artifact


    # -- restore --------------------------------------------------------------------------------------
    # Over the network, with no access to the target's disk: dump.rdb is parsed as a stream
    # (ragvault.rdb) into one RESTORE payload per key, sent as `RESTORE key ttl payload REPLACE ABSTTL`
    # in pipelined batches, each in its db, with its absolute expiry. Keys whose expiry has passed are
    # skipped. A target that holds data is flushed first (the plan asked for confirmation): the
    # instance ends up as the backup was. The target must run a Redis at least as new as the source.
    # With access to the target's data dir, the documented alternative is to stop it, put dump.rdb in
    # its `dir` (appendonly off, or its AOF directory removed) and start it again.

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        keyspace = _keyspace(self.hook().get_conn())
        total = sum(keyspace.values())
        if not total:
            return {"holds_data": False, "what": f"{self.hook().describe()} is empty"}
        return {"holds_data": True, "what": f"{self.hook().describe()} holds {total} keys "
                f"({', '.join(f'{db}: {n}' for db, n in keyspace.items())}); it would be flushed"}

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """The backup is an RDB file, and the target runs a Redis at least as new as the source: an older one
        refuses RESTORE payloads of a newer RDB version, key by key, after the flush."""
        problems = []
        hook = self.hook()
        if cluster := _cluster_node(hook.get_conn().info(), hook):
            problems.append(f"the target is {cluster}: it takes only the keys of its own slots and cannot load a "
                            "whole dump.rdb (Redis Cluster is not supported yet)")
        head = b""
        for chunk in ctx.read(ctx.artifact(item, "dump.rdb")):
            head += chunk
            if len(head) >= len(RDB_MAGIC) + 4:
                break
        if not head.startswith(RDB_MAGIC):
            problems.append(f"dump.rdb is not an RDB file (it starts with {head[:9]!r})")
        source = ctx.section.get("source_version")
        target = self.hook().get_conn().info("server").get("redis_version")
        if source and target and _version(target) < _version(source):
            problems.append(f"the target runs Redis {target}, older than the source's {source}: it cannot load "
                            "that RDB version")
        return problems

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        method = self.config.get("restore_method") or "auto"
        if method not in RESTORE_METHODS:
            raise ComponentError(self.name, item, f"components.redis.restore_method is {method!r}: expected one of "
                                 f"{', '.join(RESTORE_METHODS)}")
        if method != "restore":
            try:
                return self._restore_as_replica(ctx, item)
            except ReplicationUnavailable as exc:
                if method == "replication":
                    raise ComponentError(self.name, item, f"restore_method replication: {exc}") from exc
                ctx.log.warning("redis: %s; restoring key by key with RESTORE instead (slower)", exc)
        return self._restore_commands(ctx, item)

    def _restore_as_replica(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        """The server loads dump.rdb itself, as a replica does in a full sync (see RedisHook.replicate_rdb): it
        checks the RDB's CRC64 and loads at its own speed. Every db is replaced."""
        from ragvault.rdb import RdbError, rdb_checksum

        hook = self.hook()
        artifact = ctx.artifact(item, "dump.rdb")
        # A server that loads a damaged RDB from its master exits (rdbReportError in Redis's rdb.c): the file's
        # own CRC64 is checked first, in a read of its own, and the bytes sent are checked against that read.
        first = hashlib.sha256()
        try:
            stored, computed = rdb_checksum(_hashed(_checked_rdb(ctx.read(artifact)), first))
        except RdbError as exc:
            raise ComponentError(self.name, item, f"dump.rdb is not a whole RDB file: {exc}") from exc
        if stored == 0:
            raise ReplicationUnavailable("dump.rdb carries no CRC64 (the source ran with rdbchecksum no): it is "
                                         "not handed to the server unchecked")
        if stored != computed:
            raise ComponentError(self.name, item, f"dump.rdb fails its CRC64 check (it ends with {stored:016x}, "
                                 f"its content hashes to {computed:016x}): the backup is damaged; nothing was sent")
        ctx.log.info("redis: %s loads dump.rdb (%d bytes, CRC64 checked) as a replica of this task",
                     hook.describe(), artifact.get("raw_size") or artifact["size"])
        try:
            hook.replicate_rdb(
                _same_as(ctx.read(artifact), first.hexdigest()),
                advertise_host=self.config.get("replication_advertise_host"),
                listen_host=self.config.get("replication_listen_host"),
                accept_timeout=float(self.config.get("replication_accept_seconds") or 15),
                log=ctx.log,
            )
        except ReplicationUnavailable:
            raise
        except RedisError as exc:
            raise ComponentError(self.name, item, f"loading dump.rdb through replication: {exc}") from exc
        client = hook.get_conn()
        keyspace = _keyspace(client)
        functions = len(client.execute_command("FUNCTION", "LIST") or [])
        ctx.log.info("redis: %d keys loaded in %d dbs (and %d function libraries) by the server itself",
                     sum(keyspace.values()), len(keyspace), functions)
        return {"keys": sum(keyspace.values()), "dbs": len(keyspace), "expired": 0, "functions": functions,
                "replicated": 1}

    def _restore_commands(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        """Key by key: one RESTORE (pipelined) per key parsed from dump.rdb; expired keys are skipped."""
        from ragvault.rdb import iter_restore_entries

        hook = self.hook()
        admin = hook.get_conn()
        if sum(_keyspace(admin).values()):
            ctx.log.info("redis: flushing %s before the restore", hook.describe())
            admin.flushall()
        pipes: dict[int, Any] = {}
        pending: dict[int, int] = {}
        restored = expired = 0
        now_ms = int(time.time() * 1000)
        entries = iter_restore_entries(ctx.read(ctx.artifact(item, "dump.rdb")))
        for entry in entries:
            if entry.expire_at_ms is not None and entry.expire_at_ms <= now_ms:
                expired += 1
                continue
            if entry.db not in pipes:
                pipes[entry.db] = hook.get_conn(db=entry.db).pipeline(transaction=False)
                pending[entry.db] = 0
            pipes[entry.db].execute_command(*entry.restore_args())
            pending[entry.db] += 1
            restored += 1
            if pending[entry.db] >= RESTORE_BATCH:
                pipes[entry.db].execute()
                pending[entry.db] = 0
            if restored % 100_000 == 0:
                ctx.log.info("redis: %d keys restored", restored)
        for db, pipe in pipes.items():
            if pending[db]:
                pipe.execute()
        functions = entries.function_restore_payload()
        if functions:
            admin.execute_command("FUNCTION", "RESTORE", functions, "REPLACE")
            ctx.log.info("redis: %d function libraries restored", len(entries.functions))
        if expired:
            ctx.log.info("redis: %d keys had expired since the backup and were not restored", expired)
        ctx.log.info("redis: %d keys restored in %d dbs", restored, len(pipes))
        return {"keys": restored, "dbs": len(pipes), "expired": expired, "functions": len(entries.functions)}

    def verify_restore(self, ctx: RestoreContext, item: str, sample: int = 100) -> list[str]:
        """Keys per db, then the first ``sample`` keys of dump.rdb one by one: present, of the same type, with
        an expiry when they had one, and (strings) the same value byte for byte."""
        from ragvault.rdb import iter_restore_entries, string_value

        hook = self.hook()
        expected = {db: stats["keys"] for db, stats in ctx.item(item)["details"]["keyspace"].items()}
        actual = _keyspace(hook.get_conn())
        problems = []
        for db in sorted(set(expected) | set(actual)):
            if expected.get(db, 0) != actual.get(db, 0):
                problems.append(f"{db}: {actual.get(db, 0)} keys, {expected.get(db, 0)} in the backup")
        now_ms, checked, clients = int(time.time() * 1000), 0, {}
        for entry in iter_restore_entries(ctx.read(ctx.artifact(item, "dump.rdb"))):
            if checked >= sample:
                break
            if entry.expire_at_ms is not None and entry.expire_at_ms <= now_ms + 60_000:
                continue  # expired (or about to) since the backup: not restored, or may go while compared
            checked += 1
            client = clients.setdefault(entry.db, hook.get_conn(db=entry.db))
            where = f"db{entry.db} key {entry.key!r}"
            found = client.type(entry.key)
            found = found.decode() if isinstance(found, bytes) else found
            if found == "none":
                problems.append(f"{where} missing")
            elif found != entry.type_name:
                problems.append(f"{where} is a {found}, a {entry.type_name} in the backup")
            elif entry.type_name == "string" and client.get(entry.key) != string_value(entry):
                problems.append(f"{where}: its value differs from the backup's")
            elif (client.pttl(entry.key) >= 0) != (entry.expire_at_ms is not None):
                problems.append(f"{where}: {'an' if entry.expire_at_ms else 'no'} expiry in the backup, "
                                f"{'none' if entry.expire_at_ms else 'one'} restored")
        return problems

def _hashed(chunks: Iterable[bytes], digest) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _same_as(chunks: Iterable[bytes], sha256: str) -> Iterator[bytes]:
    """The chunks, then a check that they hash to ``sha256`` (raised before the consumer sees the end)."""
    digest = hashlib.sha256()
    yield from _hashed(chunks, digest)
    if digest.hexdigest() != sha256:
        raise RedisError("dump.rdb read differently the second time: not sent to the end")


def _checked_rdb(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Pass the stream through, failing early if it does not start like an RDB file."""
    head = b""
    checked = False
    for chunk in chunks:
        if not checked:
            head += chunk
            if len(head) < len(RDB_MAGIC):
                continue
            if not head.startswith(RDB_MAGIC):
                raise ComponentError("redis", "dump.rdb", f"the server did not send an RDB file: {head[:16]!r}")
            checked, chunk = True, head
        yield chunk
    if not checked:
        raise ComponentError("redis", "dump.rdb", f"the server sent no RDB file ({len(head)} bytes)")


RESTORE_BATCH = 500
#: auto: the server loads the RDB as a replica, else (it cannot connect back) key by key; or only one of them
RESTORE_METHODS = ("auto", "replication", "restore")


def _cluster_node(info: dict[str, Any], hook: RedisHook) -> str | None:
    """``"<address> is a Redis Cluster node (...)"`` when INFO says cluster mode is on, else None."""
    if str(info.get("cluster_enabled", 0)) != "1":
        return None
    return f"{hook.describe()} is a Redis Cluster node (cluster_enabled:1 in INFO)"


def _version(text: str) -> tuple[int, ...]:
    """``"7.2.4"`` -> ``(7, 2, 4)``; what is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in str(text).split("."))


def _keyspace(client) -> dict[str, int]:
    return {name: int(stats["keys"]) for name, stats in sorted(client.info("keyspace").items())
            if name.startswith("db") and isinstance(stats, dict)}
