"""Grafana: what the component's parts share: limits, field lists, and helpers (folders, JSON, comparisons)."""

from __future__ import annotations

import codecs
import json
import os
import re
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ragvault.components.base import BackupContext, ComponentError, RestoreContext
from ragvault.hooks.grafana import GrafanaHook
from ragvault.repository import Artifact

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
