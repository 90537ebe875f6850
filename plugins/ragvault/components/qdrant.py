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
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.config import select
from ragvault.hooks.qdrant import QdrantHook
from ragvault.repository import ItemResult, utcnow_iso


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

        config_doc = {"collection": collection, "info": info, "aliases": aliases, "server_version": version}
        config = ctx.put_artifact(f"config/{collection}.json", json.dumps(config_doc, indent=2).encode(),
                                  content_type="application/json")

        snapshot, snapshot_details = self._snapshot(ctx, hook, collection)

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
            artifacts=[snapshot, config, writer.artifact],
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
            if description.checksum and artifact.sha256 != description.checksum:
                raise ComponentError(self.name, collection,
                                     f"snapshot {description.name}: uploaded sha256 {artifact.sha256} differs "
                                     f"from Qdrant's checksum {description.checksum}")
        finally:
            try:
                hook.client.delete_snapshot(collection, description.name, wait=True)
            except Exception as exc:  # the backup stands; the server keeps a file to clean up by hand
                ctx.log.warning("qdrant %s: could not delete server-side snapshot %s: %s",
                                collection, description.name, exc)
        return artifact, {"snapshot_name": description.name, "snapshot_checksum": description.checksum}

    @staticmethod
    def _scroll(hook: QdrantHook, collection: str, batch: int) -> Iterator[dict[str, Any]]:
        """Every point with all its vectors and payload, in id order, one page in memory at a time."""
        offset = None
        while True:
            body: dict[str, Any] = {"limit": batch, "with_payload": True, "with_vector": True}
            if offset is not None:
                body["offset"] = offset
            page = hook.request("POST", f"/collections/{collection}/points/scroll", json=body)
            for point in page["points"]:
                yield {"id": point["id"], "vector": point.get("vector"), "payload": point.get("payload") or {}}
            offset = page.get("next_page_offset")
            if offset is None:
                return
