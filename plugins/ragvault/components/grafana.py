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

The restore (one item, ``all``) goes one of two ways.

Through the HTTP API (the default), onto a running Grafana, blank or not, in dependency order:
    folders, parents first (uid, title and parentUid kept: created, renamed or moved as needed); data
    sources, created or updated by uid; library panels (uid kept, updated when present); dashboards
    (``POST /api/dashboards/db`` with ``overwrite``, each into its folder uid, ``id`` and ``version``
    dropped, ``uid`` kept); then alerting through the provisioning API, every call with
    ``X-Disable-Provenance: true`` so that what is restored stays editable in Grafana's UI: templates,
    mute timings and contact points first (rules and policies name them), rule groups (rule uids and
    the group's evaluation interval kept), and the notification policy tree last. Restoring twice gives
    the same state: an object whose uid (or, for templates and mute timings, name) is already on the
    target is overwritten, never duplicated; a contact point ends up with exactly the backup's
    integrations. Objects of the target that the backup does not hold are left in place (the
    verification's log names them). Secure fields (data source passwords and tokens, contact point
    secrets) are not in the API export: the log names every data source and contact point whose
    secrets must be re-entered (a target that already had them keeps them). A data source provisioned
    on the target (read-only) is left as its provisioning file defines it.
Files (``restore_files: true``), with Grafana STOPPED:
    grafana.db and grafana.ini are written back to ``db_path`` and ``config_path``; the restore refuses
    to run while ``GET /api/health`` answers at the connection's address. Each file is decrypted,
    written to a temporary file in the same folder, fsynced, checked (grafana.db with ``PRAGMA
    integrity_check`` and for its ``dashboard`` table) and only then moved over the old one, which is
    kept as ``<name>.ragvault-<backup date>.bak`` (a ``-wal``/``-shm``/``-journal`` left beside the old
    database moves with it, so that SQLite never applies it to the restored one). grafana.db is the
    complete state, secrets included: start Grafana afterwards with the restored grafana.ini (its
    ``secret_key`` decrypts them). A backup without grafana.db only gives back grafana.ini: start Grafana
    and restore again with ``restore_files: false`` for the API export.

``inspect_target`` counts the target's dashboards, folders, data sources and alert rules (from the API,
or from the grafana.db in place when restoring files); ``verify_restore`` compares the target with the
backup object by object: folders (uid, title, parentUid), every dashboard's JSON (``id`` and ``version``
aside) and folder, data sources (secure fields aside), library panels, alert rules and group intervals,
contact points (by uid and name, secrets aside), notification policies, mute timings and templates; after
a files restore with Grafana still stopped, each file's bytes against the backup's.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
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
REDACTED = "[REDACTED]"  # how the API shows a secret it will not export
#: the files a restore with ``restore_files`` puts back, and the setting naming where each goes
FILES = {"grafana.db": "db_path", "grafana.ini": "config_path"}
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
NEW_FILE_MODE = 0o640  # a restored file that replaces nothing: readable by the owner's group (Grafana's)
#: what a data source is created or updated with (the rest is Grafana's bookkeeping)
DATASOURCE_FIELDS = (
    "uid",
    "name",
    "type",
    "access",
    "url",
    "user",
    "database",
    "basicAuth",
    "basicAuthUser",
    "withCredentials",
    "isDefault",
    "jsonData",
    "apiVersion",
)
#: data source fields a restore cannot or need not reproduce: ids, versions, secrets, provisioning
DATASOURCE_FIELDS_IGNORED = (
    "id",
    "orgId",
    "version",
    "secureJsonFields",
    "password",
    "basicAuthPassword",
    "readOnly",
    "typeLogoUrl",
)
#: alert rule fields left out of a rule group restore and its verification (Grafana sets them)
#: the annotation holding a dashboard resource's folder uid (Grafana's pkg/apimachinery/utils/meta.go)
FOLDER_ANNOTATION = "grafana.app/folder"
RULE_FIELDS_DROPPED = ("id", "orgID", "updated", "updated_by", "provenance")
RULE_FIELDS_IGNORED = RULE_FIELDS_DROPPED
DASHBOARD_META_COMPARED = ("folderUid", "folderTitle", "folderUrl", "slug", "url")
MAX_PROBLEMS = 20  # differences reported per kind of object


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
                ctx.log.info("grafana %s at %s (database %s)", _version_text(health), hook.base_url,
                             health.get("database"))
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

    def _check_copy(self, copy: Path, what: str = "the copy") -> dict[str, Any]:
        db = sqlite3.connect(copy)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise ComponentError(
                    self.name,
                    "grafana.db",
                    f"{what} fails PRAGMA integrity_check: " + "; ".join(map(str, problems[:5])),
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
            answer = hook.dashboard_any(uid)
            if answer is None:  # deleted between the search and now
                vanished.append(uid)
                ctx.log.info("grafana: dashboard %s was deleted during the backup, skipped", uid)
                continue
            folder_uid = _dashboard_folder(answer)
            path = "/".join(["dashboards", *folders.path(folder_uid), f"{_segment(uid)}.json"])
            artifacts.append(ctx.put_artifact(path, _dumps(answer), content_type="application/json"))
            if len(artifacts) % PROGRESS_EVERY == 0:
                ctx.log.info("grafana: %d dashboards exported", len(artifacts))
        ctx.log.info("grafana: %d dashboards exported", len(artifacts))
        return artifacts, vanished

    # -- restore --------------------------------------------------------------------------------------
    @property
    def restore_files(self) -> bool:
        """``components.grafana.restore_files``: put grafana.db/grafana.ini back instead of using the API."""
        value = self.config.get("restore_files", False)
        return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        if self.restore_files:
            return self._inspect_files(ctx, item)
        with self.hook() as hook:
            try:
                counts = self._target_counts(hook)
            except GrafanaError as exc:
                raise ComponentError(self.name, item, str(exc)) from exc
        return _holdings(hook.base_url, counts, "objects with the backup's uids would be overwritten")

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        if self.restore_files:
            return self._restore_files(ctx, item)
        return self._restore_api(ctx, item)

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """The target's alerting objects that the restore would change and that Grafana will not let it change.

        The restore writes alerting objects without provenance (``X-Disable-Provenance``), so that they stay
        editable in the UI. Grafana refuses that over a contact point, template, mute timing or policy tree that
        has a provenance (403, ``ValidateProvenanceRelaxed``), and over a rule of provenance ``file`` (409,
        ``CanUpdateProvenanceInRuleGroup`` lets a rule group go from ``api`` to none only). Found here, before
        any component writes, they are named with their provenance instead of failing half-way.
        """
        if self.restore_files:
            return []
        with self.hook() as hook:
            try:
                held = self._provenanced(ctx, hook, item)
            except GrafanaError as exc:
                return [f"could not read the target's alerting objects: {exc}"]
        if not held:
            return []
        return [f"Grafana at {hook.base_url} would refuse to overwrite {len(held)} provisioned alerting object(s) "
                f"of the backup: {'; '.join(held)}. Grafana lets only the tool that provisioned them change them "
                "(Terraform or the API for provenance api, provisioning files for file): release them there (or "
                "delete them on the target), set components.grafana.alerting_provenance: keep to write the api ones "
                "back as api, or leave grafana out of this restore"]

    def _provenanced(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> list[str]:
        """``what (provenance p)`` of each target alerting object the restore would overwrite and cannot."""
        allowed = ("", "api") if self.keep_provenance else ("",)
        templates = {entry["name"] for entry in self._items(ctx, item, "alerting/templates.json")}
        timings = {entry["name"] for entry in self._items(ctx, item, "alerting/mute_timings.json")}
        points = list(self._items(ctx, item, "alerting/contact_points.json"))
        uids, names = {p["uid"] for p in points}, {p["name"] for p in points}
        tree = _read_json(ctx, ctx.artifact(item, "alerting/policies.json"))
        groups = {f"{g['folderUid']}/{g['title']}" for g in self._items(ctx, item, "alerting/rule_groups.json")}
        overwritten = {
            "template": lambda held: held.key in templates,
            "mute_timing": lambda held: held.key in timings,
            "contact_point": lambda held: held.key in uids or held.name in names,
            "policies": lambda held: bool(tree and tree.get("receiver")),
            "rule": lambda held: held.group in groups,
        }
        return [held.describe() for held in self._target_provenance(hook) if overwritten[held.kind](held)
                and held.provenance not in (RULE_PROVENANCES_REPLACEABLE if held.kind == "rule" else allowed)]

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        if self.restore_files and not self._probe().answers():
            return self._verify_files(ctx, item)
        return self._verify_api(ctx, item)

    def _target_counts(self, hook: GrafanaHook) -> dict[str, int]:
        page_size = self._page_size
        return {
            "dashboards": sum(1 for _ in hook.search("dash-db", page_size)),
            "folders": sum(1 for _ in hook.walk_folders(page_size, MAX_FOLDER_DEPTH)),
            "data sources": len(hook.get("/api/datasources") or []),
            "alert rules": len(hook.get(f"{PROVISIONING}/alert-rules") or []),
        }

    @property
    def _page_size(self) -> int:
        return max(1, int(self.config.get("page_size", 1000)))

    @contextmanager
    def _about(self, item: str, what: str) -> Iterator[None]:
        """Turn a failed API call into a ComponentError naming the object being restored."""
        try:
            yield
        except GrafanaError as exc:
            raise ComponentError(self.name, item, f"{what}: {exc}") from exc

    # -- restore through the HTTP API -----------------------------------------------------------------
    @property
    def keep_provenance(self) -> bool:
        """``components.grafana.alerting_provenance: keep``: objects the target holds with provenance ``api``
        are written back with it, so that what Terraform (or the API) manages stays managed by it."""
        value = str(self.config.get("alerting_provenance") or "none").strip().lower()
        if value not in ("none", "keep"):
            raise ComponentError(self.name, None, f"alerting_provenance is {value!r}: expected none or keep")
        return value == "keep"

    def _disable(self, kind: str, key: str) -> bool:
        """Whether to write this alerting object without provenance (``X-Disable-Provenance``): always, unless
        ``alerting_provenance`` is ``keep`` and the target holds it with provenance ``api``."""
        return (kind, key) not in getattr(self, "_keep_api", set())

    def _target_provenance(self, hook: GrafanaHook) -> list[_Provenanced]:
        """The target's alerting objects that have a provenance."""
        held: list[_Provenanced] = []
        for kind, listing, label in (("template", "templates", "notification template"),
                                     ("mute_timing", "mute-timings", "mute timing")):
            held += [_Provenanced(kind, entry["name"], entry["name"], entry["provenance"], label)
                     for entry in hook.get(f"{PROVISIONING}/{listing}") or [] if entry.get("provenance")]
        held += [_Provenanced("contact_point", str(p.get("uid")), str(p.get("name")), p["provenance"],
                              "contact point", detail=f"uid {p.get('uid')}")
                 for p in hook.get(f"{PROVISIONING}/contact-points") or [] if p.get("provenance")]
        policies = hook.get(f"{PROVISIONING}/policies") or {}
        if policies.get("provenance"):
            held.append(_Provenanced("policies", "", "", policies["provenance"], "the notification policy tree"))
        held += [_Provenanced("rule", str(r.get("uid")), str(r.get("title")), r["provenance"], "alert rule",
                              detail=f"uid {r.get('uid')}", group=f"{r.get('folderUID')}/{r.get('ruleGroup')}")
                 for r in hook.get(f"{PROVISIONING}/alert-rules") or [] if r.get("provenance")]
        return held

    @staticmethod
    def _api_managed(held: list[_Provenanced]) -> set[tuple[str, str]]:
        """``(kind, key)`` of what ``alerting_provenance: keep`` writes back with provenance api: the objects of
        provenance api, and the rule groups whose provisioned rules are all of provenance api."""
        keep = {(h.kind, h.key) for h in held if h.kind != "rule" and h.provenance == "api"}
        rules = [h for h in held if h.kind == "rule"]
        groups = {h.group for h in rules} - {h.group for h in rules if h.provenance != "api"}
        return keep | {("rule_group", group) for group in groups}

    def _restore_api(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        if self.keep_provenance:
            with self.hook() as hook, self._about(item, "the target's alerting objects"):
                self._keep_api = self._api_managed(self._target_provenance(hook))
            if self._keep_api:
                ctx.log.info("grafana: alerting_provenance keep: %d alerting objects of the target keep provenance "
                             "api: %s", len(self._keep_api), ", ".join(f"{k} {n}" for k, n in sorted(self._keep_api)))
        with self.hook() as hook:
            with self._about(item, "Grafana does not answer"):
                version = _version_text(hook.health())
            ctx.log.info(
                "grafana: restoring the API export of %s onto grafana %s at %s",
                ctx.date,
                version,
                hook.base_url,
            )
            counts = {"folders": self._restore_folders(ctx, hook, item)}
            counts["datasources"], datasource_secrets = self._restore_datasources(ctx, hook, item)
            counts["library_panels"] = self._restore_library_panels(ctx, hook, item)
            counts["dashboards"] = self._restore_dashboards(ctx, hook, item)
            counts["templates"] = self._restore_templates(ctx, hook, item)
            counts["mute_timings"] = self._restore_mute_timings(ctx, hook, item)
            counts["contact_points"], contact_secrets = self._restore_contact_points(ctx, hook, item)
            counts["rule_groups"], counts["alert_rules"] = self._restore_rule_groups(ctx, hook, item)
            counts["policies"] = self._restore_policies(ctx, hook, item)
        counts["secrets_to_reenter"] = datasource_secrets + contact_secrets
        ctx.log.info(
            "grafana: restored %s",
            ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items()),
        )
        return counts

    def _items(self, ctx: RestoreContext, item: str, path: str) -> Iterator[Any]:
        """The items of one of the backup's JSON array files, streamed."""
        return _json_items(ctx.read(ctx.artifact(item, path)), path)

    def _restore_folders(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        count = 0
        for folder in self._items(ctx, item, "folders.json"):
            uid, title, parent = folder["uid"], folder["title"], folder.get("parentUid") or None
            path = f"/api/folders/{quote(uid, safe='')}"
            with self._about(item, f"folder {uid} ({title!r})"):
                current = hook.folder(uid)
                if current is None:
                    body = {"uid": uid, "title": title}
                    if parent:
                        body["parentUid"] = parent
                    if folder.get("description"):
                        body["description"] = folder["description"]
                    hook.send("POST", "/api/folders", body)
                else:
                    description = folder.get("description") or ""
                    if current.get("title") != title or (current.get("description") or "") != description:
                        hook.send(
                            "PUT", path, {"title": title, "description": description, "overwrite": True}
                        )
                    if (current.get("parentUid") or None) != parent:
                        hook.send("POST", f"{path}/move", {"parentUid": parent or ""})
            count += 1
        ctx.log.info("grafana: %d folders restored (nested ones under their parent uid)", count)
        return count

    def _restore_datasources(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> tuple[int, int]:
        count, needing = 0, []
        for source in self._items(ctx, item, "datasources.json"):
            uid, name = source.get("uid"), source.get("name")
            if not uid:
                ctx.log.warning("grafana: data source %r has no uid (a Grafana before 7.0): skipped", name)
                continue
            path = f"/api/datasources/uid/{quote(uid, safe='')}"
            body = {key: source[key] for key in DATASOURCE_FIELDS if key in source}
            with self._about(item, f"data source {uid} ({name!r})"):
                current = hook.get_optional(path)
                if current is None:
                    answer = hook.send("POST", "/api/datasources", body)
                elif current.get("readOnly"):
                    ctx.log.warning(
                        "grafana: data source %s (%s) is provisioned on the target (read-only): left as its "
                        "provisioning file defines it",
                        uid,
                        name,
                    )
                    continue
                else:
                    answer = hook.send("PUT", path, {**body, "version": current.get("version")})
            count += 1
            wanted = sorted(key for key, isset in (source.get("secureJsonFields") or {}).items() if isset)
            have = ((answer or {}).get("datasource") or {}).get("secureJsonFields") or {}
            missing = [key for key in wanted if not have.get(key)]
            if missing:
                needing.append(f"{name} ({uid}): {', '.join(missing)}")
        ctx.log.info("grafana: %d data sources restored", count)
        if needing:
            ctx.log.warning(
                "grafana: %d data sources need their secrets re-entered in Grafana (secure fields are not "
                "exportable through the API; restoring grafana.db with components.grafana.restore_files "
                "brings them back): %s",
                len(needing),
                "; ".join(needing),
            )
        return count, len(needing)

    def _restore_library_panels(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        count = 0
        for element in self._items(ctx, item, "library_panels.json"):
            uid = element["uid"]
            path = f"/api/library-elements/{quote(uid, safe='')}"
            body = {
                "uid": uid,
                "name": element.get("name"),
                "kind": element.get("kind"),
                "folderUid": element.get("folderUid") or "",
                "model": element.get("model") or {},
            }
            with self._about(item, f"library panel {uid} ({element.get('name')!r})"):
                current = hook.get_optional(path)
                if current is None:
                    hook.send("POST", "/api/library-elements", body)
                else:
                    version = ((current or {}).get("result") or {}).get("version")
                    hook.send("PATCH", path, {**body, "version": version})
            count += 1
        ctx.log.info("grafana: %d library panels restored", count)
        return count

    def _restore_dashboards(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        count = 0
        message = f"restored by ragvault from the backup of {ctx.date}"
        for path, artifact in sorted(_dashboard_files(ctx, item).items()):
            answer = _read_json(ctx, artifact)
            if _is_resource(answer):  # a schema-v2 dashboard of Grafana 12, through the API that served it
                with self._about(item, f"dashboard {_dashboard_uid(answer)} ({answer['apiVersion']}, {path})"):
                    _put_resource(hook, answer)
                count += 1
                continue
            dashboard = {k: v for k, v in answer["dashboard"].items() if k not in ("id", "version")}
            folder_uid = (answer.get("meta") or {}).get("folderUid") or ""
            what = f"dashboard {dashboard.get('uid')} ({dashboard.get('title')!r}, {path})"
            with self._about(item, what):
                try:
                    hook.send(
                        "POST",
                        "/api/dashboards/db",
                        {"dashboard": dashboard, "folderUid": folder_uid, "overwrite": True, "message": message},
                    )
                except GrafanaError as exc:
                    self._dangling_library_panels(ctx, hook, what, dashboard, exc)
            count += 1
            if count % PROGRESS_EVERY == 0:
                ctx.log.info("grafana: %d dashboards restored", count)
        ctx.log.info("grafana: %d dashboards restored", count)
        return count

    @staticmethod
    def _dangling_library_panels(
        ctx: RestoreContext, hook: GrafanaHook, what: str, dashboard: dict[str, Any], exc: GrafanaError
    ) -> None:
        """Grafana saves a dashboard, then connects its library panels, and answers 500 "Error while connecting
        library panels" when one of them does not exist (pkg/api/dashboard.go). A source Grafana can hold such a
        dashboard (imported, or its library panel deleted); the backup then has no such panel either. The
        restore gives the same state: the dashboard is saved, the panels named in a warning. Any other failure,
        or a 500 while every library panel exists, is raised."""
        used = _library_panel_uids(dashboard)
        if exc.status != 500 or not used:
            raise exc
        missing = sorted(
            uid for uid in used if hook.get_optional(f"/api/library-elements/{quote(uid, safe='')}") is None
        )
        if not missing:
            raise exc
        ctx.log.warning(
            "grafana: %s saved, but Grafana could not connect its library panels: %s exist neither in the "
            "backup nor on the target (the source held the dashboard with the same missing panels)",
            what, ", ".join(missing),
        )

    def _restore_templates(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        count = 0
        for template in self._items(ctx, item, "alerting/templates.json"):
            name = template["name"]
            with self._about(item, f"notification template {name!r}"):
                hook.send(
                    "PUT",
                    f"{PROVISIONING}/templates/{quote(name, safe='')}",
                    {"template": template.get("template") or ""},
                    expected=(200, 202),
                    disable_provenance=self._disable("template", name),
                )
            count += 1
        return count

    def _restore_mute_timings(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        count = 0
        for timing in self._items(ctx, item, "alerting/mute_timings.json"):
            name = timing["name"]
            path = f"{PROVISIONING}/mute-timings/{quote(name, safe='')}"
            body = {"name": name, "time_intervals": timing.get("time_intervals") or []}
            with self._about(item, f"mute timing {name!r}"):
                current = hook.get_optional(path)
                if current is None:
                    hook.send(
                        "POST",
                        f"{PROVISIONING}/mute-timings",
                        body,
                        expected=(200, 201),
                        disable_provenance=True,
                    )
                else:
                    hook.send(
                        "PUT",
                        path,
                        {**body, "version": current.get("version")},
                        expected=(200, 202),
                        disable_provenance=self._disable("mute_timing", name),
                    )
            count += 1
        return count

    def _restore_contact_points(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> tuple[int, int]:
        """Every contact point by uid; the target's other integrations under a restored name are removed."""
        with self._about(item, "contact points"):
            current = {point["uid"]: point for point in hook.get(f"{PROVISIONING}/contact-points") or []}
        count, names, uids, needing = 0, set(), set(), []
        for point in self._items(ctx, item, "alerting/contact_points.json"):
            uid, name = point["uid"], point["name"]
            names.add(name)
            uids.add(uid)
            settings = point.get("settings") or {}
            redacted = sorted(key for key, value in settings.items() if value == REDACTED)
            body = {
                "uid": uid,
                "name": name,
                "type": point.get("type"),
                "settings": settings,
                "disableResolveMessage": bool(point.get("disableResolveMessage")),
            }
            what = f"contact point {name!r} ({point.get('type')}, uid {uid})"
            with self._about(item, what):
                if uid in current:
                    # "[REDACTED]" keeps the secret the target already holds
                    hook.send(
                        "PUT",
                        f"{PROVISIONING}/contact-points/{quote(uid, safe='')}",
                        body,
                        expected=(200, 202),
                        disable_provenance=self._disable("contact_point", uid),
                    )
                    kept = current[uid].get("settings") or {}
                    missing = [key for key in redacted if kept.get(key) != REDACTED]
                else:
                    missing = self._create_contact_point(ctx, hook, body, redacted, what)
            if missing:
                needing.append(f"{name} ({uid}): {', '.join(missing)}")
            count += 1
        for uid, point in current.items():
            if point.get("name") in names and uid not in uids:
                with self._about(item, f"contact point {point.get('name')!r} (extra integration {uid})"):
                    hook.send(
                        "DELETE",
                        f"{PROVISIONING}/contact-points/{quote(uid, safe='')}",
                        expected=(200, 202, 204),
                        disable_provenance=self._disable("contact_point", uid),
                    )
                ctx.log.info(
                    "grafana: contact point %r: integration %s (%s) removed, the backup does not have it",
                    point.get("name"),
                    uid,
                    point.get("type"),
                )
        if needing:
            ctx.log.warning(
                "grafana: %d contact points need their secure settings re-entered in Grafana (the API "
                "export shows them as [REDACTED]; restoring grafana.db brings them back): %s",
                len(needing),
                "; ".join(needing),
            )
        return count, len(needing)

    @staticmethod
    def _create_contact_point(
        ctx: RestoreContext, hook: GrafanaHook, body: dict, redacted: list[str], what: str
    ) -> list[str]:
        """Create a contact point without its redacted secrets; the secrets to re-enter are returned.

        When Grafana refuses it without them (a required secret, such as a Slack URL), it is created with the
        ``[REDACTED]`` text standing in for them, and the log says so.
        """
        path = f"{PROVISIONING}/contact-points"
        if not redacted:
            hook.send("POST", path, body, expected=(200, 202), disable_provenance=True)
            return []
        bare = {**body, "settings": {k: v for k, v in body["settings"].items() if k not in redacted}}
        try:
            hook.send("POST", path, bare, expected=(200, 202), disable_provenance=True)
        except GrafanaError as exc:
            if exc.status != 400:
                raise
            hook.send("POST", path, body, expected=(200, 202), disable_provenance=True)
            ctx.log.warning(
                "grafana: %s is refused without its secure settings (%s); created with the text [REDACTED] "
                "in their place: it cannot notify until they are re-entered",
                what,
                exc,
            )
        return redacted

    def _restore_rule_groups(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> tuple[int, int]:
        groups = rules = 0
        grouped: set[str] = set()
        for group in self._items(ctx, item, "alerting/rule_groups.json"):
            folder_uid, title = group["folderUid"], group["title"]
            body = {
                "title": title,
                "folderUid": folder_uid,
                "interval": group.get("interval"),
                "rules": [
                    {k: v for k, v in rule.items() if k not in RULE_FIELDS_DROPPED}
                    for rule in group.get("rules") or []
                ],
            }
            with self._about(item, f"alert rule group {title!r} in folder {folder_uid}"):
                hook.send(
                    "PUT",
                    f"{PROVISIONING}/folder/{quote(folder_uid, safe='')}/rule-groups/{quote(title, safe='')}",
                    body,
                    disable_provenance=self._disable("rule_group", f"{folder_uid}/{title}"),
                )
            groups += 1
            rules += len(body["rules"])
            grouped.update(str(rule.get("uid")) for rule in body["rules"])
        strays = [
            f"{rule.get('uid')} ({rule.get('title')!r})"
            for rule in self._items(ctx, item, "alerting/alert_rules.json")
            if str(rule.get("uid")) not in grouped
        ]
        if strays:
            ctx.log.warning(
                "grafana: %d alert rules of alert_rules.json belong to no group of rule_groups.json (their "
                "group was deleted during the backup) and were not restored: %s",
                len(strays),
                ", ".join(strays[:20]),
            )
        ctx.log.info("grafana: %d alert rules restored in %d groups (uids and intervals kept)", rules, groups)
        return groups, rules

    def _restore_policies(self, ctx: RestoreContext, hook: GrafanaHook, item: str) -> int:
        tree = _strip_provenance(_read_json(ctx, ctx.artifact(item, "alerting/policies.json")))
        if not tree or not tree.get("receiver"):
            ctx.log.info("grafana: the backup holds no notification policy tree: policies left as they are")
            return 0
        with self._about(item, "notification policy tree"):
            hook.send("PUT", f"{PROVISIONING}/policies", tree, expected=(200, 202),
                      disable_provenance=self._disable("policies", ""))
        ctx.log.info("grafana: notification policy tree restored (default receiver %r)", tree.get("receiver"))
        return 1

    # -- restore of grafana.db and grafana.ini ------------------------------------------------------------
    def _probe(self) -> GrafanaHook:
        """A hook asking once, quickly, whether Grafana runs (the files restore needs it stopped)."""
        return GrafanaHook(
            grafana_conn_id=self.settings.conn_id("grafana"), timeout=5, connect_timeout=3, retries=0
        )

    def _file_targets(self) -> dict[str, Path | None]:
        """Where each file goes: ``db_path``/``config_path`` as configured (a folder gets the file's name)."""
        targets: dict[str, Path | None] = {}
        for name, setting in FILES.items():
            configured = self.config.get(setting)
            path = Path(configured) if configured else None
            if path is not None and path.is_dir():
                path = path / name
            targets[name] = path
        return targets

    @staticmethod
    def _file_artifacts(ctx: RestoreContext, item: str) -> dict[str, dict[str, Any]]:
        """The backup's grafana.db and grafana.ini artifacts by file name (compression suffix dropped)."""
        found = {}
        for path, artifact in ctx.artifacts(item).items():
            name = path.removesuffix(".zst").removesuffix(".gz")
            if name in FILES:
                found[name] = artifact
        return found

    def _inspect_files(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        targets = self._file_targets()
        probe = self._probe()
        running = probe.answers()
        lines = []
        counts: dict[str, int] = {}
        database = targets["grafana.db"]
        if database is None:
            lines.append("components.grafana.db_path is not set")
        elif database.is_file():
            try:
                counts = _db_counts(database)
            except sqlite3.Error as exc:
                lines.append(f"{database} exists but cannot be read ({exc})")
                counts = {"unreadable databases": 1}
        else:
            lines.append(f"no {database}")
        for path in targets.values():
            if path is not None and path.is_file():
                kept = path.with_name(f"{path.name}.ragvault-{ctx.date}.bak")
                lines.append(
                    f"{path} ({path.stat().st_size} bytes) would be replaced, "
                    + (
                        f"{kept.name} (an earlier restore's) kept"
                        if kept.exists()
                        else f"kept as {kept.name}"
                    )
                )
        if running:
            lines.append(
                f"Grafana answers at {probe.base_url}: stop it first, the restore refuses to replace its "
                "files while it runs"
            )
        held = _holdings(str(database or "grafana.db"), counts, "")
        return {"holds_data": held["holds_data"], "what": "; ".join([held["what"], *lines])}

    def _restore_files(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        probe = self._probe()
        if probe.answers():
            raise ComponentError(
                self.name,
                item,
                "components.grafana.restore_files is true but Grafana answers GET "
                f"{probe.base_url}/api/health: stop Grafana before restoring grafana.db and grafana.ini "
                "(its files must not change under it), or set restore_files: false to restore through "
                "the HTTP API instead",
            )
        artifacts = self._file_artifacts(ctx, item)
        if not artifacts:
            raise ComponentError(
                self.name,
                item,
                f"components.grafana.restore_files is true but the backup of {ctx.date} holds neither "
                f"grafana.db nor grafana.ini ({ctx.item(item)['details'].get('grafana_db', 'not taken')}): "
                "set restore_files: false to restore the API export",
            )
        targets = self._file_targets()
        counts = {"files": 0}
        for name in FILES:  # grafana.db first: it is the state; grafana.ini goes with it
            if name not in artifacts:
                continue
            target = targets[name]
            if target is None:
                if name == "grafana.db":
                    raise ComponentError(
                        self.name,
                        name,
                        "the backup holds grafana.db but components.grafana.db_path is not set: set it to "
                        "Grafana's data dir (or its grafana.db) as mounted on this worker",
                    )
                ctx.log.warning(
                    "grafana: the backup holds grafana.ini but components.grafana.config_path is not set: "
                    "grafana.ini not restored"
                )
                continue
            check = self._restored_db_check(counts) if name == "grafana.db" else None
            self._write_file(ctx, name, artifacts[name], target, check)
            counts["files"] += 1
        if not counts["files"]:
            raise ComponentError(
                self.name,
                "grafana.ini",
                f"the backup of {ctx.date} holds grafana.ini only, and components.grafana.config_path is not "
                "set: nothing to restore; set config_path, or restore_files: false to restore the API export",
            )
        if "grafana.db" in artifacts:
            ctx.log.info(
                "grafana: grafana.db restored (%d dashboards, secrets included): start Grafana with the "
                "restored grafana.ini (its secret_key decrypts them)",
                counts.get("dashboards", 0),
            )
        else:
            ctx.log.warning(
                "grafana: the backup of %s holds no grafana.db (%s): only grafana.ini was restored; start "
                "Grafana and restore again with components.grafana.restore_files: false for the API export",
                ctx.date,
                ctx.item(item)["details"].get("grafana_db", "not taken"),
            )
        return counts

    def _restored_db_check(self, counts: dict[str, int]) -> Callable[[Path], None]:
        def check(path: Path) -> None:
            try:
                found = self._check_copy(path, "the restored grafana.db")
            except sqlite3.Error as exc:
                raise ComponentError(
                    self.name, "grafana.db", f"the restored grafana.db cannot be read: {exc}"
                ) from exc
            counts["dashboards"] = found["db_dashboards"]

        return check

    def _write_file(
        self,
        ctx: RestoreContext,
        name: str,
        artifact: dict[str, Any],
        target: Path,
        check: Callable[[Path], None] | None,
    ) -> None:
        """Write ``artifact`` to ``target`` atomically, the previous file kept as ``.ragvault-<date>.bak``."""
        directory = target.parent
        setting = FILES[name]
        if not directory.is_dir():
            raise ComponentError(
                self.name,
                name,
                f"{directory} does not exist on this worker: check components.grafana.{setting}",
            )
        needed = int(artifact.get("raw_size") or 0)
        free = shutil.disk_usage(directory).free
        if free < needed * 1.1:
            raise ComponentError(
                self.name, name, f"{directory} has {free} bytes free, {name} needs {needed}: free some space"
            )
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.ragvault-", suffix=".tmp", dir=directory)
        staged = Path(temporary)
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                chunks = iter(ctx.read(artifact))
                while True:
                    try:
                        chunk = next(chunks, None)
                    except Exception as exc:
                        raise ComponentError(
                            self.name,
                            name,
                            f"cannot read {artifact['key']} from the backup: {type(exc).__name__}: {exc}",
                        ) from exc
                    if chunk is None:
                        break
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise ComponentError(self.name, name, f"cannot write {staged}: {exc}") from exc
                    written += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise ComponentError(self.name, name, f"cannot write {staged}: {exc}") from exc
            if check is not None:
                check(staged)
            try:
                if target.exists():
                    _copy_ownership(target, staged)
                else:
                    staged.chmod(NEW_FILE_MODE)  # not mkstemp's 0600: Grafana may run as another user
                kept = self._keep_previous(ctx, target)
                os.replace(staged, target)
                _fsync_directory(directory)
            except OSError as exc:
                raise ComponentError(
                    self.name, name, f"cannot put the restored file at {target}: {exc}"
                ) from exc
        finally:
            staged.unlink(missing_ok=True)
        ctx.log.info(
            "grafana: %s restored to %s (%d bytes)%s",
            name,
            target,
            written,
            f", the previous one kept as {kept}" if kept else "",
        )

    @staticmethod
    def _keep_previous(ctx: RestoreContext, target: Path) -> Path | None:
        """Keep the file being replaced (and a database's -wal/-shm/-journal) as ``.ragvault-<date>.bak``."""
        backup = target.with_name(f"{target.name}.ragvault-{ctx.date}.bak")
        keep = target.exists() and not backup.exists()
        if target.exists() and not keep:
            ctx.log.info(
                "grafana: %s already exists (an earlier restore of this backup): kept as it is, %s "
                "is replaced",
                backup,
                target,
            )
        if keep:
            try:
                os.link(target, backup)  # the old file stays in place until os.replace swaps it
            except OSError:
                shutil.copy2(target, backup)
        for suffix in SQLITE_SIDE_FILES:
            side = target.with_name(target.name + suffix)
            if side.exists():
                # never left beside the restored database: SQLite would apply it to it
                if keep:
                    os.replace(side, backup.with_name(backup.name + suffix))
                else:
                    side.unlink()
        return backup if keep else None

    def _verify_files(self, ctx: RestoreContext, item: str) -> list[str]:
        problems = []
        targets = self._file_targets()
        for name, artifact in self._file_artifacts(ctx, item).items():
            target = targets[name]
            if target is None:
                continue  # not restored, and the restore said so
            if not target.is_file():
                problems.append(f"{name}: {target} does not exist")
                continue
            expected, size = hashlib.sha256(), 0
            for chunk in ctx.read(artifact):
                expected.update(chunk)
                size += len(chunk)
            actual = hashlib.sha256()
            with target.open("rb") as stream:
                for chunk in iter(lambda: stream.read(MiB), b""):
                    actual.update(chunk)
            if actual.hexdigest() != expected.hexdigest():
                problems.append(
                    f"{name}: {target} ({target.stat().st_size} bytes, sha256 {actual.hexdigest()[:12]}) "
                    f"is not the backup's ({size} bytes, sha256 {expected.hexdigest()[:12]})"
                )
        return problems

    # -- verification through the HTTP API ------------------------------------------------------------
    def _verify_api(self, ctx: RestoreContext, item: str) -> list[str]:
        problems: list[str] = []
        extras: list[str] = []
        with self.hook() as hook:
            try:
                for check in (
                    self._verify_folders,
                    self._verify_dashboards,
                    self._verify_datasources,
                    self._verify_library_panels,
                    self._verify_alerting,
                ):
                    found, more = check(ctx, hook, item)
                    problems += _capped(found)
                    extras += more
            except GrafanaError as exc:
                problems.append(f"cannot read the target: {exc}")
        if extras:
            ctx.log.info(
                "grafana: the target also holds objects that are not in the backup (left in place): %s",
                "; ".join(extras),
            )
        return problems

    def _verify_folders(
        self, ctx: RestoreContext, hook: GrafanaHook, item: str
    ) -> tuple[list[str], list[str]]:
        target = {folder["uid"]: folder for folder in hook.walk_folders(self._page_size, MAX_FOLDER_DEPTH)}
        problems, seen = [], set()
        for folder in self._items(ctx, item, "folders.json"):
            uid = folder["uid"]
            seen.add(uid)
            got = target.get(uid)
            if got is None:
                problems.append(f"folder {uid} ({folder['title']!r}) is missing")
                continue
            expected = {"title": folder["title"], "parentUid": folder.get("parentUid") or None}
            actual = {"title": got.get("title"), "parentUid": got.get("parentUid") or None}
            difference = _difference(actual, expected)
            if difference:
                problems.append(f"folder {uid}: {difference}")
        return problems, _extras("folders", set(target) - seen)

    def _verify_dashboards(
        self, ctx: RestoreContext, hook: GrafanaHook, item: str
    ) -> tuple[list[str], list[str]]:
        problems, seen = [], set()
        for _path, artifact in sorted(_dashboard_files(ctx, item).items()):
            backup = _read_json(ctx, artifact)
            uid = _dashboard_uid(backup)
            seen.add(uid)
            got = hook.dashboard_any(uid) if uid else None
            if got is None:
                problems.append(f"dashboard {uid} ({_dashboard_title(backup)!r}) is missing")
                continue
            difference = _difference(_comparable_dashboard(got), _comparable_dashboard(backup))
            if difference:
                problems.append(f"dashboard {uid}: {difference}")
        present = {hit.get("uid") for hit in hook.search("dash-db", self._page_size)}
        return problems, _extras("dashboards", present - seen)

    def _verify_datasources(
        self, ctx: RestoreContext, hook: GrafanaHook, item: str
    ) -> tuple[list[str], list[str]]:
        problems, seen = [], set()
        for source in self._items(ctx, item, "datasources.json"):
            uid = source.get("uid")
            seen.add(uid)
            got = hook.get_optional(f"/api/datasources/uid/{quote(uid, safe='')}") if uid else None
            if got is None:
                problems.append(f"data source {uid} ({source.get('name')!r}) is missing")
                continue
            difference = _difference(
                _without(got, DATASOURCE_FIELDS_IGNORED), _without(source, DATASOURCE_FIELDS_IGNORED)
            )
            if difference:
                problems.append(f"data source {uid}: {difference}")
        present = {source.get("uid") for source in hook.get("/api/datasources") or []}
        return problems, _extras("data sources", present - seen)

    def _verify_library_panels(
        self, ctx: RestoreContext, hook: GrafanaHook, item: str
    ) -> tuple[list[str], list[str]]:
        target = {element["uid"]: element for element in hook.library_elements(min(self._page_size, 100))}
        problems, seen = [], set()
        for element in self._items(ctx, item, "library_panels.json"):
            uid = element["uid"]
            seen.add(uid)
            got = target.get(uid)
            if got is None:
                problems.append(f"library panel {uid} ({element.get('name')!r}) is missing")
                continue
            difference = _difference(_comparable_library_panel(got), _comparable_library_panel(element))
            if difference:
                problems.append(f"library panel {uid}: {difference}")
        return problems, _extras("library panels", set(target) - seen)

    def _verify_alerting(
        self, ctx: RestoreContext, hook: GrafanaHook, item: str
    ) -> tuple[list[str], list[str]]:
        problems: list[str] = []
        extras: list[str] = []

        rules = {rule["uid"]: rule for rule in hook.get(f"{PROVISIONING}/alert-rules") or []}
        seen: set[str] = set()
        for rule in self._items(ctx, item, "alerting/alert_rules.json"):
            uid = rule["uid"]
            seen.add(uid)
            got = rules.get(uid)
            if got is None:
                problems.append(f"alert rule {uid} ({rule.get('title')!r}) is missing")
                continue
            difference = _difference(_without(got, RULE_FIELDS_IGNORED), _without(rule, RULE_FIELDS_IGNORED))
            if difference:
                problems.append(f"alert rule {uid}: {difference}")
        extras += _extras("alert rules", set(rules) - seen)
        for group in self._items(ctx, item, "alerting/rule_groups.json"):
            folder_uid, title = group["folderUid"], group["title"]
            got = hook.get_optional(
                f"{PROVISIONING}/folder/{quote(folder_uid, safe='')}/rule-groups/{quote(title, safe='')}"
            )
            if got is None:
                problems.append(f"alert rule group {title!r} in folder {folder_uid} is missing")
                continue
            expected = {
                "interval": group.get("interval"),
                "rules": [r.get("uid") for r in group.get("rules") or []],
            }
            actual = {
                "interval": got.get("interval"),
                "rules": [r.get("uid") for r in got.get("rules") or []],
            }
            difference = _difference(actual, expected)
            if difference:
                problems.append(f"alert rule group {title!r} in folder {folder_uid}: {difference}")

        points = {point["uid"]: point for point in hook.get(f"{PROVISIONING}/contact-points") or []}
        uids, names = set(), set()
        for point in self._items(ctx, item, "alerting/contact_points.json"):
            uid = point["uid"]
            uids.add(uid)
            names.add(point.get("name"))
            got = points.get(uid)
            if got is None:
                problems.append(f"contact point {point.get('name')!r} (uid {uid}) is missing")
                continue
            difference = _difference(
                _comparable_contact_point(got, point), _comparable_contact_point(point, point)
            )
            if difference:
                problems.append(f"contact point {point.get('name')!r} (uid {uid}): {difference}")
        for uid, point in points.items():
            if uid not in uids and point.get("name") in names:
                problems.append(
                    f"contact point {point.get('name')!r} has an integration the backup does not have "
                    f"(uid {uid})"
                )
        extras += _extras("contact points", {p.get("name") for p in points.values()} - names)

        policies = _strip_provenance(hook.get(f"{PROVISIONING}/policies") or {})
        expected_policies = _strip_provenance(_read_json(ctx, ctx.artifact(item, "alerting/policies.json")))
        if expected_policies.get("receiver"):
            difference = _difference(policies, expected_policies)
            if difference:
                problems.append(f"notification policies: {difference}")

        for label, path, field in (
            ("mute timing", "mute_timings", "time_intervals"),
            ("template", "templates", "template"),
        ):
            current = {
                entry.get("name"): entry
                for entry in hook.get(f"{PROVISIONING}/{path.replace('_', '-')}") or []
            }
            seen_names = set()
            for entry in self._items(ctx, item, f"alerting/{path}.json"):
                name = entry.get("name")
                seen_names.add(name)
                got = current.get(name)
                if got is None:
                    problems.append(f"{label} {name!r} is missing")
                    continue
                difference = _difference({field: got.get(field)}, {field: entry.get(field)})
                if difference:
                    problems.append(f"{label} {name!r}: {difference}")
            extras += _extras(f"{label}s", set(current) - seen_names)
        return problems, extras


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


# -- restore helpers ---------------------------------------------------------------------------------------
def _holdings(where: str, counts: dict[str, int], note: str) -> dict[str, Any]:
    """``inspect_target``'s answer from the counts of what the target holds."""
    if not sum(counts.values()):
        return {
            "holds_data": False,
            "what": f"{where} holds no dashboards, folders, data sources or alert rules",
        }
    listing = ", ".join(f"{count} {name}" for name, count in counts.items())
    return {"holds_data": True, "what": f"{where} holds {listing}" + (f": {note}" if note else "")}


def _db_counts(path: Path) -> dict[str, int]:
    """Dashboards, folders, data sources and alert rules in a grafana.db of a stopped Grafana.

    Opened ``immutable``: nothing is written beside it (no ``-shm``), a ``-wal`` left there is not read.
    """
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=10)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = (
            {row[1] for row in db.execute("PRAGMA table_info(dashboard)")} if "dashboard" in tables else set()
        )

        def count(table: str, where: str = "") -> int:
            return (
                db.execute(f"SELECT COUNT(*) FROM `{table}`{where}").fetchone()[0] if table in tables else 0
            )

        folders = count("folder") if "folder" in tables else count("dashboard", " WHERE is_folder = 1")
        return {
            "dashboards": count("dashboard", " WHERE is_folder = 0" if "is_folder" in columns else ""),
            "folders": folders if "is_folder" in columns or "folder" in tables else 0,
            "data sources": count("data_source"),
            "alert rules": count("alert_rule"),
        }
    finally:
        db.close()


def _copy_ownership(source: Path, target: Path) -> None:
    """Give ``target`` the mode (and, when allowed, the owner) of the file it replaces."""
    shutil.copymode(source, target)
    stat = source.stat()
    try:
        os.chown(target, stat.st_uid, stat.st_gid)
    except OSError:
        pass  # not root: the restored file belongs to this worker's user (the mode is kept)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename itself is atomic
    finally:
        os.close(fd)


def _json_items(chunks: Iterable[bytes], what: str) -> Iterator[Any]:
    """The items of a JSON array arriving in ``chunks``, parsed one at a time (never the whole file)."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    source = iter(chunks)
    text, pos, eof = "", 0, False

    def fill() -> None:
        nonlocal text, pos, eof
        chunk = next(source, None)
        if chunk is None:
            eof = True
        text = text[pos:] + utf8.decode(chunk or b"", final=chunk is None)
        pos = 0

    def fail(reason: str) -> ComponentError:
        return ComponentError("grafana", what, f"not a valid JSON array: {reason}")

    expecting = "["
    while True:
        while True:  # skip white space, reading on while there is nothing else
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) or eof:
                break
            fill()
        if pos >= len(text):
            if expecting == "end":
                return
            raise fail("it ends early")
        char = text[pos]
        if expecting == "[":
            if char != "[":
                raise fail(f"it starts with {char!r}")
            pos += 1
            expecting = "first"
        elif expecting == "first" and char == "]":
            pos += 1
            expecting = "end"
        elif expecting in ("first", "item"):
            while True:  # decode once the item is whole (a number could go on in the next chunk)
                try:
                    value, end = decoder.raw_decode(text, pos)
                    if end < len(text) or eof:
                        break
                except json.JSONDecodeError as exc:
                    if eof:
                        raise fail(str(exc)) from None
                fill()
            pos = end
            yield value
            expecting = "separator"
        elif expecting == "separator":
            if char not in ",]":
                raise fail(f"{char!r} where a comma or ] was expected")
            pos += 1
            expecting = "item" if char == "," else "end"
        else:
            raise fail("text after the closing ]")


def _read_json(ctx: RestoreContext, artifact: dict[str, Any]) -> Any:
    """One small JSON document of the backup (a dashboard, the policy tree)."""
    return json.loads(b"".join(ctx.read(artifact)))


def _dashboard_files(ctx: RestoreContext, item: str) -> dict[str, dict[str, Any]]:
    return {
        path: artifact
        for path, artifact in ctx.artifacts(item).items()
        if path.startswith("dashboards/") and path.endswith(".json")
    }


def _version_text(health: dict[str, Any]) -> str:
    """The version /api/health gives, or why there is none (``[auth.anonymous] hide_version`` omits it)."""
    return str(health.get("version") or "(version hidden: [auth.anonymous] hide_version)")


def _library_panel_uids(dashboard: dict[str, Any]) -> set[str]:
    """The uids of the library panels a classic dashboard uses (panels nested in rows included)."""
    found: set[str] = set()
    stack = list(dashboard.get("panels") or [])
    while stack:
        panel = stack.pop()
        if not isinstance(panel, dict):
            continue
        library_panel = panel.get("libraryPanel")
        if isinstance(library_panel, dict) and library_panel.get("uid"):
            found.add(str(library_panel["uid"]))
        stack.extend(panel.get("panels") or [])
    return found


def _without(value: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    dropped = set(keys)
    return {key: item for key, item in value.items() if key not in dropped}


def _strip_provenance(tree: Any) -> Any:
    """A notification policy tree without the ``provenance`` of its routes."""
    if isinstance(tree, dict):
        return {key: _strip_provenance(value) for key, value in tree.items() if key != "provenance"}
    if isinstance(tree, list):
        return [_strip_provenance(value) for value in tree]
    return tree


#: provenances a rule group replace without provenance may overwrite (CanUpdateProvenanceInRuleGroup)
RULE_PROVENANCES_REPLACEABLE = ("", "api", "converted_prometheus")


@dataclass(frozen=True)
class _Provenanced:
    """One alerting object of the target that has a provenance."""

    kind: str  # template, mute_timing, contact_point, policies, rule
    key: str  # what the restore addresses it by: name, uid, "" for the policy tree
    name: str
    provenance: str
    label: str
    detail: str = ""
    group: str = ""  # "<folder uid>/<group>" of a rule

    def describe(self) -> str:
        what = f"{self.label} {self.name!r}" if self.name else self.label
        return f"{what} ({self.detail + ', ' if self.detail else ''}provenance {self.provenance})"


def _is_resource(answer: dict[str, Any]) -> bool:
    """Whether a saved dashboard is a Kubernetes-style resource (schema v2, Grafana 12), not ``{dashboard, meta}``."""
    return str(answer.get("apiVersion") or "").startswith("dashboard.grafana.app/")


def _dashboard_uid(answer: dict[str, Any]) -> str | None:
    return (answer.get("metadata") or {}).get("name") if _is_resource(answer) else answer["dashboard"].get("uid")


def _dashboard_title(answer: dict[str, Any]) -> str | None:
    return (answer.get("spec") or {}).get("title") if _is_resource(answer) else answer["dashboard"].get("title")


def _dashboard_folder(answer: dict[str, Any]) -> str | None:
    """The uid of the dashboard's folder: the ``grafana.app/folder`` annotation of a resource
    (pkg/apimachinery/utils/meta.go), ``meta.folderUid`` of the classic answer."""
    if _is_resource(answer):
        return ((answer.get("metadata") or {}).get("annotations") or {}).get(FOLDER_ANNOTATION) or None
    return (answer.get("meta") or {}).get("folderUid") or None


def _put_resource(hook: GrafanaHook, answer: dict[str, Any]) -> None:
    """Create a dashboard resource, or replace it (with the target's ``resourceVersion``): the same name, spec
    and folder, through the API version it was read with."""
    metadata = answer.get("metadata") or {}
    name, namespace = metadata["name"], metadata.get("namespace") or "default"
    base = f"/apis/{answer['apiVersion']}/namespaces/{quote(namespace, safe='')}/dashboards"
    folder = _dashboard_folder(answer)
    body = {"apiVersion": answer["apiVersion"], "kind": "Dashboard",
            "metadata": {"name": name, **({"annotations": {FOLDER_ANNOTATION: folder}} if folder else {})},
            "spec": answer.get("spec") or {}}
    current = hook.get_optional(f"{base}/{quote(name, safe='')}")
    if current is None:
        hook.send("POST", base, body, expected=(200, 201, 202))
    else:
        body["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
        hook.send("PUT", f"{base}/{quote(name, safe='')}", body, expected=(200, 201))


def _comparable_dashboard(answer: dict[str, Any]) -> dict[str, Any]:
    """A dashboard's model without ``id`` and ``version``, and the meta fields a restore keeps (for a resource:
    its API version, spec and folder)."""
    if _is_resource(answer):
        return {"apiVersion": answer.get("apiVersion"), "spec": answer.get("spec"),
                "folder": _dashboard_folder(answer)}
    meta = answer.get("meta") or {}
    return {
        "dashboard": _without(answer.get("dashboard") or {}, ("id", "version")),
        "meta": {key: meta.get(key) for key in DASHBOARD_META_COMPARED},
    }


def _comparable_library_panel(element: dict[str, Any]) -> dict[str, Any]:
    compared = _without(element, ("id", "orgId", "folderId", "version"))
    compared["meta"] = _without(element.get("meta") or {}, ("created", "updated", "createdBy", "updatedBy"))
    return compared


def _comparable_contact_point(point: dict[str, Any], backup: dict[str, Any]) -> dict[str, Any]:
    """A contact point without provenance nor the secure settings the backup shows as ``[REDACTED]``."""
    hidden = {key for key, value in (backup.get("settings") or {}).items() if value == REDACTED}
    return {
        "name": point.get("name"),
        "type": point.get("type"),
        "disableResolveMessage": bool(point.get("disableResolveMessage")),
        "settings": _without(point.get("settings") or {}, hidden),
    }


def _difference(actual: Any, expected: Any, path: str = "") -> str | None:
    """Where the target's value (``actual``) first differs from the backup's (``expected``); None if equal."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        for key in sorted(set(actual) | set(expected), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                return f"{where} is in the backup ({_short(expected[key])}) but not on the target"
            if key not in expected:
                return f"{where} is on the target ({_short(actual[key])}) but not in the backup"
            found = _difference(actual[key], expected[key], where)
            if found:
                return found
        return None
    if isinstance(actual, list) and isinstance(expected, list):
        if len(actual) != len(expected):
            return f"{path or 'the list'}: {len(actual)} items on the target, {len(expected)} in the backup"
        for index, (got, wanted) in enumerate(zip(actual, expected, strict=True)):
            found = _difference(got, wanted, f"{path}[{index}]")
            if found:
                return found
        return None
    if actual != expected:
        return f"{path or 'the value'}: {_short(actual)} on the target, {_short(expected)} in the backup"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _capped(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS differences of one kind, and how many more there are."""
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more"]


def _extras(label: str, names: set[Any]) -> list[str]:
    if not names:
        return []
    shown = sorted(map(str, names))
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    return [f"{label}: {', '.join(shown[:10])}{more}"]


def _readonly_hint(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    if "readonly" in text or "unable to open" in text:
        return (
            " (a database in WAL mode needs its -shm file: mount Grafana's data dir read-write on the "
            "worker, "
            "or switch Grafana to the rollback journal)"
        )
    return ""
