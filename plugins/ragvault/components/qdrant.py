"""Qdrant: the vector database, one collection at a time.

For each collection the backup writes, under ``<date>/qdrant/``:

``snapshots/<collection>.snapshot``
    Qdrant's own collection snapshot, byte for byte as the server produced it (its SHA-256 equals the
    checksum Qdrant reported). It is created on the server, streamed to the bucket, checked, and the
    server-side copy is then deleted.
``config/<collection>.json``
    ``GET /collections/<name>`` as the server answers it (vector params incl. named, sparse and
    multivectors, HNSW, quantization, optimizer and WAL config, payload schema and indexes) plus the
    collection's aliases, which snapshots do not carry.
``export/<collection>.jsonl.zst``
    every point, one JSON object a line ``{"id": ..., "vector": ..., "payload": ...}`` with all its
    vectors, paged through the scroll API: readable without Qdrant and a rebuild path of its own.

``shards/<collection>/<shard id>.snapshot``
    in distributed mode (``GET /cluster`` says ``enabled``) instead of the collection snapshot, which a peer
    takes of its own shards only: one snapshot per shard, streamed from a peer holding an active replica of it
    (``GET /collections/<name>/shards/<id>/snapshot``). The item's details record the layout: the peers, the
    shard count and, per shard, the replicas and their states, the peer it was read from, its SHA-256.

Restore uploads each snapshot (streamed, with Qdrant's checksum, ``priority=snapshot``) and recreates the
aliases: the collection comes back exactly. A backup of shards is restored shard by shard: the collection is
created with the backup's shard number and replication factor, and each shard snapshot is uploaded to every
peer of the target that holds a replica of that shard (a standalone server holds them all); a target that
lays the collection out with other shard ids gets the export instead. A collection snapshot is never uploaded
to a cluster (it would land on one peer's shards only): there the collection is rebuilt from the export.
When the target refuses a snapshot (another Qdrant version, say), the collection is rebuilt from the config
(params, HNSW, quantization, optimizer and WAL config, payload indexes) and the export's points; Qdrant
renormalises Cosine vectors on upsert, so those may then differ in the last float32 digit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.config import select
from ragvault.hooks.qdrant import QdrantError, QdrantHook
from ragvault.repository import ItemResult, batched, bounded_map, iter_lines, prefetched, utcnow_iso


class QdrantComponent(Component):
    name = "qdrant"
    title = "Qdrant (vector database): snapshots, configs and aliases, points export"
    item_noun = "collection"

    def hook(self) -> QdrantHook:
        return QdrantHook(qdrant_conn_id=self.settings.conn_id("qdrant"))

    def endpoint(self) -> str:
        return self.hook().base_url

    def list_items(self) -> list[str]:
        names = [c.name for c in self.hook().client.get_collections().collections]
        return select(names, self.config.get("include"), self.config.get("exclude"))

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        collection = item
        hook = self.hook()
        version = hook.server_version()
        captured_at = utcnow_iso()
        info = hook.request("GET", f"/collections/{collection}")
        aliases = sorted(a.alias_name for a in hook.client.get_collection_aliases(collection).aliases)
        ctx.log.info("qdrant %s: collection %s, %s points, aliases %s",
                     version, collection, info.get("points_count"), aliases or "none")

        cluster = hook.cluster_status()
        # distributed mode: the shards and the peers to read them from, checked before anything is written
        plan = self._shard_plan(ctx, hook, collection, cluster) if cluster.get("status") == "enabled" else None

        config_doc = {"collection": collection, "info": info, "aliases": aliases, "server_version": version}
        config = ctx.put_artifact(f"config/{collection}.json", json.dumps(config_doc, indent=2).encode(),
                                  content_type="application/json")

        if plan is not None:
            snapshots, snapshot_details = self._shard_snapshots(ctx, hook, collection, plan)
        else:
            snapshot, snapshot_details = self._snapshot(ctx, hook, collection)
            snapshots = [snapshot]

        batch = int(self.config.get("scroll_batch", 256))
        with ctx.open_artifact(f"export/{collection}.jsonl", compression="zstd",
                               content_type="application/x-ndjson") as writer:
            exported = 0
            for point in self._scroll(hook, collection, batch):
                writer.write(json.dumps(point, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
                exported += 1
                if exported % 100_000 == 0:
                    ctx.log.info("qdrant %s: %d points exported", collection, exported)
        counted = hook.client.count(collection, exact=True).count
        if counted != exported:
            raise ComponentError(self.name, collection,
                                 f"exported {exported} points but the collection now counts {counted}: "
                                 "it changed during the backup (is ingestion paused?)")
        ctx.log.info("qdrant %s: %d points exported", collection, exported)
        return ctx.result(
            collection,
            captured_at=captured_at,
            source_version=version,
            counts={"collections": 1, "points": exported, "aliases": len(aliases)},
            artifacts=[*snapshots, config, writer.artifact],
            details={**snapshot_details, "aliases": aliases},
        )

    def _snapshot(self, ctx: BackupContext, hook: QdrantHook, collection: str):
        description = hook.client.create_snapshot(collection, wait=True)
        if description is None:
            raise ComponentError(self.name, collection, "snapshot creation returned no description")
        ctx.log.info("qdrant %s: snapshot %s created on the server (%s bytes), streaming it",
                     collection, description.name, description.size)
        try:
            with ctx.open_artifact(f"snapshots/{collection}.snapshot") as writer:
                writer.write_all(hook.iter_snapshot(collection, description.name))
            artifact = writer.artifact
            # the bytes received, before any encryption (encryption.scope: all), against Qdrant's own checksum
            if description.checksum and writer.written_sha256 != description.checksum:
                raise ComponentError(self.name, collection,
                                     f"snapshot {description.name}: uploaded sha256 {writer.written_sha256} "
                                     f"differs from Qdrant's checksum {description.checksum}")
        finally:
            try:
                hook.client.delete_snapshot(collection, description.name, wait=True)
            except Exception as exc:  # the backup stands; the server keeps a file to clean up by hand
                ctx.log.warning("qdrant %s: could not delete server-side snapshot %s: %s",
                                collection, description.name, exc)
        return artifact, {"snapshot_name": description.name, "snapshot_checksum": description.checksum}

    def peer_hook(self, hook: QdrantHook, uri: str) -> QdrantHook:
        """The REST API of the peer whose p2p URI is ``uri``: ``components.qdrant.peer_urls[uri]`` when set,
        else that peer's host with the connection's scheme, port and prefix (every peer of a cluster serves
        its REST API on the same port, 6333 by default)."""
        overrides = self.config.get("peer_urls") or {}
        url = overrides.get(uri) or overrides.get(uri.rstrip("/"))
        if not url:
            peer, own = urlsplit(uri), urlsplit(hook.base_url)
            host = f"[{peer.hostname}]" if ":" in (peer.hostname or "") else peer.hostname
            url = f"{own.scheme}://{host}{':' + str(own.port) if own.port else ''}{own.path}"
        return hook.for_url(url)

    def _shard_plan(self, ctx: BackupContext, hook: QdrantHook, collection: str,
                    cluster: dict[str, Any]) -> dict[str, Any]:
        """Distributed mode: each shard's replicas and the peer to read it from (one holding an active replica,
        the connection's own peer when it does)."""
        layout = hook.collection_cluster(collection)
        me = str(layout["peer_id"])
        replicas = shard_replicas(layout)
        if any(shard.get("shard_key") is not None for shard in layout["local_shards"] + layout["remote_shards"]):
            raise ComponentError(self.name, collection, "its shards have shard keys (custom sharding), which this "
                                 "package does not back up yet; nothing was written for it")
        if layout.get("shard_transfers"):
            ctx.log.warning("qdrant %s: shard transfers in progress: %s", collection, layout["shard_transfers"])
        peers = {str(peer_id): info["uri"] for peer_id, info in cluster["peers"].items()}
        sources = {}
        for shard_id, states in sorted(replicas.items()):
            active = sorted(peer for peer, state in states.items() if state == "Active")
            if not active:
                raise ComponentError(self.name, collection, f"shard {shard_id} has no active replica ({states}): "
                                     "its data cannot be read consistently; nothing was written for it")
            sources[shard_id] = me if me in active else active[0]
        ctx.log.info("qdrant %s: distributed mode, %d shards on %d peers: %s", collection, len(replicas), len(peers),
                     "; ".join(f"shard {s}: {', '.join(f'{p} {st}' for p, st in r.items())}"
                               for s, r in sorted(replicas.items())))
        return {"layout": layout, "me": me, "peers": peers, "replicas": replicas, "sources": sources}

    def _shard_snapshots(self, ctx: BackupContext, hook: QdrantHook, collection: str, plan: dict[str, Any]):
        """One snapshot per shard, streamed from the peer the plan chose for it."""
        artifacts, shards = [], {}
        for shard_id, source in plan["sources"].items():
            peer = hook if source == plan["me"] else self.peer_hook(hook, plan["peers"][source])
            try:
                with ctx.open_artifact(f"shards/{collection}/{shard_id}.snapshot") as writer:
                    writer.write_all(peer.stream_shard_snapshot(collection, shard_id))
            except QdrantError as exc:
                raise ComponentError(self.name, collection, f"shard {shard_id} from peer {source} "
                                     f"({peer.base_url}): {exc}") from exc
            artifacts.append(writer.artifact)
            shards[str(shard_id)] = {"replicas": plan["replicas"][shard_id], "from_peer": source,
                                     "sha256": writer.written_sha256}
            ctx.log.info("qdrant %s: shard %d streamed from peer %s (%s)", collection, shard_id, source,
                         peer.base_url)
        layout = plan["layout"]
        return artifacts, {"cluster": {"peer_id": layout["peer_id"], "peers": plan["peers"],
                                       "shard_count": layout["shard_count"], "shards": shards}}

    @staticmethod
    def _scroll(hook: QdrantHook, collection: str, batch: int) -> Iterator[dict[str, Any]]:
        """Every point with all its vectors and payload, in id order, one page in memory at a time."""
        for page in prefetched(QdrantComponent._pages(hook, collection, batch), depth=2,
                               name=f"qdrant-{collection}-scroll"):
            for point in page:
                yield {"id": point["id"], "vector": point.get("vector"), "payload": point.get("payload") or {}}

    @staticmethod
    def _pages(hook: QdrantHook, collection: str, batch: int) -> Iterator[list[dict[str, Any]]]:
        """The scroll API's pages in id order (fetched by a thread of their own while the last one is written)."""
        offset = None
        while True:
            body: dict[str, Any] = {"limit": batch, "with_payload": True, "with_vector": True}
            if offset is not None:
                body["offset"] = offset
            page = hook.request("POST", f"/collections/{collection}/points/scroll", json=body)
            yield page["points"]
            offset = page.get("next_page_offset")
            if offset is None:
                return

    # -- restore --------------------------------------------------------------------------------------
    # Each collection comes back from its snapshot, uploaded with Qdrant's checksum; its aliases are then
    # recreated. When the server refuses the snapshot (another Qdrant version, say), the collection is rebuilt
    # from the config and the points export instead, and the log says so.

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        client = self.hook().client
        if not client.collection_exists(item):
            return {"holds_data": False, "what": f"no collection {item}"}
        return {"holds_data": True, "what": f"collection {item} with {client.count(item, exact=True).count} points"}

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        hook = self.hook()
        config = json.loads(b"".join(ctx.read(ctx.artifact(item, f"config/{item}.json"))))
        layout = (ctx.item(item).get("details") or {}).get("cluster")
        rebuilt = 0
        if layout is not None:
            rebuilt = self._restore_shards(ctx, hook, item, config["info"], layout)
        elif hook.cluster_status().get("status") == "enabled":
            ctx.log.info("qdrant %s: the target is a cluster, where a collection snapshot would restore the shards "
                         "of one peer only: rebuilding the collection from its config and the points export", item)
            self._rebuild(ctx, hook, item, config["info"])
            rebuilt = 1
        else:
            rebuilt = self._restore_snapshot(ctx, hook, item, config["info"])
        self._recreate_aliases(hook, item, config["aliases"])
        points = hook.client.count(item, exact=True).count
        ctx.log.info("qdrant %s: %d points, aliases %s%s", item, points, config["aliases"] or "none",
                     " (rebuilt from the export)" if rebuilt else "")
        return {"points": points, "aliases": len(config["aliases"]), "rebuilt_from_export": rebuilt}

    def _restore_shards(self, ctx: RestoreContext, hook: QdrantHook, item: str, info: dict[str, Any],
                        layout: dict[str, Any]) -> int:
        """A backup of shards: the collection created as it was (shard number, replication factor, indexes),
        each shard snapshot uploaded to every peer of the target holding a replica of it. Returns 1 when the
        target took the export instead."""
        self._create(hook, item, info)
        target = hook.collection_cluster(item)
        status = hook.cluster_status()
        peers = {str(p): i["uri"] for p, i in (status.get("peers") or {}).items()}
        me = str(target["peer_id"])
        holders = shard_replicas(target)
        backed_up = sorted(int(s) for s in layout["shards"])
        if sorted(holders) != backed_up:
            ctx.log.warning("qdrant %s: the target laid the collection out in shards %s, the backup holds shards "
                            "%s: rebuilding it from the points export instead", item, sorted(holders), backed_up)
            self._rebuild(ctx, hook, item, info)
            return 1
        for shard_id in backed_up:
            artifact = ctx.artifact(item, f"shards/{item}/{shard_id}.snapshot")
            size = artifact.get("raw_size") or artifact["size"]
            checksum = layout["shards"][str(shard_id)].get("sha256")
            for peer_id in sorted(holders[shard_id]):
                peer = hook if peer_id == me else self.peer_hook(hook, peers[peer_id])
                try:
                    peer.upload_shard_snapshot(item, shard_id, ctx.read(artifact), size, checksum=checksum)
                except QdrantError as exc:
                    if exc.status is None:
                        raise
                    ctx.log.warning("qdrant %s: peer %s refused shard %d (%s); rebuilding the collection from its "
                                    "config and the points export instead", item, peer_id, shard_id, exc)
                    self._rebuild(ctx, hook, item, info)
                    return 1
                ctx.log.info("qdrant %s: shard %d (%d bytes) restored on peer %s (%s)", item, shard_id, size,
                             peer_id, peer.base_url)
        return 0

    def _restore_snapshot(self, ctx: RestoreContext, hook: QdrantHook, item: str, info: dict[str, Any]) -> int:
        """The collection snapshot uploaded; the export when the server refuses it. Returns 1 if rebuilt."""
        snapshot = ctx.artifact(item, f"snapshots/{item}.snapshot")
        rebuilt = 0
        try:
            # the snapshot's own size and checksum: an encrypted artifact's stored bytes are neither
            size = snapshot.get("raw_size") or snapshot["size"]
            checksum = snapshot.get("raw_sha256") or ctx.item(item).get("details", {}).get("snapshot_checksum")
            ctx.log.info("qdrant %s: uploading snapshot (%d bytes)", item, size)
            hook.upload_snapshot(item, ctx.read(snapshot), size, checksum=checksum)
        except QdrantError as exc:
            if exc.status is None:  # the server did not answer: nothing to fall back on
                raise
            ctx.log.warning("qdrant %s: the server refused the snapshot (%s); rebuilding the collection from its "
                            "config and the points export instead", item, exc)
            self._rebuild(ctx, hook, item, info)
            rebuilt = 1
        return rebuilt

    def _rebuild(self, ctx: RestoreContext, hook: QdrantHook, item: str, info: dict[str, Any]) -> None:
        self._create(hook, item, info)
        self._upsert_export(ctx, hook, item)

    @staticmethod
    def _create(hook: QdrantHook, item: str, info: dict[str, Any]) -> None:
        """The collection (re)created empty from its backed-up config: params, HNSW, optimizer, WAL,
        quantization, payload indexes."""
        config = info["config"]
        params = config["params"]
        keys = ("vectors", "sparse_vectors", "shard_number", "replication_factor", "write_consistency_factor",
                "on_disk_payload")
        body = {key: params[key] for key in keys if params.get(key) is not None}
        for target, source in (("hnsw_config", "hnsw_config"), ("optimizers_config", "optimizer_config"),
                               ("wal_config", "wal_config"), ("quantization_config", "quantization_config")):
            if config.get(source):
                body[target] = config[source]
        if hook.client.collection_exists(item):
            hook.request("DELETE", f"/collections/{item}")
        hook.request("PUT", f"/collections/{item}", json=body)
        for field_name, schema in (info.get("payload_schema") or {}).items():
            field_schema = schema.get("params") or schema["data_type"]
            hook.request("PUT", f"/collections/{item}/index", params={"wait": "true"},
                         json={"field_name": field_name, "field_schema": field_schema})

    def _upsert_export(self, ctx: RestoreContext, hook: QdrantHook, item: str) -> None:
        export = ctx.artifact(item, f"export/{item}.jsonl.zst")
        size, parallel = int(self.config.get("upsert_batch", 256)), int(self.config.get("upsert_parallel", 4))

        def upsert(batch: list[dict[str, Any]]) -> int:
            hook.request("PUT", f"/collections/{item}/points", params={"wait": "true"}, json={"points": batch})
            return len(batch)

        # batches of distinct ids: they may land in any order, so several are sent at once (as qdrant-client's
        # upload_points(parallel=...) does), at most `parallel` of them in memory
        total, next_log = 0, 100_000
        for sent in bounded_map(upsert, batched(_json_lines(ctx.read(export)), size), parallel,
                                name=f"qdrant-{item}"):
            total += sent
            if total >= next_log:
                ctx.log.info("qdrant %s: %d points upserted", item, total)
                next_log += 100_000
        ctx.log.info("qdrant %s: %d points upserted from the export (%d a request, %d requests at once)", item,
                     total, size, parallel)

    @staticmethod
    def _recreate_aliases(hook: QdrantHook, item: str, aliases: list[str]) -> None:
        if not aliases:
            return
        existing = {a["alias_name"] for a in hook.request("GET", "/aliases")["aliases"]}
        actions = [{"delete_alias": {"alias_name": a}} for a in aliases if a in existing]
        actions += [{"create_alias": {"collection_name": item, "alias_name": a}} for a in aliases]
        hook.request("POST", "/collections/aliases", json={"actions": actions})

    def verify_restore(self, ctx: RestoreContext, item: str, sample: int = 100) -> list[str]:
        hook = self.hook()
        entry = ctx.item(item)
        problems = []
        config = json.loads(b"".join(ctx.read(ctx.artifact(item, f"config/{item}.json"))))
        try:
            info = hook.request("GET", f"/collections/{item}")
        except QdrantError as exc:
            return [f"collection missing: {exc}"]
        if info["config"]["params"].get("vectors") != config["info"]["config"]["params"].get("vectors"):
            problems.append("vector params differ from the backup's")
        points = hook.client.count(item, exact=True).count
        if points != entry["counts"]["points"]:
            problems.append(f"{points} points, {entry['counts']['points']} in the backup")
        aliases = sorted(a.alias_name for a in hook.client.get_collection_aliases(item).aliases)
        if aliases != config["aliases"]:
            problems.append(f"aliases {aliases}, {config['aliases']} in the backup")
        expected = []
        for point in _json_lines(ctx.read(ctx.artifact(item, f"export/{item}.jsonl.zst"))):
            expected.append(point)
            if len(expected) == sample:
                break
        if expected:
            found = hook.request("POST", f"/collections/{item}/points", json={
                "ids": [p["id"] for p in expected], "with_payload": True, "with_vector": True})
            by_id = {json.dumps(p["id"]): p for p in found}
            for point in expected:
                got = by_id.get(json.dumps(point["id"]))
                if got is None:
                    problems.append(f"point {point['id']} missing")
                elif not same_vectors(got.get("vector"), point["vector"]):
                    problems.append(f"point {point['id']}: vectors differ from the export")
                elif (got.get("payload") or {}) != point["payload"]:
                    problems.append(f"point {point['id']}: payload differs from the export")
        return problems


