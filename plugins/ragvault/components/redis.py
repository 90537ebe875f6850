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

A Redis Cluster is backed up master by master: each master's RDB holds only the keys of its own hash slots, so
the backup lists the masters (``CLUSTER SLOTS`` through the connection's node) and fetches one RDB per master,
in a mapped task named after it (``<host>:<port>``), under ``nodes/<host>_<port>/dump.rdb``. Each item's
details record the node id, its role, the slot ranges it served and its replicas. A standalone server is one
item, ``all``, with ``dump.rdb`` at the top of the folder.

A restore sends every key to the server that owns its slot on the target, so a cluster backup comes back onto
a cluster of any number of masters, a standalone server, or the other way round: each item first empties its own
slot ranges on the target, then restores its keys (items hold disjoint slots, so they run side by side).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.hooks.redis import SLOTS, ClusterShard, RedisError, RedisHook, ReplicationUnavailable
from ragvault.repository import Artifact, ItemResult, batched, utcnow_iso

RDB_MAGIC = b"REDIS"
#: the item of a standalone server: the whole instance, every db
WHOLE = "all"


class RedisComponent(Component):
    name = "redis"
    title = "Redis (cache and memory): dump.rdb through replication (one per master of a cluster), AOF archive"
    item_noun = "node"

    def hook(self) -> RedisHook:
        return RedisHook(redis_conn_id=self.settings.conn_id("redis"))

    def endpoint(self) -> str:
        return self.hook().describe()

    def list_items(self) -> list[str]:
        """``["all"]`` for a standalone server; the masters' ``host:port`` for a Redis Cluster."""
        hook = self.hook()
        if not hook.is_cluster():
            return [WHOLE]
        shards = hook.cluster_shards()
        covered = sum(shard.slot_count for shard in shards)
        if covered != SLOTS:
            raise ComponentError(self.name, None, f"the cluster of {hook.describe()} serves {covered} of the {SLOTS} "
                                 "hash slots: a backup of it would miss the keys of the others (CLUSTER SLOTS)")
        return [shard.address for shard in shards]

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        if item not in (None, WHOLE):
            return self._backup_node(ctx, item)
        hook = self.hook()
        client = hook.get_conn()
        info = client.info()
        if cluster := _cluster_node(info, hook):
            raise ComponentError(self.name, "dump.rdb", f"{cluster}: its dump.rdb would hold only the keys of that "
                                 "node's slots; a cluster is backed up master by master (the backup DAG's "
                                 "redis.list_nodes lists them); nothing was written")
        version = info.get("redis_version")
        keyspace = _keyspace_of(info)
        ctx.log.info("redis %s at %s: %s", version, hook.describe(),
                     ", ".join(f"{db} {s['keys']} keys" for db, s in keyspace.items()) or "no keys")
        captured_at = utcnow_iso()
        rdb = ctx.put_artifact("dump.rdb", _checked_rdb(hook.stream_rdb()))
        artifacts: list[Artifact] = [rdb]
        aof = self._aof(ctx, client)
        if aof is not None:
            artifacts.append(aof)
        return ctx.result(
            WHOLE,
            captured_at=captured_at,
            source_version=version,
            counts={"dbs": len(keyspace), "keys": sum(s["keys"] for s in keyspace.values())},
            artifacts=artifacts,
            details={"keyspace": keyspace, "aof": aof is not None},
        )

    def _backup_node(self, ctx: BackupContext, item: str) -> ItemResult:
        """One master of a Redis Cluster: its RDB (the keys of its slots), and where it stood in the cluster."""
        import redis

        node = self.hook().for_node(item)
        try:
            shards = node.cluster_shards()
            info = node.get_conn().info()
        except redis.RedisError as exc:
            raise ComponentError(self.name, item, f"cannot read the cluster's layout from {node.describe()}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        shard = next((s for s in shards if item == s.address or item in s.replicas), None)
        if shard is None:
            raise ComponentError(self.name, item, f"{item} serves no hash slot of the cluster any more (its masters "
                                 f"now: {', '.join(s.address for s in shards)}): the cluster changed since the nodes "
                                 "were listed; run the backup again")
        role = "master" if item == shard.address else "replica"  # a failover since the listing: same slots' data
        keyspace = _keyspace_of(info)
        ctx.log.info("redis: node %s (%s, id %s), slots %s: %s", item, role, shard.node_id, _ranges_text(shard.slots),
                     ", ".join(f"{db} {s['keys']} keys" for db, s in keyspace.items()) or "no keys")
        captured_at = utcnow_iso()
        rdb = ctx.put_artifact(f"{node_folder(item)}/dump.rdb", _checked_rdb(node.stream_rdb()))
        return ctx.result(
            item,
            captured_at=captured_at,
            source_version=info.get("redis_version"),
            counts={"dbs": len(keyspace), "keys": sum(s["keys"] for s in keyspace.values()),
                    "slots": shard.slot_count},
            artifacts=[rdb],
            details={"keyspace": keyspace, "aof": False,
                     "cluster": {"node_id": shard.node_id, "role": role, "slots": [list(r) for r in shard.slots],
                                 "replicas": list(shard.replicas), "masters": len(shards)}},
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
        hook = self.hook()
        target = _Target(hook)
        if item == WHOLE and not target.cluster:
            keyspace = _keyspace(hook.get_conn())
            total = sum(keyspace.values())
            if not total:
                return {"holds_data": False, "what": f"{hook.describe()} is empty"}
            return {"holds_data": True, "what": f"{hook.describe()} holds {total} keys "
                    f"({', '.join(f'{db}: {n}' for db, n in keyspace.items())}); it would be flushed"}
        ranges = _item_slots(ctx, item)
        found = target.count_keys(ranges)
        where = f"{target.describe()}, slots {_ranges_text(ranges)}"
        if not found:
            return {"holds_data": False, "what": f"{where}: no keys"}
        return {"holds_data": True, "what": f"{where}: {found} keys; they would be deleted"}

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """The backup is an RDB file; the target runs a Redis at least as new as the source (an older one refuses
        RESTORE payloads of a newer RDB version, key by key, after the flush); a cluster target serves every slot
        and takes keys of db 0 only."""
        problems = []
        hook = self.hook()
        target = _Target(hook)
        head = b""
        for chunk in ctx.read(ctx.artifact(item, _rdb_path(item))):
            head += chunk
            if len(head) >= len(RDB_MAGIC) + 4:
                break
        if not head.startswith(RDB_MAGIC):
            problems.append(f"dump.rdb is not an RDB file (it starts with {head[:9]!r})")
        source = ctx.item(item).get("source_version") or ctx.section.get("source_version")
        versions = target.versions()
        older = sorted(f"{address} runs Redis {version}" for address, version in versions.items()
                       if source and version and _version(version) < _version(source))
        if older:
            problems.append(f"the target is older than the source's Redis {source}: {', '.join(older)}; it cannot "
                            "load that RDB version")
        if target.cluster:
            if uncovered := target.uncovered():
                problems.append(f"{target.describe()} serves {SLOTS - uncovered} of the {SLOTS} hash slots "
                                "(CLUSTER SLOTS): the keys of the others would have nowhere to go")
            other_dbs = {db: stats["keys"] for db, stats in ctx.item(item)["details"]["keyspace"].items()
                         if db != "db0" and stats.get("keys")}
            if other_dbs:
                problems.append(f"the backup holds keys in {', '.join(f'{db} ({n})' for db, n in other_dbs.items())}"
                                f": {target.describe()} is a Redis Cluster, which has db 0 only")
        method = self.config.get("restore_method") or "auto"
        if method == "replication" and (target.cluster or item != WHOLE):
            problems.append("components.redis.restore_method is replication, which loads a whole instance: a Redis "
                            "Cluster, or a cluster node's backup, is restored key by key (restore_method auto or "
                            "restore)")
        return problems

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        method = self.config.get("restore_method") or "auto"
        if method not in RESTORE_METHODS:
            raise ComponentError(self.name, item, f"components.redis.restore_method is {method!r}: expected one of "
                                 f"{', '.join(RESTORE_METHODS)}")
        target = _Target(self.hook())
        if method != "restore" and not target.cluster and item == WHOLE:
            try:
                return self._restore_as_replica(ctx, item)
            except ReplicationUnavailable as exc:
                if method == "replication":
                    raise ComponentError(self.name, item, f"restore_method replication: {exc}") from exc
                ctx.log.warning("redis: %s; restoring key by key with RESTORE instead (slower)", exc)
        return self._restore_commands(ctx, item, target)
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

    def _restore_commands(self, ctx: RestoreContext, item: str, target: _Target) -> dict[str, int]:
        """Key by key: one RESTORE (pipelined) per key parsed from dump.rdb, sent to the server that owns its hash
        slot on the target (a cluster's master, or the one standalone server, in the key's db); expired keys are
        skipped. The item's slot ranges are emptied on the target first (a flush when they are all the slots). A
        key outside the item's slots (one left behind by a slot migration) is left out: it belongs to another
        item."""
        import redis

        from ragvault.rdb import iter_restore_entries

        ranges = _item_slots(ctx, item)
        ours = _slot_mask(ranges)
        deleted = target.clear(ranges)
        if deleted:
            ctx.log.info("redis: %d keys deleted from %s in slots %s before the restore", deleted,
                         target.describe(), _ranges_text(ranges))
        pipes: dict[tuple[int, int], Any] = {}  # (server, db): a pipeline and the commands it holds
        pending: dict[tuple[int, int], int] = {}
        restored = expired = outside = 0
        now_ms = int(time.time() * 1000)

        def flush(where: tuple[int, int]) -> None:
            try:
                pipes[where].execute()
            except redis.RedisError as exc:
                raise ComponentError(self.name, item, f"restoring keys into {target.addresses[where[0]]} db "
                                     f"{where[1]}: {type(exc).__name__}: {exc}") from exc
            pending[where] = 0

        entries = iter_restore_entries(ctx.read(ctx.artifact(item, _rdb_path(item))))
        for entry in entries:
            if entry.expire_at_ms is not None and entry.expire_at_ms <= now_ms:
                expired += 1
                continue
            if entry.db != 0 and target.cluster:
                raise ComponentError(self.name, item, f"key {entry.key!r} is in db {entry.db}: "
                                     f"{target.describe()} takes db 0 only")
            slot = key_slot(entry.key)
            if not ours[slot]:
                outside += 1
                continue
            where = (target.owner(slot), entry.db)
            if where not in pipes:
                pipes[where] = target.client(*where).pipeline(transaction=False)
                pending[where] = 0
            pipes[where].execute_command(*entry.restore_args())
            pending[where] += 1
            restored += 1
            if pending[where] >= RESTORE_BATCH:
                flush(where)
            if restored % 100_000 == 0:
                ctx.log.info("redis: %d keys restored", restored)
        for where in pipes:
            if pending[where]:
                flush(where)
        functions = entries.function_restore_payload()
        if functions:
            for node in range(len(target.addresses)):  # a cluster's functions live on each master
                target.client(node).execute_command("FUNCTION", "RESTORE", functions, "REPLACE")
            ctx.log.info("redis: %d function libraries restored", len(entries.functions))
        if expired:
            ctx.log.info("redis: %d keys had expired since the backup and were not restored", expired)
        if outside:
            ctx.log.warning("redis: %d keys of %s lie outside its slots %s (a slot migration was under way at the "
                            "backup): left out", outside, item, _ranges_text(ranges))
        dbs = len({db for _, db in pipes})
        ctx.log.info("redis: %d keys of %s restored in %d dbs of %s (%d server(s))", restored, item, dbs,
                     target.describe(), len({node for node, _ in pipes}))
        return {"keys": restored, "dbs": dbs, "expired": expired, "outside": outside,
                "functions": len(entries.functions)}

    def verify_restore(self, ctx: RestoreContext, item: str, sample: int = 100) -> list[str]:
        """Keys per db (per slot range for a cluster or a cluster node's backup), then the first ``sample`` keys of
        dump.rdb one by one: present, of the same type, with an expiry when they had one, and (strings) the same
        value byte for byte."""
        from ragvault.rdb import iter_restore_entries, string_value

        hook = self.hook()
        target = _Target(hook)
        stats = ctx.item(item)["details"]["keyspace"]
        problems = []
        if target.cluster or item != WHOLE:
            ranges = _item_slots(ctx, item)
            expected, actual = sum(s["keys"] for s in stats.values()), target.count_keys(ranges)
            if expected != actual:
                problems.append(f"slots {_ranges_text(ranges)}: {actual} keys on {target.describe()}, {expected} "
                                "in the backup")
        else:
            expected_dbs = {db: s["keys"] for db, s in stats.items()}
            actual_dbs = _keyspace(hook.get_conn())
            for db in sorted(set(expected_dbs) | set(actual_dbs)):
                if expected_dbs.get(db, 0) != actual_dbs.get(db, 0):
                    problems.append(f"{db}: {actual_dbs.get(db, 0)} keys, {expected_dbs.get(db, 0)} in the backup")
        ours = _slot_mask(_item_slots(ctx, item))
        now_ms, checked, clients = int(time.time() * 1000), 0, {}
        for entry in iter_restore_entries(ctx.read(ctx.artifact(item, _rdb_path(item)))):
            if checked >= sample:
                break
            if entry.expire_at_ms is not None and entry.expire_at_ms <= now_ms + 60_000:
                continue  # expired (or about to) since the backup: not restored, or may go while compared
            slot = key_slot(entry.key)
            if not ours[slot]:
                continue
            checked += 1
            node = target.owner(slot)
            client = clients.setdefault((node, entry.db), target.client(node, db=entry.db))
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


class _Target:
    """Where a restore sends keys: one standalone server (every slot is its own), or the masters of a Redis
    Cluster, each owning the slots ``CLUSTER SLOTS`` gives it."""

    def __init__(self, hook: RedisHook):
        self.hook = hook
        self.cluster = hook.is_cluster()
        self.shards: list[ClusterShard] = hook.cluster_shards() if self.cluster else []
        self.addresses = [s.address for s in self.shards] or [hook.describe().removeprefix("redis://")]
        self._hooks = [hook.for_node(a) for a in self.addresses] if self.cluster else [hook]
        self._owner = bytearray(b"\xff" * SLOTS) if self.cluster else bytearray(SLOTS)
        for index, shard in enumerate(self.shards):
            for first, last in shard.slots:
                self._owner[first:last + 1] = bytes([index]) * (last - first + 1)

    def describe(self) -> str:
        if self.cluster:
            return f"the cluster of {self.hook.describe()} ({len(self.shards)} masters)"
        return self.hook.describe()

    def owner(self, slot: int) -> int:
        """The index of the server owning ``slot`` in :attr:`addresses`."""
        node = self._owner[slot]
        if node == 0xFF:
            raise ComponentError("redis", None, f"hash slot {slot} has no master in {self.describe()}")
        return node

    def uncovered(self) -> int:
        return self._owner.count(0xFF) if self.cluster else 0

    def client(self, node: int, db: int = 0):
        return self._hooks[node].get_conn(db=db)

    def versions(self) -> dict[str, str]:
        return {address: self.client(i).info("server").get("redis_version")
                for i, address in enumerate(self.addresses)}

    def _slots_by_node(self, ranges: tuple[tuple[int, int], ...]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for first, last in ranges:
            for slot in range(first, last + 1):
                found.setdefault(self.owner(slot), []).append(slot)
        return found

    def count_keys(self, ranges: tuple[tuple[int, int], ...]) -> int:
        """The keys the target holds in the hash slots ``ranges`` (every db of a standalone server when they are
        all the slots)."""
        if _all_slots(ranges):
            return sum(sum(_keyspace(self.client(i)).values()) for i in range(len(self.addresses)))
        if not self.cluster:
            return sum(1 for _ in self._scan_keys(ranges))
        total = 0
        for node, slots in self._slots_by_node(ranges).items():
            pipe = self.client(node).pipeline(transaction=False)
            for slot in slots:
                pipe.execute_command("CLUSTER COUNTKEYSINSLOT", slot)
            total += sum(int(n) for n in pipe.execute())
        return total

    def clear(self, ranges: tuple[tuple[int, int], ...]) -> int:
        """Delete every key of the hash slots ``ranges`` from the target; how many there were."""
        deleted = 0
        if _all_slots(ranges):
            for node in range(len(self.addresses)):
                client = self.client(node)
                deleted += sum(_keyspace(client).values())
                client.flushall()
            return deleted
        if not self.cluster:
            client = self.client(0)
            for batch in batched(self._scan_keys(ranges), 500):
                deleted += client.unlink(*batch)
            return deleted
        for node, slots in self._slots_by_node(ranges).items():
            client = self.client(node)
            pipe = client.pipeline(transaction=False)
            for slot in slots:
                pipe.execute_command("CLUSTER COUNTKEYSINSLOT", slot)
            for slot, count in zip(slots, pipe.execute(), strict=True):
                while int(count):
                    keys = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
                    if not keys:
                        break
                    deleted += client.unlink(*keys)
                    count = int(count) - len(keys)
        return deleted

    def _scan_keys(self, ranges: tuple[tuple[int, int], ...]) -> Iterator[bytes]:
        """The keys of db 0 of a standalone server whose hash slot is in ``ranges``."""
        mask = _slot_mask(ranges)
        for key in self.client(0).scan_iter(count=1000):
            if mask[key_slot(key)]:
                yield key


def key_slot(key: bytes) -> int:
    """The key's hash slot, as Redis Cluster computes it (CRC16 of the key, or of its ``{hash tag}``)."""
    from redis.crc import key_slot as slot_of

    return slot_of(key)


def node_folder(item: str) -> str:
    """The folder of a cluster node's objects: ``nodes/<host>_<port>``."""
    return "nodes/" + re.sub(r"[^A-Za-z0-9.-]+", "_", item).strip("_")


def _rdb_path(item: str) -> str:
    return "dump.rdb" if item == WHOLE else f"{node_folder(item)}/dump.rdb"


def _item_slots(ctx: RestoreContext, item: str) -> tuple[tuple[int, int], ...]:
    """The hash slots an item of the backup holds: a cluster node's ranges, or all of them."""
    cluster = ctx.item(item)["details"].get("cluster")
    return tuple((int(a), int(b)) for a, b in cluster["slots"]) if cluster else ((0, SLOTS - 1),)


def _all_slots(ranges: tuple[tuple[int, int], ...]) -> bool:
    return sum(last - first + 1 for first, last in ranges) >= SLOTS


def _slot_mask(ranges: tuple[tuple[int, int], ...]) -> bytearray:
    mask = bytearray(SLOTS)
    for first, last in ranges:
        mask[first:last + 1] = b"\x01" * (last - first + 1)
    return mask


def _ranges_text(ranges: Iterable[Iterable[int]]) -> str:
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


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
    if not hook.is_cluster(info):
        return None
    return f"{hook.describe()} is a Redis Cluster node (cluster_enabled:1 in INFO)"


def _version(text: str) -> tuple[int, ...]:
    """``"7.2.4"`` -> ``(7, 2, 4)``; what is not a number counts as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in str(text).split("."))


def _keyspace_of(info: dict[str, Any]) -> dict[str, dict[str, int]]:
    """``{"db0": {"keys": n, "expires": m}, ...}`` from an INFO reply."""
    return {name: {"keys": int(stats["keys"]), "expires": int(stats.get("expires", 0))}
            for name, stats in sorted(info.items())
            if name.startswith("db") and name[2:].isdigit() and isinstance(stats, dict)}


def _keyspace(client) -> dict[str, int]:
    """``{"db0": keys, ...}`` of a server now."""
    return {db: stats["keys"] for db, stats in _keyspace_of(client.info("keyspace")).items()}
