"""Checks of the Grafana HTTP API emulator (``include/devstack/grafana_emulator.py``).

Each test talks HTTP to a real emulator running in a thread on a free port, with its ``grafana.db`` in a
temporary directory, and asserts on the data it reads back (and, for the backup test, on a copy of the SQLite
file made with SQLite's online backup API while the server keeps writing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from devstack.grafana_emulator import make_server

TOKEN = "test-grafana-token"


@dataclass
class Grafana:
    base: str
    data_dir: Path
    session: requests.Session

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=10, **kwargs)

    def ok(self, method: str, path: str, expected: int = 200, **kwargs):
        """The JSON answer of a call that must answer ``expected``."""
        response = self.call(method, path, **kwargs)
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def fails(self, method: str, path: str, expected: int, **kwargs) -> dict:
        """The JSON error body of a call that must answer ``expected``."""
        response = self.call(method, path, **kwargs)
        assert response.status_code == expected, (method, path, response.status_code, response.text)
        return response.json() if response.content else {}

    def db(self) -> sqlite3.Connection:
        """A read-only connection to the server's grafana.db."""
        return sqlite3.connect(f"file:{self.data_dir / 'grafana.db'}?mode=ro", uri=True, timeout=10)


@contextmanager
def running(data_dir: Path, **kwargs) -> Iterator[Grafana]:
    server = make_server("127.0.0.1", 0, data_dir, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {kwargs.get('token') or TOKEN}"
    try:
        yield Grafana(f"http://127.0.0.1:{server.server_address[1]}", Path(data_dir), session)
    finally:
        session.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def grafana(tmp_path_factory) -> Iterator[Grafana]:
    with running(tmp_path_factory.mktemp("grafana"), token=TOKEN) as server:
        yield server


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def folder(grafana: Grafana, title: str, parent: str | None = None) -> dict:
    body = {"uid": uid("f"), "title": title}
    if parent:
        body["parentUid"] = parent
    return grafana.ok("POST", "/api/folders", json=body)


def dashboard_model(title: str, **extra) -> dict:
    return {
        "uid": uid("d"),
        "title": title,
        "tags": ["ragvault", title.split()[0].lower()],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "panels": [
            {
                "id": 1,
                "type": "timeseries",
                "title": "Requests",
                "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
                "targets": [{"refId": "A", "expr": "sum(rate(http_requests_total[5m]))"}],
            }
        ],
        **extra,
    }


def save(grafana: Grafana, model: dict, folder_uid: str | None = None, expected: int = 200, **extra) -> dict:
    body = {"dashboard": model, "overwrite": False, "message": "saved by test", **extra}
    if folder_uid:
        body["folderUid"] = folder_uid
    return grafana.ok("POST", "/api/dashboards/db", expected, json=body)


def without(mapping: dict, *keys: str) -> dict:
    return {key: value for key, value in mapping.items() if key not in keys}


ALERT_DATA = [
    {
        "refId": "A",
        "queryType": "",
        "relativeTimeRange": {"from": 600, "to": 0},
        "datasourceUid": "prom-uid",
        "model": {"refId": "A", "expr": "up == 0", "intervalMs": 1000, "maxDataPoints": 43200},
    },
    {
        "refId": "B",
        "queryType": "",
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": "__expr__",
        "model": {
            "refId": "B",
            "type": "threshold",
            "expression": "A",
            "conditions": [{"evaluator": {"params": [0], "type": "gt"}}],
        },
    },
]


def alert_rule(folder_uid: str, group: str, title: str, **extra) -> dict:
    return {
        "uid": uid("r"),
        "folderUID": folder_uid,
        "ruleGroup": group,
        "title": title,
        "condition": "B",
        "data": ALERT_DATA,
        "noDataState": "NoData",
        "execErrState": "Error",
        "for": "5m",
        "annotations": {"summary": f"{title} fired"},
        "labels": {"team": "rag"},
        "isPaused": False,
        **extra,
    }


# -- basics --------------------------------------------------------------------------------------------------


def test_health_answers_without_credentials(grafana):
    response = requests.get(grafana.base + "/api/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["version"].startswith("11.")


def test_requests_without_valid_credentials_get_401(grafana):
    url = grafana.base + "/api/search"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["message"]
    bad_token = requests.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert bad_token.status_code == 401 and "message" in bad_token.json()
    assert requests.get(url, auth=("admin", "wrong"), timeout=10).status_code == 401
    admin = requests.get(grafana.base + "/api/org", auth=("admin", "admin"), timeout=10)
    assert admin.status_code == 200
    assert admin.json()["id"] == 1 and admin.json()["name"] == "Main Org."
    assert grafana.ok("GET", "/api/org")["name"] == "Main Org."


def test_grafana_ini_is_written_beside_the_database(grafana):
    ini = (grafana.data_dir / "grafana.ini").read_text()
    assert f"data = {grafana.data_dir.resolve()}" in ini
    assert "[database]" in ini and "type = sqlite3" in ini
    with grafana.db() as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "dashboard",
        "dashboard_version",
        "folder",
        "data_source",
        "library_element",
        "alert_rule",
        "alert_configuration",
        "provenance_type",
        "org",
        "user",
        "api_key",
    } <= tables


def test_unknown_paths_and_methods(grafana):
    assert grafana.fails("GET", "/api/no-such-thing", 404)["message"]
    assert grafana.fails("PATCH", "/api/folders", 405)["message"]


# -- folders -------------------------------------------------------------------------------------------------


def test_nested_folders_round_trip(grafana):
    top = folder(grafana, uid("Top"))
    child = folder(grafana, "Child", parent=top["uid"])
    leaf = folder(grafana, "Leaf", parent=child["uid"])
    assert top["version"] == 1 and "parentUid" not in top
    assert child["parentUid"] == top["uid"]

    got = grafana.ok("GET", f"/api/folders/{leaf['uid']}")
    assert got["title"] == "Leaf" and got["id"] == leaf["id"]
    assert got["url"] == f"/dashboards/f/{leaf['uid']}/leaf"
    assert got["parentUid"] == child["uid"]
    assert [parent["uid"] for parent in got["parents"]] == [top["uid"], child["uid"]]

    roots = grafana.ok("GET", "/api/folders")
    assert {"id": top["id"], "uid": top["uid"], "title": top["title"]} in roots
    assert all("parentUid" not in hit for hit in roots)
    assert grafana.ok("GET", "/api/folders", params={"parentUid": top["uid"]}) == [
        {"id": child["id"], "uid": child["uid"], "title": "Child", "parentUid": top["uid"]}
    ]

    renamed = grafana.ok("PUT", f"/api/folders/{child['uid']}", json={"title": "Child renamed", "version": 1})
    assert renamed["title"] == "Child renamed" and renamed["version"] == 2
    stale = grafana.fails("PUT", f"/api/folders/{child['uid']}", 412, json={"title": "Again", "version": 1})
    assert stale == {"message": "the folder has been changed by someone else", "status": "version-mismatch"}
    assert (
        grafana.ok("PUT", f"/api/folders/{child['uid']}", json={"title": "Forced", "overwrite": True})[
            "version"
        ]
        == 3
    )

    assert grafana.fails("POST", "/api/folders", 409, json={"uid": top["uid"], "title": "Other"})["message"]
    assert grafana.fails("POST", "/api/folders", 409, json={"title": "Leaf", "parentUid": child["uid"]})[
        "message"
    ]
    assert grafana.fails("POST", "/api/folders", 400, json={"title": ""})["message"]
    assert grafana.fails("POST", "/api/folders", 404, json={"title": "X", "parentUid": "missing-parent"})[
        "message"
    ]
    assert grafana.fails("GET", "/api/folders/no-such-folder", 404) == {"message": "folder not found"}

    moved = grafana.ok("POST", f"/api/folders/{leaf['uid']}/move", json={"parentUid": top["uid"]})
    assert moved["parentUid"] == top["uid"] and [p["uid"] for p in moved["parents"]] == [top["uid"]]
    assert grafana.fails("POST", f"/api/folders/{top['uid']}/move", 400, json={"parentUid": leaf["uid"]})[
        "message"
    ]


def test_deleting_a_folder_deletes_its_subfolders_and_content(grafana):
    top = folder(grafana, uid("Doomed"))
    child = folder(grafana, "Doomed child", parent=top["uid"])
    saved = save(grafana, dashboard_model("Doomed dashboard"), child["uid"])
    panel = grafana.ok(
        "POST",
        "/api/library-elements",
        json={
            "uid": uid("lp"),
            "folderUid": child["uid"],
            "name": "Doomed panel",
            "kind": 1,
            "model": {"type": "stat", "title": "Doomed panel"},
        },
    )["result"]
    rule = grafana.ok(
        "POST",
        "/api/v1/provisioning/alert-rules",
        201,
        json=alert_rule(child["uid"], "doomed", "Doomed rule"),
    )

    refused = grafana.fails("DELETE", f"/api/folders/{top['uid']}", 400)
    assert "alert rules" in refused["message"]
    deleted = grafana.ok("DELETE", f"/api/folders/{top['uid']}", params={"forceDeleteRules": "true"})
    assert deleted["message"] == "Folder deleted" and deleted["id"] == top["id"]

    grafana.fails("GET", f"/api/folders/{child['uid']}", 404)
    grafana.fails("GET", f"/api/dashboards/uid/{saved['uid']}", 404)
    grafana.fails("GET", f"/api/library-elements/{panel['uid']}", 404)
    grafana.fails("GET", f"/api/v1/provisioning/alert-rules/{rule['uid']}", 404)
    assert grafana.ok("GET", "/api/search", params={"query": "Doomed"}) == []


# -- dashboards and search -----------------------------------------------------------------------------------


def test_dashboards_in_nested_folders_are_found_by_search_and_read_back(grafana):
    top = folder(grafana, uid("Platform"))
    child = folder(grafana, "Observability", parent=top["uid"])
    models = {
        "root": dashboard_model(uid("Root overview")),
        "top": dashboard_model(uid("Platform overview")),
        "child": dashboard_model(
            uid("Latency SLO"), templating={"list": [{"name": "env", "type": "custom"}]}
        ),
    }
    saved = {
        "root": save(grafana, models["root"]),
        "top": save(grafana, models["top"], top["uid"]),
        "child": save(grafana, models["child"], child["uid"]),
    }
    for key, answer in saved.items():
        assert answer["status"] == "success" and answer["version"] == 1
        assert answer["uid"] == models[key]["uid"]
        assert answer["url"] == f"/d/{answer['uid']}/{answer['slug']}"

    hits = grafana.ok("GET", "/api/search", params={"type": "dash-db", "folderUIDs": child["uid"]})
    assert [(hit["uid"], hit["type"], hit["folderUid"], hit["folderTitle"]) for hit in hits] == [
        (models["child"]["uid"], "dash-db", child["uid"], "Observability")
    ]
    assert hits[0]["title"] == models["child"]["title"] and hits[0]["tags"] == models["child"]["tags"]
    assert hits[0]["url"] == saved["child"]["url"]

    in_top = grafana.ok("GET", "/api/search", params={"folderUIDs": top["uid"]})
    assert {(hit["uid"], hit["type"]) for hit in in_top} == {
        (child["uid"], "dash-folder"),
        (models["top"]["uid"], "dash-db"),
    }
    folders = grafana.ok("GET", "/api/search", params={"type": "dash-folder", "query": "observability"})
    assert any(hit["uid"] == child["uid"] and hit["folderUid"] == top["uid"] for hit in folders)
    by_title = grafana.ok("GET", "/api/search", params={"query": models["root"]["title"][-10:]})
    assert [hit["uid"] for hit in by_title] == [models["root"]["uid"]]
    assert "folderUid" not in by_title[0]
    by_tag = grafana.ok("GET", "/api/search", params={"tag": "latency", "type": "dash-db"})
    assert models["child"]["uid"] in [hit["uid"] for hit in by_tag]

    for key, expected_folder in (("root", None), ("top", top), ("child", child)):
        got = grafana.ok("GET", f"/api/dashboards/uid/{models[key]['uid']}")
        assert without(got["dashboard"], "id", "version") == models[key]
        assert got["dashboard"]["id"] == saved[key]["id"] and got["dashboard"]["version"] == 1
        meta = got["meta"]
        assert (
            meta["url"] == saved[key]["url"] and meta["slug"] == saved[key]["slug"] and meta["version"] == 1
        )
        assert meta["folderUid"] == (expected_folder["uid"] if expected_folder else "")
        assert meta["folderTitle"] == (expected_folder["title"] if expected_folder else "General")
        assert meta["created"].endswith("Z") and meta["updated"].endswith("Z")


def test_search_is_paginated_like_grafana(grafana):
    home = folder(grafana, uid("Paged"))
    uids = {save(grafana, dashboard_model(f"Paged {index}"), home["uid"])["uid"] for index in range(5)}
    pages = [
        grafana.ok("GET", "/api/search", params={"folderUIDs": home["uid"], "limit": 2, "page": page})
        for page in (1, 2, 3, 4)
    ]
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    assert {hit["uid"] for page in pages for hit in page} == uids
    assert [hit["title"] for page in pages for hit in page] == [f"Paged {index}" for index in range(5)]


def test_search_refuses_a_limit_above_5000(grafana):
    """Grafana's pkg/api/search.go (HTTPServer.Search): ``limit > 5000`` is answered 422, not capped."""
    refused = grafana.fails("GET", "/api/search", 422, params={"limit": 5001})
    assert refused == {"message": "Limit is above maximum allowed (5000), use page parameter to access hits "
                                  "beyond limit"}
    assert isinstance(grafana.ok("GET", "/api/search", params={"limit": 5000}), list)


def test_dashboard_versions_and_conflicts(grafana):
    home = folder(grafana, uid("Versions"))
    model = dashboard_model("Versioned")
    first = save(grafana, model, home["uid"])
    second = save(grafana, dict(model, version=1, refresh="1m"), home["uid"], message="second save")
    assert (second["id"], second["version"]) == (first["id"], 2)

    stale = grafana.fails(
        "POST",
        "/api/dashboards/db",
        412,
        json={"dashboard": dict(model, version=1), "folderUid": home["uid"], "overwrite": False},
    )
    assert stale == {
        "message": "The dashboard has been changed by someone else",
        "status": "version-mismatch",
    }
    same_name = grafana.fails(
        "POST",
        "/api/dashboards/db",
        412,
        json={"dashboard": dashboard_model("Versioned"), "folderUid": home["uid"]},
    )
    assert same_name["status"] == "name-exists"
    forced = save(grafana, dict(model, refresh="5m"), home["uid"], overwrite=True)
    assert forced["version"] == 3
    got = grafana.ok("GET", f"/api/dashboards/uid/{model['uid']}")
    assert got["dashboard"]["refresh"] == "5m" and got["meta"]["version"] == 3

    with grafana.db() as db:
        versions = db.execute(
            "SELECT version, parent_version, message, data FROM dashboard_version "
            "WHERE dashboard_id = ? ORDER BY version",
            (first["id"],),
        ).fetchall()
    assert [(v, p) for v, p, _, _ in versions] == [(1, 0), (2, 1), (3, 2)]
    assert versions[1][2] == "second save"
    assert json.loads(versions[1][3])["refresh"] == "1m"

    assert (
        grafana.fails("POST", "/api/dashboards/db", 400, json={"dashboard": {"title": ""}})["status"]
        == "empty-name"
    )
    assert grafana.fails(
        "POST",
        "/api/dashboards/db",
        404,
        json={"dashboard": dashboard_model("Lost"), "folderUid": "no-such-folder"},
    )["message"]
    assert (
        grafana.fails("GET", "/api/dashboards/uid/no-such-dashboard", 404)["message"] == "Dashboard not found"
    )

    deleted = grafana.ok("DELETE", f"/api/dashboards/uid/{model['uid']}")
    assert deleted == {"title": "Versioned", "message": "Dashboard Versioned deleted", "id": first["id"]}
    grafana.fails("GET", f"/api/dashboards/uid/{model['uid']}", 404)
    grafana.fails("DELETE", f"/api/dashboards/uid/{model['uid']}", 404)
    with grafana.db() as db:
        assert db.execute(
            "SELECT COUNT(*) FROM dashboard_version WHERE dashboard_id = ?", (first["id"],)
        ).fetchone() == (0,)


# -- data sources --------------------------------------------------------------------------------------------


def test_datasources_round_trip_and_never_return_secrets(grafana):
    name = uid("prometheus")
    created = grafana.ok(
        "POST",
        "/api/datasources",
        json={
            "uid": uid("ds"),
            "name": name,
            "type": "prometheus",
            "access": "proxy",
            "url": "http://127.0.0.1:19090",
            "basicAuth": True,
            "basicAuthUser": "scraper",
            "jsonData": {"httpMethod": "POST", "timeInterval": "15s"},
            "secureJsonData": {"basicAuthPassword": "s3cret-pass", "httpHeaderValue1": "Bearer abc"},
        },
    )
    assert created["message"] == "Datasource added" and created["name"] == name
    source = created["datasource"]
    assert source["secureJsonFields"] == {"basicAuthPassword": True, "httpHeaderValue1": True}
    assert source["jsonData"] == {"httpMethod": "POST", "timeInterval": "15s"} and source["version"] == 1

    got = grafana.ok("GET", f"/api/datasources/uid/{source['uid']}")
    assert got == source
    assert grafana.ok("GET", f"/api/datasources/name/{name}")["id"] == source["id"]
    listed = [item for item in grafana.ok("GET", "/api/datasources") if item["uid"] == source["uid"]]
    assert (
        len(listed) == 1 and listed[0]["url"] == "http://127.0.0.1:19090" and listed[0]["basicAuth"] is True
    )
    for text in (json.dumps(created), json.dumps(got), json.dumps(listed)):
        assert "s3cret-pass" not in text and "Bearer abc" not in text

    with grafana.db() as db:
        stored = json.loads(
            db.execute("SELECT secure_json_data FROM data_source WHERE uid = ?", (source["uid"],)).fetchone()[
                0
            ]
        )
    assert {key: base64.b64decode(value).decode() for key, value in stored.items()} == {
        "basicAuthPassword": "s3cret-pass",
        "httpHeaderValue1": "Bearer abc",
    }

    updated = grafana.ok(
        "PUT",
        f"/api/datasources/uid/{source['uid']}",
        json={
            "name": name,
            "type": "prometheus",
            "access": "proxy",
            "url": "http://127.0.0.1:29090",
            "version": 1,
            "jsonData": {"httpMethod": "GET"},
            "secureJsonData": {"httpHeaderValue2": "x-extra"},
        },
    )
    assert updated["message"] == "Datasource updated"
    assert updated["datasource"]["version"] == 2 and updated["datasource"]["url"] == "http://127.0.0.1:29090"
    assert updated["datasource"]["secureJsonFields"] == {
        "basicAuthPassword": True,
        "httpHeaderValue1": True,
        "httpHeaderValue2": True,
    }

    assert grafana.fails(
        "POST", "/api/datasources", 409, json={"name": name, "type": "loki", "url": "http://x"}
    )["message"]
    assert grafana.fails("GET", "/api/datasources/uid/no-such-ds", 404) == {
        "message": "Data source not found"
    }
    deleted = grafana.ok("DELETE", f"/api/datasources/uid/{source['uid']}")
    assert deleted == {"message": "Data source deleted", "id": source["id"]}
    grafana.fails("GET", f"/api/datasources/uid/{source['uid']}", 404)


# -- library panels ------------------------------------------------------------------------------------------


def test_library_panels_round_trip(grafana):
    home = folder(grafana, uid("Library"))
    model = {
        "type": "stat",
        "title": "Ingestion rate",
        "description": "docs per minute",
        "targets": [{"refId": "A", "expr": "rate(ingested_total[1m])"}],
    }
    created = grafana.ok(
        "POST",
        "/api/library-elements",
        json={
            "uid": uid("lp"),
            "folderUid": home["uid"],
            "name": "Ingestion rate",
            "model": model,
            "kind": 1,
        },
    )["result"]
    assert created["version"] == 1 and created["kind"] == 1 and created["type"] == "stat"
    assert created["folderUid"] == home["uid"] and created["meta"]["folderName"] == home["title"]
    assert created["model"] == model and created["description"] == "docs per minute"

    got = grafana.ok("GET", f"/api/library-elements/{created['uid']}")["result"]
    assert got == created
    second = grafana.ok(
        "POST",
        "/api/library-elements",
        json={
            "uid": uid("lp"),
            "folderUid": home["uid"],
            "name": "Queue depth",
            "kind": 1,
            "model": {"type": "gauge", "title": "Queue depth"},
        },
    )["result"]
    page = grafana.ok(
        "GET", "/api/library-elements", params={"folderFilterUIDs": home["uid"], "perPage": 1, "page": 2}
    )["result"]
    assert (page["totalCount"], page["page"], page["perPage"]) == (2, 2, 1)
    assert [element["uid"] for element in page["elements"]] == [second["uid"]]

    patched = grafana.ok(
        "PATCH",
        f"/api/library-elements/{created['uid']}",
        json={
            "name": "Ingestion rate (docs/min)",
            "kind": 1,
            "version": 1,
            "folderUid": home["uid"],
            "model": dict(model, type="timeseries"),
        },
    )["result"]
    assert (
        patched["version"] == 2
        and patched["name"] == "Ingestion rate (docs/min)"
        and patched["type"] == "timeseries"
    )
    stale = grafana.fails(
        "PATCH",
        f"/api/library-elements/{created['uid']}",
        412,
        json={"name": "Late", "kind": 1, "version": 1},
    )
    assert stale["message"] == "the library element has been changed by someone else"
    assert grafana.fails(
        "POST",
        "/api/library-elements",
        400,
        json={"uid": created["uid"], "name": "Copy", "kind": 1, "model": {}},
    )["message"]

    user = save(
        grafana,
        dashboard_model(
            "Uses library panel",
            panels=[
                {
                    "id": 1,
                    "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
                    "libraryPanel": {"uid": created["uid"], "name": "Ingestion rate"},
                }
            ],
        ),
    )
    connected = grafana.ok("GET", f"/api/library-elements/{created['uid']}")["result"]
    assert connected["meta"]["connectedDashboards"] == 1
    assert grafana.fails("DELETE", f"/api/library-elements/{created['uid']}", 403)["message"]
    grafana.ok("DELETE", f"/api/dashboards/uid/{user['uid']}")
    assert grafana.ok("DELETE", f"/api/library-elements/{created['uid']}") == {
        "message": "Library element deleted",
        "id": created["id"],
    }
    assert grafana.fails("GET", f"/api/library-elements/{created['uid']}", 404)["message"]


# -- alerting provisioning -----------------------------------------------------------------------------------


def as_grafana_stores(rule: dict) -> dict:
    """A rule body as Grafana answers it back: every query model with intervalMs and maxDataPoints
    (AlertQuery.PreSave), keep_firing_for, notification_settings and record always present."""
    data = [
        dict(query, model={"intervalMs": 1000, "maxDataPoints": 43200, **query["model"]}) for query in rule["data"]
    ]
    return {"keep_firing_for": "0s", "notification_settings": None, "record": None, **rule, "data": data}


def test_alert_rules_and_rule_groups_round_trip(grafana):
    home = folder(grafana, uid("Alerts"))
    group = uid("group")
    body = alert_rule(home["uid"], group, "Qdrant down")
    created = grafana.ok("POST", "/api/v1/provisioning/alert-rules", 201, json=body)
    assert created["provenance"] == "api" and created["orgID"] == 1 and created["id"] > 0
    got = grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{body['uid']}")
    assert without(got, "id", "orgID", "updated", "provenance") == as_grafana_stores(body)
    assert any(rule["uid"] == body["uid"] for rule in grafana.ok("GET", "/api/v1/provisioning/alert-rules"))

    updated = grafana.ok(
        "PUT",
        f"/api/v1/provisioning/alert-rules/{body['uid']}",
        json=dict(body, title="Qdrant unreachable", **{"for": "10m"}),
    )
    assert updated["title"] == "Qdrant unreachable" and updated["for"] == "10m"

    path = f"/api/v1/provisioning/folder/{home['uid']}/rule-groups/{group}"
    read = grafana.ok("GET", path)
    assert (read["title"], read["folderUid"], read["interval"]) == (group, home["uid"], 60)
    assert [rule["uid"] for rule in read["rules"]] == [body["uid"]]

    extra = alert_rule(home["uid"], group, "Mongo down")
    replaced = grafana.ok(
        "PUT", path, json={"interval": 120, "rules": [dict(body, title="Qdrant down"), extra]}
    )
    assert replaced["title"] == group and replaced["folderUid"] == home["uid"]
    read = grafana.ok("GET", path)
    assert read["interval"] == 120
    assert [(rule["uid"], rule["title"]) for rule in read["rules"]] == [
        (body["uid"], "Qdrant down"),
        (extra["uid"], "Mongo down"),
    ]
    assert grafana.fails("PUT", path, 400, json={"interval": 15, "rules": [body]})["message"]

    assert grafana.fails(
        "POST",
        "/api/v1/provisioning/alert-rules",
        400,
        json=dict(alert_rule(home["uid"], group, "Bad"), condition="Z"),
    )["message"]
    assert grafana.fails(
        "POST", "/api/v1/provisioning/alert-rules", 400, json=alert_rule("no-such-folder", group, "Homeless")
    )["message"]

    grafana.ok("DELETE", f"/api/v1/provisioning/alert-rules/{extra['uid']}", 204)
    assert grafana.call("GET", f"/api/v1/provisioning/alert-rules/{extra['uid']}").status_code == 404
    grafana.ok("DELETE", path, 204)
    assert grafana.fails("GET", path, 404)["message"]


def test_replacing_a_rule_group_may_reset_api_provenance_but_never_file(grafana):
    """Grafana's validation.CanUpdateProvenanceInRuleGroup (pkg/services/ngalert/provisioning/validation) and
    AlertRuleService.persistDelta / DeleteAlertRule (pkg/services/ngalert/provisioning/alert_rules.go): a group
    replaced with X-Disable-Provenance takes rules of provenance ``api`` back to none (what a restore sends over
    Terraform's rules), a ``file`` rule is refused with 409 alerting.provenanceMismatch, and a single rule is
    deleted only with its own provenance."""
    import sqlite3

    home = folder(grafana, uid("Provenanced"))
    group = "provenanced"
    path = f"/api/v1/provisioning/folder/{home['uid']}/rule-groups/{group}"
    body = alert_rule(home["uid"], group, "Terraform rule")
    assert grafana.ok("POST", "/api/v1/provisioning/alert-rules", 201, json=body)["provenance"] == "api"
    headers = {"X-Disable-Provenance": "true"}
    grafana.ok("PUT", path, json={"interval": 60, "rules": [dict(body, title="Restored")]}, headers=headers)
    restored = grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{body['uid']}")
    assert restored["title"] == "Restored" and restored.get("provenance", "") == ""

    grafana.ok("PUT", f"/api/v1/provisioning/alert-rules/{body['uid']}", json=body)  # none -> api
    refused = grafana.fails("DELETE", f"/api/v1/provisioning/alert-rules/{body['uid']}", 409, headers=headers)
    assert refused == {"message": "cannot delete with provided provenance '', needs 'api'",
                       "messageId": "alerting.provenanceMismatch", "statusCode": 409}

    with sqlite3.connect(grafana.data_dir / "grafana.db", timeout=10) as db:  # as file provisioning leaves it
        db.execute("UPDATE provenance_type SET provenance = 'file' WHERE record_key = ?", (body["uid"],))
    refused = grafana.fails("PUT", path, 409, json={"interval": 60, "rules": [body]}, headers=headers)
    assert refused["message"] == "cannot update with provided provenance '', needs 'file'"
    refused = grafana.fails("PUT", path, 409, json={"interval": 60, "rules": []}, headers=headers)
    assert refused["message"] == "cannot delete with provided provenance '', needs 'file'"
    assert grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{body['uid']}")["title"] == "Terraform rule"


def test_disabled_provenance_keeps_restored_rules_editable(grafana):
    """pkg/services/ngalert/provisioning/alert_rules.go (UpdateAlertRule): a rule without provenance can be taken
    by anyone; once api, a change to none is refused with a plain error that RoutePutAlertRule answers 500."""
    home = folder(grafana, uid("Restored"))
    body = alert_rule(home["uid"], "restored", "Restored rule")
    headers = {"X-Disable-Provenance": "true"}
    created = grafana.ok("POST", "/api/v1/provisioning/alert-rules", 201, json=body, headers=headers)
    assert created.get("provenance", "") == ""
    with grafana.db() as db:
        assert db.execute(
            "SELECT COUNT(*) FROM provenance_type WHERE record_key = ?", (body["uid"],)
        ).fetchone() == (0,)
    edited = grafana.ok(
        "PUT",
        f"/api/v1/provisioning/alert-rules/{body['uid']}",
        json=dict(body, title="Edited"),
        headers=headers,
    )
    assert edited["title"] == "Edited" and edited.get("provenance", "") == ""

    taken = grafana.ok("PUT", f"/api/v1/provisioning/alert-rules/{body['uid']}", json=body)
    assert taken["provenance"] == "api"
    refused = grafana.fails(
        "PUT", f"/api/v1/provisioning/alert-rules/{body['uid']}", 500, json=body, headers=headers
    )
    assert refused == {"message": "cannot change provenance from 'api' to ''"}
    grafana.ok("DELETE", f"/api/v1/provisioning/alert-rules/{body['uid']}", 204)


def test_contact_points_round_trip_with_redacted_secrets(grafana):
    name = uid("slack-oncall")
    secret_url = "https://hooks.slack.example/services/T000/B000/XXXX"
    body = {
        "uid": uid("cp"),
        "name": name,
        "type": "slack",
        "disableResolveMessage": False,
        "settings": {"url": secret_url, "recipient": "#alerts", "title": "{{ .CommonLabels.alertname }}"},
    }
    created = grafana.ok("POST", "/api/v1/provisioning/contact-points", 202, json=body)
    assert created["uid"] == body["uid"] and created["provenance"] == "api"

    listed = grafana.ok("GET", "/api/v1/provisioning/contact-points", params={"name": name})
    assert listed == [
        {
            "uid": body["uid"],
            "name": name,
            "type": "slack",
            "disableResolveMessage": False,
            "settings": dict(body["settings"], url="[REDACTED]"),
            "provenance": "api",
        }
    ]
    exported = grafana.ok(
        "GET",
        "/api/v1/provisioning/contact-points/export",
        params={"name": name, "decrypt": "true", "format": "json"},
    )
    assert exported["contactPoints"][0]["receivers"][0]["settings"]["url"] == secret_url

    changed = dict(body, settings={"url": "[REDACTED]", "recipient": "#oncall"})
    assert grafana.ok("PUT", f"/api/v1/provisioning/contact-points/{body['uid']}", 202, json=changed) == {
        "message": "contactpoint updated"
    }
    exported = grafana.ok(
        "GET", "/api/v1/provisioning/contact-points/export", params={"name": name, "decrypt": "true"}
    )
    assert exported["contactPoints"][0]["receivers"][0]["settings"] == {
        "url": secret_url,
        "recipient": "#oncall",
    }
    with grafana.db() as db:
        stored = db.execute("SELECT alertmanager_configuration FROM alert_configuration").fetchone()[0]
    assert name in stored and secret_url not in stored  # the secret sits in secureSettings, encoded

    assert grafana.fails("PUT", "/api/v1/provisioning/contact-points/no-such-cp", 404, json=changed)[
        "message"
    ]
    assert grafana.ok("DELETE", f"/api/v1/provisioning/contact-points/{body['uid']}", 202) == {
        "message": "contactpoint deleted"
    }
    assert grafana.ok("GET", "/api/v1/provisioning/contact-points", params={"name": name}) == []

    restored = dict(body, uid=uid("cp"))
    grafana.ok(
        "POST",
        "/api/v1/provisioning/contact-points",
        202,
        json=restored,
        headers={"X-Disable-Provenance": "true"},
    )
    again = grafana.ok("GET", "/api/v1/provisioning/contact-points", params={"name": name})
    assert [item.get("provenance", "") for item in again] == [""]
    grafana.ok("DELETE", f"/api/v1/provisioning/contact-points/{restored['uid']}", 202)


def test_policies_mute_timings_and_templates_round_trip(grafana):
    receiver = uid("webhook")
    point = {
        "uid": uid("cp"),
        "name": receiver,
        "type": "webhook",
        "settings": {"url": "http://127.0.0.1:9/hook", "httpMethod": "POST", "password": "hook-pass"},
    }
    grafana.ok("POST", "/api/v1/provisioning/contact-points", 202, json=point)

    timing_name = uid("weekend freeze")
    timing = {
        "name": timing_name,
        "time_intervals": [
            {"weekdays": ["saturday", "sunday"], "times": [{"start_time": "00:00", "end_time": "23:59"}]}
        ],
    }
    created = grafana.ok("POST", "/api/v1/provisioning/mute-timings", 201, json=timing)
    assert without(created, "version", "provenance") == timing and created["provenance"] == "api"
    assert grafana.fails("POST", "/api/v1/provisioning/mute-timings", 400, json=timing)["messageId"].endswith(
        "nameExists"
    )
    got = grafana.ok("GET", f"/api/v1/provisioning/mute-timings/{timing_name}")
    assert got == created
    assert any(item["name"] == timing_name for item in grafana.ok("GET", "/api/v1/provisioning/mute-timings"))
    changed = dict(timing, time_intervals=[{"weekdays": ["sunday"]}], version=created["version"])
    updated = grafana.ok("PUT", f"/api/v1/provisioning/mute-timings/{timing_name}", 202, json=changed)
    assert (
        updated["time_intervals"] == [{"weekdays": ["sunday"]}] and updated["version"] != created["version"]
    )
    assert (
        grafana.fails(
            "PUT",
            f"/api/v1/provisioning/mute-timings/{timing_name}",
            409,
            json=dict(changed, version=created["version"]),
        )["messageId"]
        == "alerting.notifications.conflict"
    )

    tree = {
        "receiver": receiver,
        "group_by": ["grafana_folder", "alertname"],
        "group_wait": "30s",
        "routes": [
            {
                "receiver": receiver,
                "object_matchers": [["team", "=", "rag"]],
                "mute_time_intervals": [timing_name],
                "continue": False,
            }
        ],
    }
    assert grafana.ok("PUT", "/api/v1/provisioning/policies", 202, json=tree) == {
        "message": "policies updated"
    }
    stored = {**tree, "routes": [without(tree["routes"][0], "continue")], "provenance": "api"}
    assert grafana.ok("GET", "/api/v1/provisioning/policies") == stored  # continue is omitempty
    assert grafana.fails("PUT", "/api/v1/provisioning/policies", 400, json=dict(tree, receiver="nobody"))[
        "message"
    ]
    assert grafana.fails("DELETE", f"/api/v1/provisioning/contact-points/{point['uid']}", 409)[
        "messageId"
    ].endswith("referenced")
    assert grafana.fails("DELETE", f"/api/v1/provisioning/mute-timings/{timing_name}", 409)["message"]

    template = '{{ define "ragvault.title" }}[{{ .Status }}] {{ .CommonLabels.alertname }}{{ end }}'
    put = grafana.ok("PUT", "/api/v1/provisioning/templates/ragvault.title", 202, json={"template": template})
    assert (put["name"], put["template"], put["provenance"]) == ("ragvault.title", template, "api")
    wrapped = grafana.ok(
        "PUT",
        "/api/v1/provisioning/templates/plain",
        202,
        json={"template": "Alert: {{ .Status }}"},
        headers={"X-Disable-Provenance": "true"},
    )
    assert wrapped["template"] == '{{ define "plain" }}\n  Alert: {{ .Status }}\n{{ end }}'
    assert "provenance" not in wrapped
    assert grafana.ok("GET", "/api/v1/provisioning/templates/ragvault.title") == put
    assert {item["name"] for item in grafana.ok("GET", "/api/v1/provisioning/templates")} >= {
        "ragvault.title",
        "plain",
    }
    assert grafana.fails(
        "PUT",
        "/api/v1/provisioning/templates/ragvault.title",
        403,
        json={"template": template},
        headers={"X-Disable-Provenance": "true"},
    )["message"]

    reset = grafana.ok("DELETE", "/api/v1/provisioning/policies", 202)
    assert reset["receiver"] == "grafana-default-email"
    assert grafana.ok("GET", "/api/v1/provisioning/policies") == reset
    grafana.ok("DELETE", f"/api/v1/provisioning/mute-timings/{timing_name}", 204)
    assert grafana.fails("GET", f"/api/v1/provisioning/mute-timings/{timing_name}", 404)[
        "messageId"
    ].endswith("notFound")
    for name in ("ragvault.title", "plain"):
        grafana.ok("DELETE", f"/api/v1/provisioning/templates/{name}", 204)
        assert grafana.fails("GET", f"/api/v1/provisioning/templates/{name}", 404)["statusCode"] == 404
    grafana.ok("DELETE", f"/api/v1/provisioning/contact-points/{point['uid']}", 202)


# -- the database file ---------------------------------------------------------------------------------------


def test_online_backup_of_grafana_db_holds_every_dashboard(grafana, tmp_path):
    home = folder(grafana, uid("Backup"))
    for index in range(3):
        save(grafana, dashboard_model(f"Backup source {index}"), home["uid"])
    source_name = uid("loki")
    grafana.ok(
        "POST", "/api/datasources", json={"name": source_name, "type": "loki", "url": "http://127.0.0.1:3100"}
    )

    writes_failed: list[str] = []
    writing, stop = threading.Event(), threading.Event()

    def keep_writing() -> None:  # the server keeps saving while the backup runs
        for index in range(2000):
            if stop.is_set():
                return
            response = grafana.call(
                "POST",
                "/api/dashboards/db",
                json={
                    "dashboard": dashboard_model(f"Written during backup {index}"),
                    "folderUid": home["uid"],
                },
            )
            if response.status_code != 200:
                writes_failed.append(response.text)
            writing.set()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    copy_path = tmp_path / "grafana-backup.db"
    try:
        assert writing.wait(timeout=10)
        source = sqlite3.connect(grafana.data_dir / "grafana.db", timeout=10)
        target = sqlite3.connect(copy_path)
        with target:
            source.backup(target)
        source.close()
        target.close()
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not writes_failed and not writer.is_alive()

    copy = sqlite3.connect(copy_path)
    stored = {
        uid_: json.loads(data)
        for uid_, data in copy.execute("SELECT uid, data FROM dashboard WHERE is_folder = 0")
    }
    folders_in_copy = {row[0] for row in copy.execute("SELECT uid FROM folder")}
    sources_in_copy = {row[0] for row in copy.execute("SELECT name FROM data_source")}
    integrity = copy.execute("PRAGMA integrity_check").fetchone()[0]
    copy.close()
    assert integrity == "ok"

    # every dashboard saved before the backup began is in the copy, byte-for-byte what the API serves
    hits = [
        hit
        for hit in grafana.ok("GET", "/api/search", params={"type": "dash-db", "limit": 5000})
        if not hit["title"].startswith("Written during backup")
    ]
    assert len(hits) >= 3
    for hit in hits:
        assert stored[hit["uid"]] == grafana.ok("GET", f"/api/dashboards/uid/{hit['uid']}")["dashboard"]
    assert home["uid"] in folders_in_copy and source_name in sources_in_copy
    assert any(data["title"].startswith("Written during backup") for data in stored.values())


def test_state_and_tokens_survive_a_restart(tmp_path):
    with running(tmp_path, token=TOKEN, admin_password="first-password") as first:
        saved = save(first, dashboard_model("Survivor"))
        account = first.ok("POST", "/api/serviceaccounts", 201, json={"name": "backup bot", "role": "Admin"})
        minted = first.ok("POST", f"/api/serviceaccounts/{account['id']}/tokens", json={"name": "backup"})
        assert minted["key"].startswith("glsa_")

    # the admin password is only set on the first start, like Grafana's admin_password
    with running(tmp_path, token=TOKEN, admin_password="ignored-now") as second:
        assert second.ok("GET", f"/api/dashboards/uid/{saved['uid']}")["dashboard"]["title"] == "Survivor"
        minted_session = requests.get(
            second.base + "/api/search", timeout=10, headers={"Authorization": f"Bearer {minted['key']}"}
        )
        assert minted_session.status_code == 200 and saved["uid"] in [
            hit["uid"] for hit in minted_session.json()
        ]
        assert (
            requests.get(second.base + "/api/org", auth=("admin", "first-password"), timeout=10).status_code
            == 200
        )
        assert (
            requests.get(second.base + "/api/org", auth=("admin", "ignored-now"), timeout=10).status_code
            == 401
        )
        with second.db() as db:
            keys = {row[0] for row in db.execute("SELECT `key` FROM api_key")}
        assert minted["key"] not in keys and TOKEN not in keys  # only hashes are stored
        assert hashlib.sha256(TOKEN.encode()).hexdigest() in keys


# -- Grafana 12: schema-v2 dashboards through the Kubernetes-style API ------------------------------------------

V2 = "/apis/dashboard.grafana.app/v2beta1/namespaces/default/dashboards"


def v2_dashboard(name: str, title: str, folder_uid: str | None = None, **spec) -> dict:
    return {
        "apiVersion": "dashboard.grafana.app/v2beta1",
        "kind": "Dashboard",
        "metadata": {"name": name, **({"annotations": {"grafana.app/folder": folder_uid}} if folder_uid else {})},
        "spec": {"title": title, "elements": {}, "layout": {"kind": "GridLayout", "spec": {"items": []}}, **spec},
    }


def test_a_v2_dashboard_is_refused_by_the_legacy_api_and_served_by_the_new_one(grafana):
    """pkg/api/dashboard.go (GetDashboard): a dashboard stored in schema v2 answers 406 on /api/dashboards/uid
    and names its /apis URL; pkg/apimachinery/utils/meta.go: its folder is the grafana.app/folder annotation;
    org 1's namespace is "default"."""
    home = folder(grafana, uid("V2"))
    name = uid("v2")
    created = grafana.ok("POST", V2, 201, json=v2_dashboard(name, "RAG answers (v2)", home["uid"]))
    assert created["metadata"]["name"] == name and created["metadata"]["namespace"] == "default"
    assert created["metadata"]["annotations"]["grafana.app/folder"] == home["uid"]
    assert created["spec"]["title"] == "RAG answers (v2)" and created["metadata"]["resourceVersion"]

    refused = grafana.fails("GET", f"/api/dashboards/uid/{name}", 406)
    assert refused == {"message": f"dashboard api version not supported, use {V2}/{name} instead"}
    # still a dashboard for search, in its folder
    [hit] = [h for h in grafana.ok("GET", "/api/search", params={"type": "dash-db"}) if h["uid"] == name]
    assert (hit["title"], hit["folderUid"]) == ("RAG answers (v2)", home["uid"])

    got = grafana.ok("GET", f"{V2}/{name}")
    assert got == created
    changed = dict(created, spec=dict(created["spec"], title="RAG answers (v2, edited)"))
    updated = grafana.ok("PUT", f"{V2}/{name}", json=changed)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    stale = grafana.fails("PUT", f"{V2}/{name}", 409, json=changed)  # the resourceVersion of before
    assert stale["reason"] == "Conflict" and "the object has been modified" in stale["message"]
    assert grafana.fails("POST", V2, 409, json=v2_dashboard(name, "again"))["reason"] == "AlreadyExists"
    assert grafana.fails("GET", f"{V2}/{uid('nope')}", 404)["reason"] == "NotFound"
    assert grafana.fails("GET", f"/apis/dashboard.grafana.app/v2beta1/namespaces/org-2/dashboards/{name}",
                         404)["reason"] == "NotFound"
    grafana.ok("DELETE", f"/api/dashboards/uid/{name}")


# -- Grafana's own shapes and checks (each test names the upstream source it reproduces) ---------------------


def test_alert_queries_are_stored_the_way_alert_query_presave_leaves_them(grafana):
    """pkg/services/ngalert/models/alert_query.go (AlertQuery.PreSave, InitDefaults): every query model gains
    intervalMs 1000 and maxDataPoints 43200 when they are missing or zero, queryType is read from the model,
    unknown query keys are dropped (the AlertQuery struct), and a data source query needs from > to
    (errors.go: 400 alerting.alert-rule.invalidRelativeTime)."""
    home = folder(grafana, uid("PreSave"))
    query = {
        "refId": "A",
        "relativeTimeRange": {"from": 300, "to": 0},
        "datasourceUid": "prom-uid",
        "model": {"refId": "A", "expr": "up", "intervalMs": 0, "queryType": "range"},
        "unknownKey": "dropped",
    }
    expression = {"refId": "B", "datasourceUid": "__expr__", "model": {"type": "math", "expression": "$A > 0"}}
    body = alert_rule(home["uid"], uid("g"), "Defaults", data=[query, expression])
    created = grafana.ok("POST", "/api/v1/provisioning/alert-rules", 201, json=body)
    stored = grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{created['uid']}")["data"]
    assert stored == [
        {
            "refId": "A",
            "queryType": "range",
            "relativeTimeRange": {"from": 300, "to": 0},
            "datasourceUid": "prom-uid",
            "model": {"refId": "A", "expr": "up", "intervalMs": 1000, "queryType": "range", "maxDataPoints": 43200},
        },
        {
            "refId": "B",
            "queryType": "",
            "relativeTimeRange": {"from": 0, "to": 0},  # an expression needs no time range
            "datasourceUid": "__expr__",
            "model": {"type": "math", "expression": "$A > 0", "intervalMs": 1000, "maxDataPoints": 43200},
        },
    ]
    # stable: what Grafana answered, sent back, is stored unchanged
    grafana.ok("PUT", f"/api/v1/provisioning/alert-rules/{created['uid']}", json=without(created, "id"))
    assert grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{created['uid']}")["data"] == stored

    flat = dict(query, relativeTimeRange={"from": 0, "to": 0})
    refused = grafana.fails(
        "POST", "/api/v1/provisioning/alert-rules", 400,
        json=alert_rule(home["uid"], uid("g"), "No range", data=[flat, expression]),
    )
    assert refused["messageId"] == "alerting.alert-rule.invalidRelativeTime"
    assert refused["message"] == "Invalid alert rule query A: invalid relative time range [From: 0s, To: 0s]"


def test_provisioned_alert_rules_always_carry_keep_firing_for_record_and_notification_settings(grafana):
    """pkg/services/ngalert/api/tooling/definitions/provisioning_alert_rules.go (ProvisionedAlertRule):
    keep_firing_for (model.Duration), notification_settings and record have no omitempty: a rule without them
    answers "0s", null and null; annotations, labels, provenance and missingSeriesEvalsToResolve are
    omitempty."""
    home = folder(grafana, uid("Shape"))
    bare = without(alert_rule(home["uid"], uid("g"), "Bare"), "annotations", "labels")
    created = grafana.ok("POST", "/api/v1/provisioning/alert-rules", 201, json=bare)
    got = grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{created['uid']}")
    assert (got["keep_firing_for"], got["notification_settings"], got["record"]) == ("0s", None, None)
    assert not {"annotations", "labels", "missingSeriesEvalsToResolve"} & set(got)
    settings = {"receiver": "grafana-default-email", "group_by": ["alertname"]}
    grafana.ok(
        "PUT", f"/api/v1/provisioning/alert-rules/{created['uid']}",
        json=dict(without(got, "id"), keep_firing_for="90s", notification_settings=settings),
    )
    changed = grafana.ok("GET", f"/api/v1/provisioning/alert-rules/{created['uid']}")
    assert changed["keep_firing_for"] == "1m30s" and changed["notification_settings"] == settings


def test_policies_are_written_back_as_grafanas_route_struct(grafana):
    """grafana/alerting definition/compat.go (Route): continue is omitempty (false disappears), durations are
    Prometheus model.Duration (24h prints 1d, 168h 1w, 90m 1h30m), empty lists are left out, object_matchers
    lose surrounding quotes and are sorted by name, value, type (ObjectMatchers.UnmarshalJSON)."""
    tree = {
        "receiver": "grafana-default-email",
        "group_by": ["alertname"],
        "group_wait": "30s",
        "repeat_interval": "24h",
        "routes": [
            {
                "receiver": "grafana-default-email",
                "object_matchers": [["team", "=", '"rag"'], ["env", "!=", "dev"]],
                "continue": False,
                "group_interval": "90m",
                "mute_time_intervals": [],
            },
            {"receiver": "grafana-default-email", "continue": True, "repeat_interval": "168h"},
        ],
    }
    grafana.ok("PUT", "/api/v1/provisioning/policies", 202, json=tree)
    assert without(grafana.ok("GET", "/api/v1/provisioning/policies"), "provenance") == {
        "receiver": "grafana-default-email",
        "group_by": ["alertname"],
        "routes": [
            {
                "receiver": "grafana-default-email",
                "object_matchers": [["env", "!=", "dev"], ["team", "=", "rag"]],
                "group_interval": "1h30m",
            },
            {"receiver": "grafana-default-email", "continue": True, "repeat_interval": "1w"},
        ],
        "group_wait": "30s",
        "repeat_interval": "1d",
    }
    bad = dict(tree, routes=[{"receiver": "grafana-default-email", "object_matchers": [["a", "~", "b"]]}])
    assert "unsupported match type" in grafana.fails("PUT", "/api/v1/provisioning/policies", 400, json=bad)["message"]
    grafana.ok("DELETE", "/api/v1/provisioning/policies", 202)


def test_library_element_models_gain_type_and_description(grafana):
    """pkg/services/libraryelements/database.go (syncFieldsWithModel): the model's type and description win;
    when absent, the element's (empty on create, the stored ones on PATCH) are written into the model."""
    created = grafana.ok(
        "POST", "/api/library-elements",
        json={"uid": uid("lp"), "name": "Bare", "kind": 1, "model": {"title": "Bare", "gridPos": {"h": 4}}},
    )["result"]
    assert created["model"] == {"title": "Bare", "gridPos": {"h": 4}, "type": "", "description": ""}
    assert (created["type"], created["description"]) == ("", "")
    typed = grafana.ok(
        "PATCH", f"/api/library-elements/{created['uid']}",
        json={"version": 1, "kind": 1, "model": {"title": "Bare", "type": "stat", "description": "d"}},
    )["result"]
    assert (typed["type"], typed["description"]) == ("stat", "d")
    kept = grafana.ok(
        "PATCH", f"/api/library-elements/{created['uid']}",
        json={"version": 2, "kind": 1, "model": {"title": "Bare again"}},
    )["result"]
    assert kept["model"] == {"title": "Bare again", "type": "stat", "description": "d"}


def test_a_dashboard_using_a_missing_library_panel_is_saved_and_answered_500(grafana):
    """pkg/api/dashboard.go (postDashboard): the dashboard is saved first, then ConnectLibraryPanelsForDashboard
    fails on a uid that is no library element (pkg/services/libraryelements/database.go,
    connectElementsToDashboardID) and the answer is 500 "Error while connecting library panels"."""
    model = dashboard_model("Dangling")
    model["panels"].append({"id": 2, "gridPos": {"h": 8, "w": 12, "x": 12, "y": 0},
                            "libraryPanel": {"uid": "no-such-library-panel", "name": "Gone"}})
    answer = grafana.fails("POST", "/api/dashboards/db", 500, json={"dashboard": model})
    assert answer == {"message": "Error while connecting library panels"}
    saved = grafana.ok("GET", f"/api/dashboards/uid/{model['uid']}")["dashboard"]
    assert saved["panels"][1]["libraryPanel"]["uid"] == "no-such-library-panel"


def test_contact_points_are_validated_like_grafana(grafana):
    """pkg/services/ngalert/provisioning/contactpoints.go (CreateContactPoint, UpdateContactPoint:
    ValidateContactPoint before anything is stored, ErrValidation answered 400) with grafana/alerting's
    receivers: a Slack point needs a url, or a token and a recipient (receivers/slack/config.go); a webhook a
    url (receivers/webhook/config.go); an email point addresses (receivers/email/config.go); an unknown type is
    refused. A "[REDACTED]" text is a value like any other on create; on update it stands for the stored
    secret."""
    path = "/api/v1/provisioning/contact-points"
    refused = {
        "slack": ({"recipient": "#rag"}, "token must be specified when using the Slack chat API"),
        "webhook": ({"httpMethod": "POST"}, "required field 'url' is not specified"),
        "email": ({"singleEmail": True}, "could not find addresses in settings"),
        "carrier-pigeon": ({"loft": "roof"}, "notifier carrier-pigeon is not supported"),
    }
    for kind, (settings, reason) in refused.items():
        message = grafana.fails("POST", path, 400, json={"name": uid("cp"), "type": kind, "settings": settings})[
            "message"
        ]
        assert message.startswith("invalid object specification: failed to validate integration") and reason in message
    assert grafana.fails(
        "POST", path, 400, json={"name": uid("cp"), "type": "slack", "settings": {}}
    )["message"].endswith("recipient must be specified when using the Slack chat API")
    slack = grafana.ok(
        "POST", path, 202, json={"name": uid("cp"), "type": "slack", "settings": {"url": "[REDACTED]"}}
    )
    point = {"uid": slack["uid"], "name": slack["name"], "type": "slack",
             "settings": {"url": "https://hooks.slack.example/T0/B0"}}
    grafana.ok("PUT", f"{path}/{slack['uid']}", 202, json=point)
    redacted = dict(point, settings={"url": "[REDACTED]", "title": "kept secret"})
    grafana.ok("PUT", f"{path}/{slack['uid']}", 202, json=redacted)  # the stored url stands in
    grafana.fails("PUT", f"{path}/{slack['uid']}", 400, json=dict(point, settings={"recipient": "#rag"}))
    grafana.ok("DELETE", f"{path}/{slack['uid']}", 202)


def test_data_source_and_folder_records_have_grafanas_fields(grafana):
    """pkg/api/dtos/datasource.go (DataSource): no password or basicAuthPassword field, typeLogoUrl from the
    plugin; pkg/api/dtos/folder.go (Folder): canCreate, and no description."""
    name = uid("Prom")
    created = grafana.ok("POST", "/api/datasources", json={
        "uid": uid("ds"), "name": name, "type": "prometheus", "url": "http://127.0.0.1:9", "access": "proxy",
    })["datasource"]
    got = grafana.ok("GET", f"/api/datasources/uid/{created['uid']}")
    assert not {"password", "basicAuthPassword"} & set(got)
    assert got["typeLogoUrl"] == "public/app/plugins/datasource/prometheus/img/prometheus_logo.svg"
    listed = next(item for item in grafana.ok("GET", "/api/datasources") if item["uid"] == created["uid"])
    assert (listed["typeName"], listed["typeLogoUrl"]) == ("Prometheus", got["typeLogoUrl"])
    made = grafana.ok("POST", "/api/folders", json={"uid": uid("f"), "title": uid("Described"),
                                                     "description": "not shown"})
    shown = grafana.ok("GET", f"/api/folders/{made['uid']}")
    assert shown["canCreate"] is True and "description" not in shown and "description" not in made


def test_health_hides_the_version_when_grafana_is_told_to(tmp_path):
    """pkg/api/http_server.go (apiHealthHandler, healthResponse): database first, then version and commit,
    both left out when [auth.anonymous] hide_version is set."""
    with running(tmp_path / "hidden", token=TOKEN, hide_version=True) as hidden:
        assert requests.get(hidden.base + "/api/health", timeout=10).json() == {"database": "ok"}
        assert "hide_version = true" in (hidden.data_dir / "grafana.ini").read_text()
    with running(tmp_path / "shown", token=TOKEN) as shown:
        answer = requests.get(shown.base + "/api/health", timeout=10).json()
        assert list(answer) == ["database", "version", "commit"]