def shard_replicas(layout: dict[str, Any]) -> dict[int, dict[str, str]]:
    """``{shard id: {peer id: replica state}}`` from ``GET /collections/<name>/cluster`` (the answering peer's
    local shards and the replicas the other peers hold)."""
    replicas: dict[int, dict[str, str]] = {}
    for shard in layout["local_shards"]:
        replicas.setdefault(shard["shard_id"], {})[str(layout["peer_id"])] = shard["state"]
    for shard in layout["remote_shards"]:
        replicas.setdefault(shard["shard_id"], {})[str(shard["peer_id"])] = shard["state"]
    return replicas


def same_vectors(a: Any, b: Any, tolerance: float = 1e-6) -> bool:
    """Vectors equal within float32 precision (Qdrant renormalises Cosine vectors on every upsert).

    Works on every shape a point's vector takes: dense lists, named maps, sparse ``{indices, values}`` (indices
    exactly), and multivectors (lists of lists).
    """
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return False
        if "indices" in a:
            return a["indices"] == b["indices"] and same_vectors(a["values"], b["values"], tolerance)
        return all(same_vectors(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_vectors(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= tolerance * max(1.0, abs(a), abs(b))
    return a == b


def _json_lines(chunks) -> Iterator[dict[str, Any]]:
    """Parse a stream of JSON Lines chunk by chunk (one line in memory at a time)."""
    return (json.loads(line) for line in iter_lines(chunks))
