"""Grafana: dashboards, data sources and visual alerts, the whole instance at once.

The backup writes, under ``<date>/grafana/``:

``grafana.ini``
    Grafana's configuration, read from the config dir mounted on the worker (``config_path``); skipped, with a
    log line, when it is not configured. It holds ``secret_key`` (which encrypts the secrets inside
    grafana.db) and often database and SMTP passwords, so it is encrypted client-side with the backup key.
``grafana.db.zst``
    when Grafana uses SQLite and its data dir is mounted on the worker (``db_path``): a consistent copy of the
    live database made with SQLite's online backup API (the source opened read-only, every page copied in one
    read transaction while Grafana keeps running), checked with ``PRAGMA integrity_check``, zstd-compressed
    and encrypted like grafana.ini. It is the complete state (users, teams, permissions, dashboard versions,
    data source secrets, alerting state...): stop Grafana, put it in place as ``grafana.db``, start Grafana
    with the same grafana.ini. With MySQL or PostgreSQL (``database``) it is not applicable: back that
    database up with its own tools; the log and the details say so.
``dashboards/<folder uid>/.../<dashboard uid>.json``
    every dashboard, one file each: the full ``GET /api/dashboards/uid/:uid`` answer (``dashboard`` and
    ``meta``). The folder path is the chain of folder *uids* from the top folder down to the dashboard's
    folder; dashboards of General are at the root of ``dashboards/``. Uids are used rather than titles
    because they are unique and never change when a folder is renamed or moved (titles can, and two titles
    may become one name once made filesystem-safe); ``folders.json`` maps each uid to its title.
``folders.json``
    every folder, nested ones included (walked level by level through ``/api/folders?parentUid=``), parents
    before children: the ``GET /api/folders/:uid`` answer, ``uid``, ``title``, ``parentUid`` (null at the top)
    and the rest.
``datasources.json``
    every data source as ``GET /api/datasources/uid/:uid`` answers. Secure fields (passwords, tokens in
    ``secureJsonData``) are not exportable through the API: ``secureJsonFields`` only names those that are
    set; grafana.db carries them.
``library_panels.json``
    every library element (panels and variables) as ``/api/library-elements`` lists them, model included.
``alerting/alert_rules.json``, ``alerting/rule_groups.json``, ``alerting/contact_points.json``,
``alerting/policies.json``, ``alerting/mute_timings.json``, ``alerting/templates.json``
    the alerting provisioning API's answers (``/api/v1/provisioning/...``); ``rule_groups.json`` adds each
    rule group's evaluation interval, which the rules list does not carry, in the form ``PUT .../rule-groups``
    takes back. Contact point secrets come back ``[REDACTED]`` from the API: grafana.db carries them.

Every JSON file but the dashboards is a JSON array written item by item (``policies.json``: the policy tree).
Counts: dashboards, folders, datasources, library_panels, alert_rules, rule_groups, contact_points,
mute_timings, templates; details: Grafana's version and the database kind.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.hooks.grafana import GrafanaError, GrafanaHook
from ragvault.repository import Artifact, ItemResult, utcnow_iso

MiB = 1024 * 1024
MAX_FOLDER_DEPTH = 64  # Grafana allows 8 levels of nesting; bounds every walk up the tree
PROGRESS_EVERY = 100  # dashboards between two progress lines
DATABASE_KINDS = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "mysql": "mysql",
    "postgres": "postgres",
    "postgresql": "postgres",
}
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
PROVISIONING = "/api/v1/provisioning"


class GrafanaComponent(Component):
    name = "grafana"
    title = (
        "Grafana (dashboards and alerts): grafana.ini, grafana.db online copy, dashboards and alerting export"
    )
    item_noun = None

    def hook(self) -> GrafanaHook:
        return GrafanaHook(
            grafana_conn_id=self.settings.conn_id("grafana"),
            timeout=float(self.config.get("timeout_seconds", 60)),
            retries=int(self.config.get("retries", 3)),
        )

    def endpoint(self) -> str:
        return self.hook().base_url

    @property
    def database_kind(self) -> str:
        kind = str(self.config.get("database") or "sqlite").lower()
        if kind not in DATABASE_KINDS:
            raise ComponentError(
                self.name,
                None,
                f"components.grafana.database is {kind!r}: expected sqlite, mysql or postgres",
            )
        return DATABASE_KINDS[kind]

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        cipher = self._cipher(ctx)
        with self.hook() as hook:
            try:
                health = hook.health()
                version = health.get("version")
                ctx.log.info("grafana %s at %s (database %s)", version, hook.base_url, health.get("database"))
                captured_at = utcnow_iso()
                artifacts: list[Artifact] = []
                details: dict[str, Any] = {"grafana_version": version, "database": self.database_kind}
                ini = self._config_file(ctx, cipher)
                if ini is not None:
                    artifacts.append(ini)
                database, db_details = self._database(ctx, cipher)
                details.update(db_details)
                if database is not None:
                    artifacts.append(database)
                if database is not None:
                    secrets_holder = "grafana.db (in this backup) carries them"
                elif self.database_kind == "sqlite":
                    secrets_holder = "only grafana.db carries them, and it is not in this backup"
                else:
                    secrets_holder = f"Grafana's {self.database_kind} database carries them"
                exported, counts, export_details = self._export(ctx, hook, secrets_holder)
            except GrafanaError as exc:
                raise ComponentError(self.name, None, str(exc)) from exc
        details.update(export_details)
        details["encrypted"] = [a.key.split("/", 2)[2] for a in artifacts if a.encryption]
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=version,
            counts=counts,
            artifacts=artifacts + exported,
            details=details,
        )

    # -- encryption -------------------------------------------------------------------------------------
    def _cipher(self, ctx: BackupContext) -> Cipher | None:
        """The backup key, when grafana.ini or grafana.db (both hold secrets) will be written."""
        writes_secrets = bool(self.config.get("config_path")) or (
            self.database_kind == "sqlite" and bool(self.config.get("db_path"))
        )
        if not writes_secrets:
            return None
        if not self.config.get("encrypt", True):
            ctx.log.warning(
                "grafana: components.grafana.encrypt is false: grafana.ini and grafana.db (secret_key, "
                "password hashes, data source secrets) are stored unencrypted"
            )
            return None
        try:
            return load_cipher(self.settings)
        except EncryptionError as exc:
            raise ComponentError(
                self.name,
                None,
                f"grafana.ini and grafana.db hold secrets and are stored encrypted: {exc} "
                "(or set components.grafana.encrypt: false to store them unencrypted)",
            ) from exc

    # -- grafana.ini ------------------------------------------------------------------------------------
    def _config_file(self, ctx: BackupContext, cipher: Cipher | None) -> Artifact | None:
        configured = self.config.get("config_path")
        if not configured:
            ctx.log.info(
                "grafana: components.grafana.config_path is not set (Grafana's config dir is not mounted "
                "here): grafana.ini skipped"
            )
            return None
        path = Path(configured)
        if path.is_dir():
            path = path / "grafana.ini"
        if not path.is_file():
            raise ComponentError(
                self.name,
                "grafana.ini",
                f"{path} does not exist on this worker: check components.grafana.config_path",
            )
        with ctx.open_artifact("grafana.ini", cipher=cipher, content_type="text/plain") as writer:
            with path.open("rb") as source:
                writer.write_all(iter(lambda: source.read(MiB), b""))
        ctx.log.info(
            "grafana: grafana.ini archived from %s (%d bytes%s)",
            path,
            writer.artifact.raw_size,
            ", encrypted" if cipher else "",
        )
        return writer.artifact

    # -- grafana.db -------------------------------------------------------------------------------------
    def _database(self, ctx: BackupContext, cipher: Cipher | None) -> tuple[Artifact | None, dict[str, Any]]:
        kind = self.database_kind
        if kind != "sqlite":
            ctx.log.info(
                "grafana: the database is %s (external), grafana.db is not applicable: back that database "
                "up with its own tools (%s); the API export below holds dashboards, folders, data sources "
                "(without secrets), library panels and alerting",
                kind,
                "pg_dump" if kind == "postgres" else "mysqldump",
            )
            return None, {"grafana_db": f"not applicable: external {kind} database"}
        configured = self.config.get("db_path")
        if not configured:
            ctx.log.info(
                "grafana: components.grafana.db_path is not set (Grafana's data dir is not mounted here): "
                "grafana.db skipped; the API export holds dashboards, folders, data sources (without "
                "secrets), library panels and alerting"
            )
            return None, {"grafana_db": "skipped: components.grafana.db_path not set"}
        source = Path(configured)
        if source.is_dir():
            source = source / "grafana.db"
        if not source.is_file():
            raise ComponentError(
                self.name,
                "grafana.db",
                f"{source} does not exist on this worker: check components.grafana.db_path",
            )
        with tempfile.TemporaryDirectory(prefix="ragvault-grafana-", dir=self.config.get("tmp_dir")) as tmp:
            copy = Path(tmp) / "grafana.db"
            self._check_space(source, Path(tmp))
            started = time.monotonic()
            self._online_backup(source, copy)
            checks = self._check_copy(copy)
            size = copy.stat().st_size
            ctx.log.info(
                "grafana: grafana.db copied with SQLite's online backup API in %.1fs (%d bytes, %d "
                "tables, %d dashboards), integrity_check ok; uploading",
                time.monotonic() - started,
                size,
                checks["db_tables"],
                checks["db_dashboards"],
            )
            with ctx.open_artifact(
                "grafana.db", compression="zstd", cipher=cipher, content_type="application/vnd.sqlite3"
            ) as writer:
                with copy.open("rb") as stream:
                    writer.write_all(iter(lambda: stream.read(MiB), b""))
        return writer.artifact, {"grafana_db": "online backup", "db_bytes": size, **checks}

    def _check_space(self, source: Path, directory: Path) -> None:
        needed = source.stat().st_size
        wal = source.with_name(source.name + "-wal")
        if wal.is_file():
            needed += wal.stat().st_size
        free = shutil.disk_usage(directory).free
        if free < needed * 1.1:
            raise ComponentError(
                self.name,
                "grafana.db",
                f"{directory} has {free} bytes free, the copy of {source} "
                f"needs about {needed}: set components.grafana.tmp_dir "
                "to a larger disk",
            )

    def _online_backup(self, source: Path, target: Path) -> None:
        """Copy the live database page by page through SQLite, as one consistent snapshot."""
        timeout = float(self.config.get("sqlite_busy_timeout_seconds", 60))
        try:
            src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as exc:
            raise ComponentError(
                self.name, "grafana.db", f"cannot open {source} read-only: {exc}{_readonly_hint(exc)}"
            ) from exc
        try:
            dst = sqlite3.connect(target)
            try:
                # pages=-1: every page in one step, inside one read transaction: a point-in-time snapshot even
                # while Grafana writes (its commits wait for the step to end, up to its busy timeout).
                src.backup(dst, pages=-1)
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise ComponentError(
                self.name, "grafana.db", f"online backup of {source} failed: {exc}{_readonly_hint(exc)}"
            ) from exc
        finally:
            src.close()

    def _check_copy(self, copy: Path) -> dict[str, Any]:
        db = sqlite3.connect(copy)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise ComponentError(
                    self.name,
                    "grafana.db",
                    "the copy fails PRAGMA integrity_check: " + "; ".join(map(str, problems[:5])),
                )
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "dashboard" not in tables:
                raise ComponentError(
                    self.name,
                    "grafana.db",
                    "the database has no `dashboard` table: is "
                    "components.grafana.db_path Grafana's database?",
                )
            columns = {row[1] for row in db.execute("PRAGMA table_info(dashboard)")}
            where = " WHERE is_folder = 0" if "is_folder" in columns else ""
            dashboards = db.execute(f"SELECT COUNT(*) FROM dashboard{where}").fetchone()[0]
        finally:
            db.close()
        return {"integrity_check": "ok", "db_tables": len(tables), "db_dashboards": dashboards}

    # -- HTTP API export --------------------------------------------------------------------------------
    def _export(
        self, ctx: BackupContext, hook: GrafanaHook, secrets_holder: str
    ) -> tuple[list[Artifact], dict[str, int], dict]:
        """Every object the HTTP API gives; ``secrets_holder`` tells the log where hidden secrets are."""
        page_size = max(1, int(self.config.get("page_size", 1000)))
        artifacts: list[Artifact] = []
        counts: dict[str, int] = {}
        details: dict[str, Any] = {}

        folders = _FolderTree(hook, ctx)
        for hit in hook.walk_folders(page_size, MAX_FOLDER_DEPTH):
            folders.add(hit)
        ctx.log.info("grafana: %d folders (nested included)", len(folders.records))

        dashboards, vanished = self._dashboards(ctx, hook, folders, page_size)
        artifacts += dashboards
        counts["dashboards"] = len(dashboards)
        if vanished:
            details["dashboards_deleted_during_backup"] = vanished[:20]

        artifact, counts["folders"] = _json_array(ctx, "folders.json", folders.ordered())
        artifacts.append(artifact)

        def datasources() -> Iterable[dict]:
            for listed in hook.get("/api/datasources") or []:
                uid = listed.get("uid")
                full = hook.get_optional(f"/api/datasources/uid/{quote(uid, safe='')}") if uid else None
                yield full or listed

        artifact, counts["datasources"] = _json_array(ctx, "datasources.json", datasources())
        artifacts.append(artifact)
        ctx.log.info(
            "grafana: %d data sources exported; their secure fields (passwords, tokens: secureJsonData) "
            "are not exportable through the API, datasources.json only names them (secureJsonFields): "
            "%s",
            counts["datasources"],
            secrets_holder,
        )

        artifact, counts["library_panels"] = _json_array(
            ctx, "library_panels.json", hook.library_elements(page_size)
        )
        artifacts.append(artifact)

        rules = hook.get(f"{PROVISIONING}/alert-rules") or []
        artifact, counts["alert_rules"] = _json_array(ctx, "alerting/alert_rules.json", rules)
        artifacts.append(artifact)
        groups = dict.fromkeys((rule.get("folderUID"), rule.get("ruleGroup")) for rule in rules)
        rule_groups = (
            hook.get_optional(
                f"{PROVISIONING}/folder/{quote(str(folder), safe='')}/rule-groups/"
                f"{quote(str(group), safe='')}"
            )
            for folder, group in groups
        )
        artifact, counts["rule_groups"] = _json_array(
            ctx, "alerting/rule_groups.json", (group for group in rule_groups if group is not None)
        )
        artifacts.append(artifact)

        artifact, counts["contact_points"] = _json_array(
            ctx, "alerting/contact_points.json", hook.get(f"{PROVISIONING}/contact-points") or []
        )
        artifacts.append(artifact)
        artifacts.append(
            ctx.put_artifact(
                "alerting/policies.json",
                _dumps(hook.get(f"{PROVISIONING}/policies") or {}),
                content_type="application/json",
            )
        )
        artifact, counts["mute_timings"] = _json_array(
            ctx, "alerting/mute_timings.json", hook.get(f"{PROVISIONING}/mute-timings") or []
        )
        artifacts.append(artifact)
        artifact, counts["templates"] = _json_array(
            ctx, "alerting/templates.json", hook.get(f"{PROVISIONING}/templates") or []
        )
        artifacts.append(artifact)
        ctx.log.info(
            "grafana: alerting exported: %d alert rules in %d groups, %d contact points (their secure "
            "settings come back [REDACTED]: %s), %d mute timings, %d templates, the "
            "notification policy tree",
            counts["alert_rules"],
            counts["rule_groups"],
            counts["contact_points"],
            secrets_holder,
            counts["mute_timings"],
            counts["templates"],
        )
        return artifacts, counts, details

    def _dashboards(
        self, ctx: BackupContext, hook: GrafanaHook, folders: _FolderTree, page_size: int
    ) -> tuple[list[Artifact], list[str]]:
        artifacts: list[Artifact] = []
        vanished: list[str] = []
        for hit in hook.search("dash-db", page_size):
            uid = hit.get("uid")
            if not uid:
                ctx.log.warning("grafana: search hit without uid skipped: %s", hit.get("title"))
                continue
            answer = hook.dashboard(uid)
            if answer is None:  # deleted between the search and now
                vanished.append(uid)
                ctx.log.info("grafana: dashboard %s was deleted during the backup, skipped", uid)
                continue
            folder_uid = (answer.get("meta") or {}).get("folderUid") or None
            path = "/".join(["dashboards", *folders.path(folder_uid), f"{_segment(uid)}.json"])
            artifacts.append(ctx.put_artifact(path, _dumps(answer), content_type="application/json"))
            if len(artifacts) % PROGRESS_EVERY == 0:
                ctx.log.info("grafana: %d dashboards exported", len(artifacts))
        ctx.log.info("grafana: %d dashboards exported", len(artifacts))
        return artifacts, vanished


class _FolderTree:
    """The folders by uid, able to give any folder's path of uids; folders created meanwhile are fetched."""

    def __init__(self, hook: GrafanaHook, ctx: BackupContext):
        self.hook, self.ctx = hook, ctx
        self.records: dict[str, dict[str, Any]] = {}

    def add(self, hit: dict[str, Any]) -> None:
        full = self.hook.folder(hit["uid"]) or hit
        self.records[hit["uid"]] = {
            **full,
            "parentUid": full.get("parentUid") or hit.get("parentUid") or None,
        }

    def _get(self, uid: str) -> dict[str, Any] | None:
        if uid not in self.records:
            found = self.hook.folder(uid)
            if found is None:
                return None
            self.ctx.log.info("grafana: folder %s appeared during the backup, added", uid)
            self.records[uid] = {**found, "parentUid": found.get("parentUid") or None}
        return self.records[uid]

    def chain(self, uid: str | None) -> list[str]:
        """The uids from the top folder down to ``uid`` (empty for General)."""
        chain: list[str] = []
        for _ in range(MAX_FOLDER_DEPTH):
            if not uid or uid in chain:
                break
            chain.append(uid)
            record = self._get(uid)
            uid = record.get("parentUid") if record else None
        return chain[::-1]

    def path(self, uid: str | None) -> list[str]:
        return [_segment(part) for part in self.chain(uid)]

    def ordered(self) -> list[dict[str, Any]]:
        """Every folder, parents before children."""
        depth = {uid: len(self.chain(uid)) for uid in list(self.records)}
        return sorted(self.records.values(), key=lambda record: depth.get(record["uid"], 0))


def _segment(uid: str) -> str:
    """A uid as one path segment: Grafana's uids (``[A-Za-z0-9_-]``) as they are, others percent-encoded."""
    if SAFE_SEGMENT.match(uid):
        return uid
    return quote(uid, safe="").replace(".", "%2E") or "_"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n"


def _json_array(ctx: BackupContext, path: str, items: Iterable[Any]) -> tuple[Artifact, int]:
    """Write ``items`` as one JSON array, item by item; return the artifact and the number of items."""
    count = 0
    with ctx.open_artifact(path, content_type="application/json") as writer:
        writer.write(b"[")
        for item in items:
            writer.write((b",\n" if count else b"\n") + json.dumps(item, ensure_ascii=False).encode())
            count += 1
        writer.write(b"\n]\n" if count else b"]\n")
    return writer.artifact, count


def _readonly_hint(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "readonly" in text or "unable to open" in text:
        return (
            " (a database in WAL mode needs its -shm file: mount Grafana's data dir read-write on the "
            "worker, "
            "or switch Grafana to the rollback journal)"
        )
    return ""
