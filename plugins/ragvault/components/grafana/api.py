"""Grafana's HTTP API: the export of dashboards, folders, data sources, library panels and alerting, and their
restore through the same API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from ragvault.components.base import BackupContext, ComponentError, RestoreContext
from ragvault.components.grafana.common import (
    DATASOURCE_FIELDS,
    MAX_FOLDER_DEPTH,
    PROGRESS_EVERY,
    PROVISIONING,
    REDACTED,
    RULE_FIELDS_DROPPED,
    _dashboard_files,
    _dashboard_folder,
    _dashboard_uid,
    _dumps,
    _FolderTree,
    _is_resource,
    _json_array,
    _json_items,
    _library_panel_uids,
    _Provenanced,
    _put_resource,
    _read_json,
    _segment,
    _strip_provenance,
    _version_text,
)
from ragvault.hooks.grafana import GrafanaError, GrafanaHook
from ragvault.repository import Artifact


class GrafanaApi:
    """The HTTP API export and its restore (a part of :class:`GrafanaComponent`)."""

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
