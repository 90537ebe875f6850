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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.components.grafana.api import GrafanaApi
from ragvault.components.grafana.common import (
    DATABASE_KINDS,
    MAX_FOLDER_DEPTH,
    PROVISIONING,
    RULE_PROVENANCES_REPLACEABLE,
    _holdings,
    _read_json,
    _version_text,
)
from ragvault.components.grafana.files import GrafanaFiles
from ragvault.components.grafana.verify import GrafanaVerify
from ragvault.hooks.grafana import GrafanaError, GrafanaHook
from ragvault.repository import Artifact, ItemResult, utcnow_iso


class GrafanaComponent(GrafanaFiles, GrafanaApi, GrafanaVerify, Component):
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
