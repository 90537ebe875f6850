"""Grafana: the post-restore verification through the HTTP API, object by object."""

from __future__ import annotations

from urllib.parse import quote

from ragvault.components.base import RestoreContext
from ragvault.components.grafana.common import (
    DATASOURCE_FIELDS_IGNORED,
    MAX_FOLDER_DEPTH,
    PROVISIONING,
    RULE_FIELDS_IGNORED,
    _capped,
    _comparable_contact_point,
    _comparable_dashboard,
    _comparable_library_panel,
    _dashboard_files,
    _dashboard_title,
    _dashboard_uid,
    _difference,
    _extras,
    _read_json,
    _strip_provenance,
    _without,
)
from ragvault.hooks.grafana import GrafanaError, GrafanaHook


class GrafanaVerify:
    """The target compared with the backup through the HTTP API (a part of :class:`GrafanaComponent`)."""

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
