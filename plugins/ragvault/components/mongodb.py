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
writes the dump of the ordinary collections and this module uploads its files.

Ordinary and interval collections
---------------------------------
An ordinary collection is *state*: the backup holds all of its documents as they are when the task runs
(sorted by ``_id``). A log or event collection can instead be declared an *interval* collection in
``components.mongodb.interval_collections``, a mapping of ``"db.collection"`` fnmatch patterns (case
sensitive, like ``include_collections``) to the name of a timestamp field, e.g.
``{"app.logs": "ts", "*.events": "created_at"}``. The patterns are tried in the order the file lists
them and the first one that matches a collection gives its field. Only real collections can be interval
collections (a view that matches a pattern is backed up as an ordinary one, with a warning).

Every run, in every mode, exports of an interval collection only the documents whose field is a BSON
datetime in the run's data interval ``[start, end)`` (``BackupContext.window()``), with one range query
streamed like the other collections. The artifacts are the same three files, so a stock ``mongorestore``
of a day's dump inserts that day's documents. An index whose first key is the field makes the query
fast and the dump ordered by time; without one the server scans the whole collection every run (and the
dump is in the server's natural order), and the log says so. Documents whose field is missing or is not a
datetime (a string, a number...) are in no interval and therefore never exported: they are counted with
one count query and the log warns when there are any.

Replica sets
------------
``read_preference`` (``primary``, ``primaryPreferred``, ``secondary``, ``secondaryPreferred``, ``nearest``;
null: the connection's) is the read preference of every read of the dump: ``secondaryPreferred`` reads a replica
set's secondary, as ``mongodump --readPreference`` does, and spares the primary. Each database's details record
``replication``: the topology (``replica set <name>`` with its hosts, or ``standalone``), the read preference, and,
on a replica set, the newest oplog entry's timestamp read just before the dump (``oplog_start``) and just after it
(``oplog_end``): the dump holds every write up to ``oplog_start`` and possibly some up to ``oplog_end`` (like a
mongodump without ``--oplog``; with ingestion paused the two are equal and the dump is a consistent point in
time). A standalone server has no oplog: its dump is consistent only while ingestion is paused, which the backup
DAG does.

The item's details say, per collection, ``"kind": "state"`` (with ``documents`` and ``indexes``) or
``"kind": "interval"`` (with ``field``, ``window`` ``{start, end, source}``, ``documents``, ``indexes``
and ``undated``, the documents without a datetime field). The counts add ``interval_collections``.

A run in "interval" mode (``ctx.capture_state`` False: a backfill, or a rerun of a day older than a
complete backup) writes only the database's interval collections; its ordinary collections are not read
at all. :meth:`MongoComponent.interval_items` names the databases that hold at least one selected
interval collection, and :meth:`MongoComponent.backup_parts` has ``INTERVAL`` only when
``interval_collections`` is set.

Restore
-------
An ordinary collection is replaced: dropped, recreated with its options, its documents inserted from the
dump (the bytes as they were, never decoded), then its indexes built, as mongorestore does.

An interval collection is merged, never dropped: it is created (with its options) when missing, the
backed-up documents are inserted unordered and those whose ``_id`` the target already holds are refused by
the server with a duplicate-key error, which is counted (``present``) and ignored; the indexes it lacks
are created. Several days can so be restored one after another into one collection, and restoring a day
twice adds nothing. A document already in the target keeps its content, even when it differs from the
backup: the restore only ever inserts (FerretDB 1.24, the local server, also wedges on update commands of
100 statements or more: see ``MONGO_UPSERT_BATCH`` in ``include/devstack/seed.py``). A duplicate-key error
whose ``_id`` is not in the target (another unique index refused the document) fails the restore.

``inspect_target`` asks for confirmation when an ordinary collection would be replaced, or when an
interval collection already holds documents of the backup's window (other days' documents are no reason).
``verify_restore`` compares an ordinary collection's counts and a sample of documents with the backup;
for an interval collection every backed-up ``_id`` must be in the target and a sample of documents be
field-equal to the dump, the target may hold more documents (other days), and every backed-up index must
exist.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bson
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError

from ragvault.components.base import (
    INTERVAL,
    STATE,
    BackupContext,
    Component,
    ComponentError,
    RestoreContext,
    parse_time,
)
from ragvault.config import ConfigError, select
from ragvault.repository import Artifact, ItemResult, iter_lines, prefetched, utcnow_iso

EJSON = json_util.CANONICAL_JSON_OPTIONS
if TYPE_CHECKING:
    from airflow.providers.mongo.hooks.mongo import MongoHook

RAW = CodecOptions(document_class=RawBSONDocument)
BATCH_SIZE = 1000
PROGRESS_DOCUMENTS = 100_000
#: the server's code for a duplicate key (an unordered insert reports one write error per refused document)
DUPLICATE_KEY = 11000
#: backed-up ``_id`` values looked up in the target with one ``$in`` query when verifying an interval collection
VERIFY_BATCH = 500


class MongoComponent(Component):
    name = "mongodb"
    title = "MongoDB (documents and logs): mongodump layout and Extended JSON export"
    item_noun = "database"
    #: ordinary collections are state; the ``interval_collections`` are interval data (see :meth:`backup_parts`)
    parts = frozenset({STATE, INTERVAL})

    def hook(self) -> MongoHook:
        # imported here: the provider takes seconds to import, and every task imports this module
        from airflow.providers.mongo.hooks.mongo import MongoHook

        return MongoHook(mongo_conn_id=self.settings.conn_id("mongo"))

    def endpoint(self) -> str:
        conn = self.hook().connection
        return f"mongodb://{conn.host}{f':{conn.port}' if conn.port else ''}"

    # -- ordinary and interval collections --------------------------------------------------------------
    def interval_patterns(self) -> dict[str, str]:
        """``interval_collections``: ``{"db.collection" pattern: timestamp field}``, in the file's order."""
        patterns = self.config.get("interval_collections") or {}
        if not isinstance(patterns, dict):
            raise ConfigError("components.mongodb.interval_collections must be a mapping of \"db.collection\" "
                              f"patterns to timestamp fields, not {patterns!r}")
        for pattern, field in patterns.items():
            if not isinstance(pattern, str) or not isinstance(field, str) or not field or field.startswith("$"):
                raise ConfigError(f"components.mongodb.interval_collections: {pattern!r}: {field!r} is not a "
                                  "field name (a non-empty string not starting with $)")
        return patterns

    def interval_field(self, namespace: str) -> str | None:
        """The timestamp field of ``"db.collection"`` if it is an interval collection: the first pattern wins."""
        for pattern, field in self.interval_patterns().items():
            if fnmatch.fnmatchcase(namespace, pattern):
                return field
        return None

    def backup_parts(self) -> frozenset[str]:
        """``STATE``, plus ``INTERVAL`` when ``interval_collections`` declares any."""
        return frozenset({STATE, INTERVAL}) if self.interval_patterns() else frozenset({STATE})

    def interval_items(self, items: list[str]) -> list[str]:
        """The databases of ``items`` holding at least one selected interval collection."""
        if not self.interval_patterns():
            return []
        with self.hook() as hook:
            client = hook.get_conn()
            return [db for db in items
                    if any(field for _, field in self._kinds(client.get_database(db)))]

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

    def _kinds(self, database, ctx: BackupContext | None = None) -> list[tuple[dict[str, Any], str | None]]:
        """``(spec, timestamp field or None)`` for each selected collection: None for an ordinary one."""
        kinds = []
        for spec in self.collections(database):
            field = self.interval_field(f"{database.name}.{spec['name']}")
            if field is not None and spec.get("type", "collection") != "collection":
                if ctx is not None:
                    ctx.log.warning("mongodb %s.%s matches interval_collections but is a %s: backed up whole, as "
                                    "state", database.name, spec["name"], spec.get("type"))
                field = None
            kinds.append((spec, field))
        return kinds

    # -- backup -----------------------------------------------------------------------------------------
    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        db_name = item
        external = bool(self.config.get("mongodump_path"))
        with self.hook() as hook:
            client = hook.get_conn()
            version = client.server_info().get("version")
            database = client.get_database(db_name)
            captured_at = utcnow_iso()
            kinds = self._kinds(database, ctx)
            if not ctx.capture_state:
                ordinary = [spec["name"] for spec, field in kinds if field is None]
                kinds = [(spec, field) for spec, field in kinds if field is not None]
                ctx.log.info("mongodb %s: interval mode, only its %d interval collection(s) are backed up; its %d "
                             "ordinary collection(s) are not read (the state of a past day cannot be captured)%s",
                             db_name, len(kinds), len(ordinary), f": {', '.join(ordinary)}" if ordinary else "")
            preference = self._read_preference()
            if preference is not None:
                database = client.get_database(db_name, read_preference=preference)
            replication = self._replication(client, preference)
            window = ctx.window() if any(field for _, field in kinds) else None
            ctx.log.info("mongodb %s: database %s, %d collections (%d interval)", version, db_name, len(kinds),
                         sum(1 for _, field in kinds if field))
            artifacts: list[Artifact] = []
            details: dict[str, Any] = {}
            state_names = [spec["name"] for spec, field in kinds if field is None]
            if external and state_names:
                artifacts += self._external_dump(ctx, hook, db_name, state_names)
            for spec, field in kinds:
                coll_artifacts, counts = self._collection(
                    ctx, database, spec, native_dump=not external or field is not None,
                    interval=(field, window) if field is not None else None)
                artifacts += coll_artifacts
                details[spec["name"]] = counts
            if replication.get("oplog_start") is not None:
                replication["oplog_end"] = _oplog_position(client)
            ctx.log.info("mongodb %s: %s, read preference %s%s", db_name, replication["topology"],
                         replication["read_preference"],
                         f", oplog {replication['oplog_start']} .. {replication['oplog_end']}"
                         if replication.get("oplog_start") else "")
        return ctx.result(
            db_name,
            captured_at=captured_at,
            source_version=version,
            counts={
                "databases": 1,
                "collections": len(details),
                "interval_collections": sum(1 for c in details.values() if c["kind"] == INTERVAL),
                "documents": sum(c["documents"] for c in details.values()),
                "indexes": sum(c["indexes"] for c in details.values()),
            },
            artifacts=artifacts,
            details={"collections": details, "replication": replication},
        )

    def _read_preference(self):
        """The ``read_preference`` setting as pymongo's, or None (the connection's own)."""
        from pymongo.read_preferences import ReadPreference

        name = self.config.get("read_preference")
        if not name:
            return None
        modes = {"primary": ReadPreference.PRIMARY, "primarypreferred": ReadPreference.PRIMARY_PREFERRED,
                 "secondary": ReadPreference.SECONDARY, "secondarypreferred": ReadPreference.SECONDARY_PREFERRED,
                 "nearest": ReadPreference.NEAREST}
        try:
            return modes[str(name).replace("_", "").lower()]
        except KeyError:
            raise ComponentError(self.name, None, f"components.mongodb.read_preference is {name!r}: expected "
                                 "primary, primaryPreferred, secondary, secondaryPreferred or nearest") from None

    @staticmethod
    def _replication(client, preference) -> dict[str, Any]:
        """Where the dump reads from: the topology, the read preference, and on a replica set the oplog's
        newest entry before the dump."""
        hello = client.admin.command("hello")
        name = (preference if preference is not None else client.read_preference).mongos_mode
        if not hello.get("setName"):
            return {"topology": "standalone", "read_preference": name, "oplog_start": None, "oplog_end": None}
        return {"topology": f"replica set {hello['setName']}", "hosts": list(hello.get("hosts") or []),
                "primary": hello.get("primary"), "read_preference": name,
                "oplog_start": _oplog_position(client), "oplog_end": None}

    def _collection(self, ctx: BackupContext, database, spec: dict[str, Any], native_dump: bool,
                    interval: tuple[str, tuple[datetime, datetime, str]] | None = None):
        """Write one collection's artifacts: all of it, or with ``interval`` (field, window) that window's."""
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
        base = f"{database.name}/{name}"
        query: dict[str, Any] = {}
        sort: list[tuple[str, int]] | None = [("_id", 1)]
        info: dict[str, Any] = {"kind": STATE}
        if interval is not None:
            field, (start, end, source) = interval
            query = {field: {"$gte": start, "$lt": end}}
            indexed = any(next(iter(index["key"]), None) == field for index in indexes)
            # With an index on the field the range is read from it, in time order; without one, the
            # collection is scanned in natural order (sorting it would hold the whole window in memory).
            sort = [(field, 1)] if indexed else None
            if not indexed:
                ctx.log.warning("mongodb %s: no index starts with %r: every run scans the whole collection; "
                                "create one (db.%s.createIndex({%s: 1})) to make it fast", base, field, name, field)
            undated = database.get_collection(name).count_documents({field: {"$not": {"$type": "date"}}})
            if undated:
                ctx.log.warning("mongodb %s: %d document(s) have no datetime %r (missing, or another type): they "
                                "are in no interval and never backed up", base, undated, field)
            info = {"kind": INTERVAL, "field": field,
                    "window": {"start": start.isoformat(), "end": end.isoformat(), "source": source},
                    "undated": undated}
            ctx.log.info("mongodb %s: interval collection, documents with %s in [%s, %s)", base, field,
                         start.isoformat(), end.isoformat())
        artifacts: list[Artifact] = []
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
                # raw batches (the server's bytes, one blob a batch) read by a thread of their own while this one
                # writes the previous batch to the dump as it is and encodes its documents for the export
                batches = collection.find_raw_batches(query, batch_size=BATCH_SIZE, sort=sort)
                next_progress = PROGRESS_DOCUMENTS
                for batch in prefetched(batches, name=f"mongodb-{name}"):
                    if dump is not None:
                        dump.write(batch)
                    for raw in bson.decode_all(batch, RAW):
                        export.write(json_util.dumps(raw, json_options=EJSON).encode() + b"\n")
                        documents += 1
                    if documents >= next_progress:
                        ctx.log.info("mongodb %s: %d documents so far", base, documents)
                        next_progress += PROGRESS_DOCUMENTS
            except BaseException:
                export.abort()
                if dump is not None:
                    dump.abort()
                raise
            if dump is not None:
                artifacts.append(dump.close())
            artifacts.append(export.close())
        ctx.log.info("mongodb %s: %d documents, %d indexes", base, documents, len(indexes))
        return artifacts, {**info, "documents": documents, "indexes": len(indexes)}

    # -- restore --------------------------------------------------------------------------------------
    # An ordinary collection is dropped and recreated with its options, its documents inserted in batches
    # from the BSON dump (the bytes as they were, never decoded), then its indexes built, as mongorestore
    # does. Dumps written by the stock mongodump (mongodump_path) have the same layout. An interval
    # collection is merged instead (see the module's docstring).

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        expected = _collection_details(ctx, item)
        replaced, replaced_documents, merged = [], 0, []
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            existing = set(database.list_collection_names())
            for name in _restore_collections(ctx, item):
                if name not in existing:
                    continue
                info = expected.get(name, {})
                if info.get("kind") == INTERVAL:
                    start, end = _window(info)
                    held = database[name].count_documents({info["field"]: {"$gte": start, "$lt": end}})
                    if held:
                        merged.append(f"interval collection {name} already holds {held} documents of the backup's "
                                      f"window [{start.isoformat()}, {end.isoformat()})")
                else:
                    replaced.append(name)
                    replaced_documents += database[name].estimated_document_count()
        what = []
        if replaced:
            what.append(f"{len(replaced)} collection(s) with {replaced_documents} documents would be replaced")
        if merged:
            what.append("; ".join(merged) + " (backed-up documents not there yet are added, the others kept)")
        if not what:
            return {"holds_data": False, "what": f"database {item} holds none of the backed-up collections' data "
                                                 "(interval collections: no document of the backup's window)"}
        return {"holds_data": True, "what": f"database {item}: {'; '.join(what)}"}

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        expected = _collection_details(ctx, item)
        totals = {"collections": 0, "documents": 0, "present": 0, "indexes": 0}
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            for name in _restore_collections(ctx, item):
                metadata_file = ctx.artifact(item, f"dump/{item}/{name}.metadata.json.gz")
                metadata = json_util.loads(b"".join(ctx.read(metadata_file)))
                if expected.get(name, {}).get("kind") == INTERVAL:
                    counts = self._merge_collection(ctx, database, item, name, metadata)
                else:
                    counts = self._replace_collection(ctx, database, item, name, metadata)
                totals["collections"] += 1
                for key, value in counts.items():
                    totals[key] += value
        return totals

    def _replace_collection(self, ctx: RestoreContext, database, item: str, name: str,
                            metadata: dict[str, Any]) -> dict[str, int]:
        database.drop_collection(name)
        _create_collection(ctx, database, item, name, metadata)
        collection = database.get_collection(name, codec_options=RAW)
        documents = 0
        for batch in _dump_batches(ctx, item, name):
            collection.insert_many(batch, ordered=True, bypass_document_validation=True)
            documents += len(batch)
        indexes = _create_indexes(database, name, metadata, existing=set())
        ctx.log.info("mongodb %s.%s: %d documents, %d indexes restored", item, name, documents, indexes)
        return {"documents": documents, "indexes": indexes}

    def _merge_collection(self, ctx: RestoreContext, database, item: str, name: str,
                          metadata: dict[str, Any]) -> dict[str, int]:
        """Insert the backed-up documents the interval collection lacks; never drop, never update."""
        if name not in database.list_collection_names():
            _create_collection(ctx, database, item, name, metadata)
        collection = database.get_collection(name, codec_options=RAW)
        inserted = present = 0
        for batch in _dump_batches(ctx, item, name):
            added, duplicates = self._insert_new(collection, item, batch)
            inserted += added
            present += duplicates
        existing = set(database[name].index_information())
        indexes = _create_indexes(database, name, metadata, existing=existing)
        ctx.log.info("mongodb %s.%s: interval collection merged, %d documents inserted, %d already there, %d "
                     "indexes created", item, name, inserted, present, indexes)
        return {"documents": inserted, "present": present, "indexes": indexes}

    def _insert_new(self, collection, item: str, batch: list[RawBSONDocument]) -> tuple[int, int]:
        """Insert ``batch`` unordered; returns ``(inserted, already there)``.

        The server refuses each document whose ``_id`` it holds with a duplicate-key error and inserts the
        others. Such errors are counted; any other error, or a duplicate key whose ``_id`` the target does
        not hold (another unique index), raises.
        """
        try:
            collection.insert_many(batch, ordered=False, bypass_document_validation=True)
            return len(batch), 0
        except BulkWriteError as exc:
            details = exc.details
            errors = details.get("writeErrors", [])
            others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if others or details.get("writeConcernErrors"):
                first = (others or details["writeConcernErrors"])[0]
                raise ComponentError(self.name, item, f"{collection.name}: insert failed: {first.get('errmsg')}") \
                    from exc
            ids = [e["op"]["_id"] for e in errors]
            held = collection.count_documents({"_id": {"$in": ids}}) if ids else 0
            if held != len(ids):
                raise ComponentError(self.name, item, f"{collection.name}: {len(ids) - held} document(s) refused "
                                                      "by a unique index other than _id: "
                                                      f"{errors[0].get('errmsg')}") from exc
            return int(details.get("nInserted", len(batch) - len(ids))), len(ids)

    def verify_restore(self, ctx: RestoreContext, item: str, sample: int = 100) -> list[str]:
        problems = []
        expected = _collection_details(ctx, item)
        with self.hook() as hook:
            database = hook.get_conn().get_database(item)
            existing = set(database.list_collection_names())
            for name, counts in sorted(expected.items()):
                if name not in existing:
                    problems.append(f"collection {name} missing")
                    continue
                if counts.get("kind") == INTERVAL:
                    problems += self._verify_interval(ctx, database, item, name, counts, sample)
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

    def _verify_interval(self, ctx: RestoreContext, database, item: str, name: str, counts: dict[str, Any],
                         sample: int) -> list[str]:
        """Every backed-up ``_id`` is in the target, the first ``sample`` documents are equal, indexes exist."""
        problems: list[str] = []
        collection = database[name]
        backed_up = missing = compared = 0
        first_missing = None
        batch: list[dict[str, Any]] = []

        def check(documents: list[dict[str, Any]]) -> None:
            nonlocal missing, compared, first_missing
            found = {_key(doc["_id"]): doc
                     for doc in collection.find({"_id": {"$in": [d["_id"] for d in documents]}})}
            for document in documents:
                target = found.get(_key(document["_id"]))
                if target is None:
                    missing += 1
                    first_missing = document["_id"] if first_missing is None else first_missing
                elif compared < sample:
                    compared += 1
                    if target != document:
                        problems.append(f"{name}: document {document['_id']!r} differs from the backup")

        dump = ctx.artifacts(item).get(f"dump/{item}/{name}.bson.gz")
        for raw in iter_bson(ctx.read(dump)) if dump is not None else ():
            batch.append(bson.decode(raw))
            backed_up += 1
            if len(batch) == VERIFY_BATCH:
                check(batch)
                batch = []
        if batch:
            check(batch)
        if backed_up != counts["documents"]:
            problems.append(f"{name}: the dump holds {backed_up} documents, the manifest says {counts['documents']}")
        if missing:
            problems.append(f"{name}: {missing} of the {backed_up} backed-up documents missing "
                            f"(first: {first_missing!r})")
        metadata = json_util.loads(b"".join(ctx.read(ctx.artifact(item, f"dump/{item}/{name}.metadata.json.gz"))))
        held = set(collection.index_information())
        problems += [f"{name}: index {index['name']} missing" for index in metadata.get("indexes", [])
                     if index["name"] not in held]
        return problems

    def _external_dump(self, ctx: BackupContext, hook: MongoHook, db_name: str, names: list[str]) -> list[Artifact]:
        """Run the configured mongodump for one database and upload the files it wrote for ``names``."""
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


def _oplog_position(client) -> dict[str, int] | None:
    """The newest oplog entry's timestamp ``{"t": seconds, "i": increment}`` (None when it cannot be read)."""
    entry = client.local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", -1)])
    if entry is None or "ts" not in entry:
        return None
    return {"t": entry["ts"].time, "i": entry["ts"].inc}


def _dump_batches(ctx: RestoreContext, item: str, name: str) -> Iterator[list[RawBSONDocument]]:
    """The collection's dumped documents, in insert batches of at most ``INSERT_BATCH_DOCS`` / ``_BYTES``."""
    dump = ctx.artifacts(item).get(f"dump/{item}/{name}.bson.gz")
    if dump is None:
        return
    batch, size = [], 0
    for raw in iter_bson(ctx.read(dump)):
        batch.append(RawBSONDocument(raw))
        size += len(raw)
        if len(batch) >= INSERT_BATCH_DOCS or size >= INSERT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _create_collection(ctx: RestoreContext, database, item: str, name: str, metadata: dict[str, Any]) -> None:
    options = dict(metadata.get("options") or {})
    if metadata.get("type", "collection") != "collection":
        ctx.log.warning("mongodb %s.%s: a %s, recreated from its options only", item, name, metadata["type"])
    database.create_collection(name, **options)


def _create_indexes(database, name: str, metadata: dict[str, Any], existing: set[str]) -> int:
    """Build the backed-up indexes whose names are not in ``existing`` (``_id_`` always exists)."""
    created = 0
    for index in metadata.get("indexes", []):
        if index["name"] == "_id_" or index["name"] in existing:
            continue
        options = {k: v for k, v in index.items() if k not in ("v", "key", "ns")}
        database[name].create_index(list(index["key"].items()), **options)
        created += 1
    return created


def _restore_collections(ctx: RestoreContext, db_name: str) -> list[str]:
    """The collections of ``db_name`` in the backup, found by their metadata files."""
    suffix = ".metadata.json.gz"
    prefix = f"dump/{db_name}/"
    return sorted(path[len(prefix):-len(suffix)] for path in ctx.artifacts(db_name)
                  if path.startswith(prefix) and path.endswith(suffix))


def _collection_details(ctx: RestoreContext, item: str) -> dict[str, dict[str, Any]]:
    """The item's details per collection (a backup made before intervals existed has no ``kind``: state)."""
    return ctx.item(item).get("details", {}).get("collections", {})


def _window(info: dict[str, Any]) -> tuple[datetime, datetime]:
    """An interval collection's backed-up window ``[start, end)``, as aware UTC datetimes."""
    return parse_time(info["window"]["start"]), parse_time(info["window"]["end"])


def _key(value: Any) -> bytes:
    """A hashable, exact stand-in for an ``_id`` (which may be a document): its BSON encoding."""
    return bson.encode({"_id": value})
