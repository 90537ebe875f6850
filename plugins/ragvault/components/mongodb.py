"""MongoDB: original documents and logs, one database at a time.

For each collection the backup writes, under ``<date>/mongodb/``:

``dump/<db>/<collection>.bson.gz``
    mongodump's own format: the collection's documents as concatenated BSON, byte for byte as the server
    returns them, gzip-compressed exactly like ``mongodump --gzip`` does.
``dump/<db>/<collection>.metadata.json.gz``
    mongodump's metadata file in canonical Extended JSON: options, every index, uuid, collection name.
``export/<db>/<collection>.json.zst``
    mongoexport's format: one canonical Extended JSON document a line (for reading, diffing, versioning).

Download ``dump/`` and ``mongorestore --gzip --dir dump/`` restores it with the stock tools. By default the
dump is written by this module (pymongo + bson); with ``mongodump_path`` configured, the stock mongodump
writes it and this module uploads its files.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow.providers.mongo.hooks.mongo import MongoHook
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.config import select
from ragvault.repository import Artifact, ItemResult, iter_lines, utcnow_iso

EJSON = json_util.CANONICAL_JSON_OPTIONS
RAW = CodecOptions(document_class=RawBSONDocument)
BATCH_SIZE = 1000


class MongoComponent(Component):
    name = "mongodb"
    title = "MongoDB (documents and logs): mongodump layout and Extended JSON export"
    item_noun = "database"

    def hook(self) -> MongoHook:
        return MongoHook(mongo_conn_id=self.settings.conn_id("mongo"))

    def endpoint(self) -> str:
        conn = self.hook().connection
        return f"mongodb://{conn.host}{f':{conn.port}' if conn.port else ''}"

    def list_items(self) -> list[str]:
        with self.hook() as hook:
            names = hook.get_conn().list_database_names()
        return select(names, self.config.get("include_databases"), self.config.get("exclude_databases"))

    def collections(self, database) -> list[dict[str, Any]]:
        """The database's selected collections, as ``listCollections`` describes them."""
        specs = {spec["name"]: spec for spec in database.list_collections()}
        names = select(
            (f"{database.name}.{n}" for n in specs),
            self.config.get("include_collections"),
            self.config.get("exclude_collections"),
        )
        return [specs[n.split(".", 1)[1]] for n in names]

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        db_name = item
        with self.hook() as hook:
            client = hook.get_conn()
            version = client.server_info().get("version")
            database = client.get_database(db_name)
            captured_at = utcnow_iso()
            specs = self.collections(database)
            ctx.log.info("mongodb %s: database %s, %d collections", version, db_name, len(specs))
            artifacts: list[Artifact] = []
            details: dict[str, Any] = {}
            if self.config.get("mongodump_path"):
                artifacts += self._external_dump(ctx, hook, db_name, [s["name"] for s in specs])
            for spec in specs:
                coll_artifacts, counts = self._collection(ctx, database, spec,
                                                          native_dump=not self.config.get("mongodump_path"))
                artifacts += coll_artifacts
                details[spec["name"]] = counts
        return ctx.result(
            db_name,
            captured_at=captured_at,
            source_version=version,
            counts={
                "databases": 1,
                "collections": len(specs),
                "documents": sum(c["documents"] for c in details.values()),
                "indexes": sum(c["indexes"] for c in details.values()),
            },
            artifacts=artifacts,
            details={"collections": details},
        )

    def _collection(self, ctx: BackupContext, database, spec: dict[str, Any], native_dump: bool):
        name = spec["name"]
        collection = database.get_collection(name, codec_options=RAW)
        indexes = list(database.get_collection(name).list_indexes())
        metadata = {
            "indexes": indexes,
            "uuid": _uuid_hex(spec),
            "collectionName": name,
            "type": spec.get("type", "collection"),
            "options": spec.get("options", {}),
        }
        artifacts: list[Artifact] = []
        base = f"{database.name}/{name}"
        if native_dump:
            artifacts.append(ctx.put_artifact(
                f"dump/{base}.metadata.json", json_util.dumps(metadata, json_options=EJSON).encode(),
                compression="gzip", content_type="application/json"))
        documents = 0
        if spec.get("type", "collection") == "collection":
            export = ctx.open_artifact(f"export/{base}.json", compression="zstd", content_type="application/x-ndjson")
            dump = ctx.open_artifact(f"dump/{base}.bson", compression="gzip",
                                     content_type="application/bson") if native_dump else None
            try:
                for raw in collection.find({}, batch_size=BATCH_SIZE, sort=[("_id", 1)]):
                    if dump is not None:
                        dump.write(raw.raw)
                    export.write(json_util.dumps(raw, json_options=EJSON).encode() + b"\n")
                    documents += 1
                    if documents % 100_000 == 0:
                        ctx.log.info("mongodb %s: %d documents so far", base, documents)
            except BaseException:
                export.abort()
                if dump is not None:
                    dump.abort()
                raise
            if dump is not None:
                artifacts.append(dump.close())
            artifacts.append(export.close())
        ctx.log.info("mongodb %s: %d documents, %d indexes", base, documents, len(indexes))
        return artifacts, {"documents": documents, "indexes": len(indexes)}

    # -- restore --------------------------------------------------------------------------------------
    # Each collection of a database is dropped and recreated with its options, its documents inserted in
    # batches from the BSON dump (the bytes as they were, never decoded), then its indexes built, as
    # mongorestore does. Dumps written by the stock mongodump (mongodump_path) have the same layout.

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            existing = set(database.list_collection_names())
            clash = [name for name in _restore_collections(ctx, item) if name in existing]
            documents = sum(database[name].estimated_document_count() for name in clash)
        if not clash:
            return {"holds_data": False, "what": f"database {item} has none of the backed-up collections"}
        return {"holds_data": True,
                "what": f"database {item}: {len(clash)} collection(s) with {documents} documents would be replaced"}

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        totals = {"collections": 0, "documents": 0, "indexes": 0}
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            for name in _restore_collections(ctx, item):
                metadata_file = ctx.artifact(item, f"dump/{item}/{name}.metadata.json.gz")
                metadata = json_util.loads(b"".join(ctx.read(metadata_file)))
                database.drop_collection(name)
                options = dict(metadata.get("options") or {})
                if metadata.get("type", "collection") != "collection":
                    ctx.log.warning("mongodb %s.%s: a %s, recreated from its options only", item, name,
                                    metadata["type"])
                database.create_collection(name, **options)
                collection = database.get_collection(name, codec_options=RAW)
                documents = 0
                dump = ctx.artifacts(item).get(f"dump/{item}/{name}.bson.gz")
                if dump is not None:
                    batch, size = [], 0
                    for raw in iter_bson(ctx.read(dump)):
                        batch.append(RawBSONDocument(raw))
                        size += len(raw)
                        if len(batch) >= INSERT_BATCH_DOCS or size >= INSERT_BATCH_BYTES:
                            collection.insert_many(batch, ordered=True, bypass_document_validation=True)
                            documents += len(batch)
                            batch, size = [], 0
                    if batch:
                        collection.insert_many(batch, ordered=True, bypass_document_validation=True)
                        documents += len(batch)
                indexes = 0
                for index in metadata.get("indexes", []):
                    if index["name"] == "_id_":
                        continue
                    options = {k: v for k, v in index.items() if k not in ("v", "key", "ns")}
                    database[name].create_index(list(index["key"].items()), **options)
                    indexes += 1
                ctx.log.info("mongodb %s.%s: %d documents, %d indexes restored", item, name, documents, indexes)
                totals["collections"] += 1
                totals["documents"] += documents
                totals["indexes"] += indexes
        return totals

    def verify_restore(self, ctx: RestoreContext, item: str, sample: int = 100) -> list[str]:
        problems = []
        expected = ctx.item(item)["details"]["collections"]
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            existing = set(database.list_collection_names())
            for name, counts in sorted(expected.items()):
                if name not in existing:
                    problems.append(f"collection {name} missing")
                    continue
                documents = database[name].count_documents({})
                if documents != counts["documents"]:
                    problems.append(f"{name}: {documents} documents, {counts['documents']} in the backup")
                indexes = len(list(database[name].list_indexes()))
                if indexes != counts["indexes"]:
                    problems.append(f"{name}: {indexes} indexes, {counts['indexes']} in the backup")
                export = ctx.artifacts(item).get(f"export/{item}/{name}.json.zst")
                if export is None:
                    continue
                checked = 0
                for line in iter_lines(ctx.read(export)):
                    document = json_util.loads(line)
                    found = database[name].find_one({"_id": document["_id"]})
                    if found != document:
                        problems.append(f"{name}: document {document['_id']!r} differs from the export")
                    checked += 1
                    if checked == sample:
                        break
        return problems

    def _external_dump(self, ctx: BackupContext, hook: MongoHook, db_name: str, names: list[str]) -> list[Artifact]:
        """Run the configured mongodump for one database and upload the files it wrote."""
        binary = self.config["mongodump_path"]
        with tempfile.TemporaryDirectory(prefix="ragvault-mongodump-") as tmp:
            config_file = Path(tmp, "mongodump.yaml")
            # The URI carries the password: hand it over in a private file, never on the command line.
            config_file.touch(mode=0o600)
            config_file.write_text(f"uri: {hook.uri}\n")
            out = Path(tmp, "out")
            database = hook.get_conn().get_database(db_name)
            excluded = [n for n in database.list_collection_names() if n not in names]
            command = [binary, f"--config={config_file}", f"--db={db_name}", "--gzip", f"--out={out}"]
            command += [f"--excludeCollection={n}" for n in excluded]
            ctx.log.info("running %s for database %s", binary, db_name)
            proc = subprocess.run(command, capture_output=True, text=True, timeout=None, env=dict(os.environ))
            if proc.returncode != 0:
                raise ComponentError(self.name, db_name,
                                     f"{binary} exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
            artifacts = []
            for path in sorted(Path(out, db_name).iterdir()):
                with path.open("rb") as handle:
                    # mongodump --gzip compressed it already: stored as it is.
                    artifacts.append(ctx.put_artifact(
                        f"dump/{db_name}/{path.name.removesuffix('.gz')}", iter(lambda: handle.read(1 << 20), b""),
                        compression="gzip", precompressed=True))
            return artifacts


def _uuid_hex(spec: dict[str, Any]) -> str | None:
    """The collection uuid as mongodump writes it (32 hex digits), from ``listCollections``' info."""
    value = spec.get("info", {}).get("uuid")
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, bytes) and len(value) == 16:  # Binary subtype 4, not decoded to a UUID
        return bytes(value).hex()
    return None


INSERT_BATCH_DOCS = 1000
INSERT_BATCH_BYTES = 8 * 1024 * 1024


def iter_bson(chunks) -> Iterator[bytes]:
    """Split a stream of concatenated BSON documents into documents (one in memory at a time)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 4:
            length = int.from_bytes(buffer[:4], "little")
            if length < 5:
                raise ValueError(f"corrupt BSON stream: a document claims {length} bytes")
            if len(buffer) < length:
                break
            yield bytes(buffer[:length])
            del buffer[:length]
    if buffer:
        raise ValueError(f"BSON stream ends inside a document ({len(buffer)} bytes left)")


def _restore_collections(ctx: RestoreContext, db_name: str) -> list[str]:
    """The collections of ``db_name`` in the backup, found by their metadata files."""
    suffix = ".metadata.json.gz"
    prefix = f"dump/{db_name}/"
    return sorted(path[len(prefix):-len(suffix)] for path in ctx.artifacts(db_name)
                  if path.startswith(prefix) and path.endswith(suffix))
