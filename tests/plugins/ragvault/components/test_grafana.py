"""Grafana backup against private Grafana emulators (``include/devstack/grafana_emulator.py``).

Each emulator runs in a thread on a free port with its ``grafana.db`` and ``grafana.ini`` in a temporary
directory, seeded by ``include/devstack/seed_grafana.py``; the component reaches it through an Airflow
connection defined for the test. Every assertion compares what was uploaded to MinIO, read back, with what
the emulator's API or its database holds.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
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
from devstack.seed_grafana import FOLDERS, seed_grafana
from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.grafana import GrafanaComponent
from ragvault.config import load_settings
from ragvault.crypto import SCHEME, Cipher
from ragvault.repository import Artifact

TOKEN = f"test-grafana-token-{uuid.uuid4().hex[:8]}"
ADMIN_PASSWORD = f"admin-{uuid.uuid4().hex[:8]}"
KEY = os.urandom(32)
PROVISIONING = "/api/v1/provisioning"


@dataclass
class Grafana:
    url: str
    port: int
    data_dir: Path
    session: requests.Session

    def get(self, path: str, **params):
        response = self.session.get(self.url + path, params=params or None, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def post(self, path: str, body: dict) -> dict:
        response = self.session.post(self.url + path, json=body, timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def dashboard_uids(self) -> set[str]:
        return {hit["uid"] for hit in self.get("/api/search", type="dash-db", limit=5000)}


@contextmanager
def emulator(data_dir: Path) -> Iterator[Grafana]:
    server = make_server("127.0.0.1", 0, data_dir, token=TOKEN, admin_password=ADMIN_PASSWORD)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    port = server.server_address[1]
    try:
        yield Grafana(f"http://127.0.0.1:{port}", port, Path(data_dir), session)
    finally:
        session.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def extra_library_panels(grafana: Grafana) -> None:
    """Two more library panels, so that a page size of 2 needs several pages."""
    for name in ("Cache hit ratio", "Embedding queue depth"):
        grafana.post(
            "/api/library-elements",
            {
                "uid": f"lp-{uuid.uuid4().hex[:8]}",
                "name": name,
                "kind": 1,
                "folderUid": "rv-infra",
                "model": {"type": "stat", "title": name},
            },
        )


@pytest.fixture(scope="module")
def grafana(tmp_path_factory) -> Iterator[Grafana]:
    """One seeded emulator for the module's read-only tests."""
    with emulator(tmp_path_factory.mktemp("grafana")) as server:
        first = seed_grafana(server.url, TOKEN)
        assert seed_grafana(server.url, TOKEN) == first  # seeding twice updates, it does not duplicate
        extra_library_panels(server)
        yield server


@pytest.fixture
def connect(monkeypatch):
    """``connect(port, **fields) -> conn_id``: an http connection to a Grafana on 127.0.0.1:port."""

    def make(port: int, **fields) -> str:
        conn_id = f"grafana_test_{uuid.uuid4().hex[:8]}"
        conn = {"conn_type": "http", "schema": "http", "host": "127.0.0.1", "port": port, **fields}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return make


@pytest.fixture
def make_settings(make_config, monkeypatch):
    """``make_settings(conn_id, **component_config)``: settings on that connection, with a backup key."""
    key_conn = f"ragvault_key_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{key_conn.upper()}", json.dumps({"conn_type": "generic", "password": KEY.hex()})
    )

    def make(conn_id: str, encryption: str = key_conn, **component):
        config = {"page_size": 2, "retries": 0, **component}
        return load_settings(
            make_config(
                connections={"grafana": conn_id, "encryption": encryption}, components={"grafana": config}
            )
        )

    return make


def by_path(result) -> dict[str, Artifact]:
    return {artifact.key.split("/", 2)[2]: artifact for artifact in result.artifacts}


def read(repo, artifact: Artifact, cipher: Cipher | None = None) -> bytes:
    return b"".join(repo.iter_artifact(artifact, cipher=cipher))


def read_json(repo, artifact: Artifact):
    return json.loads(read(repo, artifact))


def expected_path(grafana: Grafana, dashboard_uid: str) -> str:
    """``dashboards/<folder uids from the top>/<uid>.json``, from the API's own ``parents`` list."""
    meta = grafana.get(f"/api/dashboards/uid/{dashboard_uid}")["meta"]
    chain = []
    if meta["folderUid"]:
        folder = grafana.get(f"/api/folders/{meta['folderUid']}")
        chain = [parent["uid"] for parent in folder.get("parents", [])] + [folder["uid"]]
    return "/".join(["dashboards", *chain, f"{dashboard_uid}.json"])


def open_db_copy(
    repo, artifact: Artifact, tmp_path: Path, cipher: Cipher | None = None
) -> sqlite3.Connection:
    copy = tmp_path / f"restored-{uuid.uuid4().hex[:6]}.db"
    copy.write_bytes(read(repo, artifact, cipher))
    return sqlite3.connect(copy)


# -- the API export ------------------------------------------------------------------------------------------


def test_dashboards_folders_datasources_and_library_panels(
    grafana, connect, make_settings, context, repo, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    settings = make_settings(connect(grafana.port, password=TOKEN))
    result = GrafanaComponent(settings).backup(context("grafana"), None)
    files = by_path(result)

    # Every dashboard: one file, at its folder's uid path, holding exactly what the API answers.
    uids = grafana.dashboard_uids()
    assert len(uids) == 6 == result.counts["dashboards"]
    dashboard_files = {path for path in files if path.startswith("dashboards/")}
    assert dashboard_files == {expected_path(grafana, uid) for uid in uids}
    assert {
        "dashboards/rv-d-home.json",
        "dashboards/rv-platform/rv-d-platform-slo.json",
        "dashboards/rv-platform/rv-retrieval/rv-quality/rv-d-answer-quality.json",
        "dashboards/rv-infra/rv-storage/rv-d-storage.json",
    } <= dashboard_files
    for uid in uids:
        stored = read_json(repo, files[expected_path(grafana, uid)])
        assert stored == grafana.get(f"/api/dashboards/uid/{uid}")
        assert set(stored) == {"dashboard", "meta"} and stored["dashboard"]["uid"] == uid
    linked = read_json(repo, files["dashboards/rv-platform/rv-retrieval/rv-d-retrieval.json"])
    assert linked["dashboard"]["panels"][0]["libraryPanel"]["uid"] == "rv-lib-latency-p95"

    # Every folder, nested ones included, parents first, with the API's uid, title and parentUid.
    folders = read_json(repo, files["folders.json"])
    assert len(folders) == 5 == result.counts["folders"]
    for folder in folders:
        api = grafana.get(f"/api/folders/{folder['uid']}")
        assert (folder["uid"], folder["title"], folder["parentUid"]) == (
            api["uid"],
            api["title"],
            api.get("parentUid"),
        )
    order = [folder["uid"] for folder in folders]
    for folder in folders:
        if folder["parentUid"]:
            assert order.index(folder["parentUid"]) < order.index(folder["uid"])
    assert {(f["uid"], f["parentUid"]) for f in folders} >= {
        ("rv-quality", "rv-retrieval"),
        ("rv-retrieval", "rv-platform"),
        ("rv-platform", None),
    }

    # Data sources as the API shows them: which secure fields are set, never their values.
    raw = read(repo, files["datasources.json"])
    sources = json.loads(raw)
    assert len(sources) == 2 == result.counts["datasources"]
    for source in sources:
        assert source == grafana.get(f"/api/datasources/uid/{source['uid']}")
    prometheus = next(s for s in sources if s["uid"] == "rv-prometheus")
    assert prometheus["secureJsonFields"] == {"basicAuthPassword": True, "httpHeaderValue1": True}
    assert b"seeded-prometheus-password" not in raw and b"seeded-loki-token" not in raw
    assert any(
        "secure fields" in r.getMessage()
        and "not exportable through the API" in r.getMessage()
        and "grafana.db carries them, and it is not in this backup" in r.getMessage()
        for r in caplog.records
    )

    # Library panels, read across several pages (page_size 2), equal to the API's listing.
    panels = read_json(repo, files["library_panels.json"])
    listed = grafana.get("/api/library-elements", perPage=100)["result"]
    assert len(panels) == 3 == listed["totalCount"] == result.counts["library_panels"]
    assert sorted(panels, key=lambda p: p["uid"]) == sorted(listed["elements"], key=lambda p: p["uid"])
    assert next(p for p in panels if p["uid"] == "rv-lib-latency-p95")["meta"]["connectedDashboards"] == 1

    assert result.source_version == grafana.get("/api/health")["version"] == result.details["grafana_version"]
    assert result.details["database"] == "sqlite"
    assert "grafana.ini" not in files and "grafana.db.zst" not in files  # neither path configured


def test_alerting_files_equal_the_provisioning_api(grafana, connect, make_settings, context, repo):
    settings = make_settings(connect(grafana.port, password=TOKEN))
    result = GrafanaComponent(settings).backup(context("grafana"), None)
    files = by_path(result)

    rules = grafana.get(f"{PROVISIONING}/alert-rules")
    assert read_json(repo, files["alerting/alert_rules.json"]) == rules
    assert len(rules) == 3 == result.counts["alert_rules"]
    group = grafana.get(f"{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo")
    assert read_json(repo, files["alerting/rule_groups.json"]) == [group]
    assert group["interval"] == 60 and result.counts["rule_groups"] == 1

    points = grafana.get(f"{PROVISIONING}/contact-points")
    raw_points = read(repo, files["alerting/contact_points.json"])
    assert json.loads(raw_points) == points and result.counts["contact_points"] == len(points) == 2
    assert b"seeded-webhook-password" not in raw_points and b"[REDACTED]" in raw_points

    policies = read_json(repo, files["alerting/policies.json"])
    assert policies == grafana.get(f"{PROVISIONING}/policies")
    assert policies["receiver"] == "rag-oncall"
    assert policies["routes"][1]["mute_time_intervals"] == ["rag-maintenance-window"]

    timings = read_json(repo, files["alerting/mute_timings.json"])
    assert timings == grafana.get(f"{PROVISIONING}/mute-timings") and result.counts["mute_timings"] == 1
    templates = read_json(repo, files["alerting/templates.json"])
    assert templates == grafana.get(f"{PROVISIONING}/templates") and result.counts["templates"] == 1
    assert templates[0]["name"] == "rag.title"


# -- grafana.ini and grafana.db ------------------------------------------------------------------------------


def test_grafana_ini_and_db_are_copied_checked_and_encrypted(
    grafana, connect, make_settings, context, repo, s3_client, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    settings = make_settings(
        connect(grafana.port, password=TOKEN),
        config_path=str(grafana.data_dir),
        db_path=str(grafana.data_dir),
    )
    result = GrafanaComponent(settings).backup(context("grafana"), None)
    files = by_path(result)
    cipher = Cipher(KEY)

    ini = files["grafana.ini"]
    assert (ini.encryption, ini.key_fingerprint) == (SCHEME, cipher.key_fingerprint)
    stored = s3_client.get_object(Bucket=repo.bucket, Key=ini.key)["Body"].read()
    assert stored.startswith(b"RVAE1") and b"[database]" not in stored
    assert read(repo, ini, cipher) == (grafana.data_dir / "grafana.ini").read_bytes()

    database = files["grafana.db.zst"]
    assert database.compression == "zstd" and database.encryption == SCHEME
    with pytest.raises(Exception, match="encrypted"):
        read(repo, database)  # no key, no database
    copy = open_db_copy(repo, database, tmp_path, cipher)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored_uids = {row[0] for row in copy.execute("SELECT uid FROM dashboard WHERE is_folder = 0")}
        secrets = copy.execute(
            "SELECT secure_json_data FROM data_source WHERE uid = 'rv-prometheus'"
        ).fetchone()[0]
        folders = {row[0] for row in copy.execute("SELECT uid FROM folder")}
    finally:
        copy.close()
    assert stored_uids == grafana.dashboard_uids()
    assert set(json.loads(secrets)) == {"basicAuthPassword", "httpHeaderValue1"}  # the database carries them
    assert folders == {"rv-platform", "rv-retrieval", "rv-quality", "rv-infra", "rv-storage"}
    assert result.details["integrity_check"] == "ok"
    assert result.details["db_dashboards"] == len(stored_uids)
    assert sorted(result.details["encrypted"]) == ["grafana.db.zst", "grafana.ini"]
    assert any("grafana.db (in this backup) carries them" in r.getMessage() for r in caplog.records)


def test_db_copy_is_consistent_while_dashboards_are_being_saved(
    tmp_path, connect, make_settings, context, repo, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    with emulator(tmp_path / "busy") as busy:
        seed_grafana(busy.url, TOKEN)
        writes, failures = [0], []
        writing, stop = threading.Event(), threading.Event()

        def keep_saving() -> None:
            for index in range(5000):
                if stop.is_set():
                    return
                body = {
                    "dashboard": {
                        "uid": f"busy-{index}",
                        "title": f"Written during backup {index}",
                        "tags": ["busy"],
                        "panels": [{"id": 1, "type": "text", "title": "x" * 200}],
                    },
                    "folderUid": "rv-quality",
                }
                response = busy.session.post(busy.url + "/api/dashboards/db", json=body, timeout=60)
                if response.status_code != 200:
                    failures.append(response.text)
                writes[0] += 1
                writing.set()

        writer = threading.Thread(target=keep_saving)
        writer.start()
        try:
            assert writing.wait(timeout=10)
            before = busy.dashboard_uids()
            writes_at_start = writes[0]
            settings = make_settings(
                connect(busy.port, password=TOKEN), db_path=str(busy.data_dir / "grafana.db"), encrypt=False
            )
            result = GrafanaComponent(settings).backup(context("grafana"), None)
            writes_at_end = writes[0]
        finally:
            stop.set()
            writer.join(timeout=60)
        assert not writer.is_alive() and not failures
        assert writes_at_end > writes_at_start  # the server kept saving while the backup ran

        files = by_path(result)
        # pages of 2 shift while dashboards are created: still, none that existed before is missed
        exported = {
            path.rsplit("/", 1)[1].removesuffix(".json") for path in files if path.startswith("dashboards/")
        }
        assert before <= exported

        database = files["grafana.db.zst"]
        assert database.encryption is None
        copy = open_db_copy(repo, database, tmp_path)
        try:
            assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = dict(copy.execute("SELECT uid, version FROM dashboard WHERE is_folder = 0"))
            # One snapshot: every dashboard row has the version row and the tags that its save wrote in
            # the same transaction.
            orphans = copy.execute(
                "SELECT COUNT(*) FROM dashboard d WHERE d.is_folder = 0 AND NOT EXISTS (SELECT 1 FROM "
                "dashboard_version v WHERE v.dashboard_id = d.id AND v.version = d.version)"
            ).fetchone()[0]
            tagless = copy.execute(
                "SELECT COUNT(*) FROM dashboard d WHERE d.uid LIKE 'busy-%' AND NOT EXISTS (SELECT 1 FROM "
                "dashboard_tag t WHERE t.dashboard_id = d.id AND t.term = 'busy')"
            ).fetchone()[0]
        finally:
            copy.close()
        assert before <= set(stored)
        assert any(uid.startswith("busy-") for uid in stored)
        assert orphans == 0 and tagless == 0
        assert result.details["db_dashboards"] == len(stored)
        assert any("stored unencrypted" in r.getMessage() for r in caplog.records)


def test_external_database_is_not_applicable_and_basic_auth_works(
    grafana, connect, make_settings, context, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    conn_id = connect(grafana.port, login="admin", password=ADMIN_PASSWORD)
    # no key connection is needed: nothing holding secrets is written
    settings = make_settings(
        conn_id, encryption="no_such_key_connection", database="postgres", db_path=str(grafana.data_dir)
    )
    result = GrafanaComponent(settings).backup(context("grafana"), None)
    files = by_path(result)
    assert "grafana.db.zst" not in files and "grafana.ini" not in files
    assert result.details["database"] == "postgres"
    assert result.details["grafana_db"].startswith("not applicable")
    assert result.counts["dashboards"] == len(grafana.dashboard_uids())
    messages = [r.getMessage() for r in caplog.records]
    assert any("grafana.db is not applicable" in m for m in messages)
    assert any("grafana.ini skipped" in m for m in messages)


# -- failures ------------------------------------------------------------------------------------------------


def test_missing_backup_key_fails_naming_the_connection(grafana, connect, make_settings, context):
    settings = make_settings(
        connect(grafana.port, password=TOKEN),
        encryption="no_such_key_connection",
        config_path=str(grafana.data_dir),
    )
    with pytest.raises(ComponentError, match="no_such_key_connection") as failure:
        GrafanaComponent(settings).backup(context("grafana"), None)
    assert "encrypt: false" in str(failure.value)


def test_unreachable_grafana_names_the_endpoint_and_the_cause(connect, make_settings, context):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    component = GrafanaComponent(make_settings(connect(port, password=TOKEN)))
    assert component.endpoint() == f"http://127.0.0.1:{port}"
    with pytest.raises(ComponentError) as failure:
        component.backup(context("grafana"), None)
    message = str(failure.value)
    assert failure.value.component == "grafana"
    assert f"GET http://127.0.0.1:{port}/api/health" in message
    assert "Connection refused" in message and TOKEN not in message


def test_bad_token_names_the_401(grafana, connect, make_settings, context):
    conn_id = connect(grafana.port, password="not-the-token")
    with pytest.raises(ComponentError) as failure:
        GrafanaComponent(make_settings(conn_id)).backup(context("grafana"), None)
    message = str(failure.value)
    assert "HTTP 401" in message and "Invalid API key" in message
    assert f"{grafana.url}/api/folders" in message and conn_id in message
    assert "not-the-token" not in message


# -- restore -------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_target(monkeypatch, target_settings, tmp_path):
    """``with restore_target() as (target, restorer)``: a blank private emulator on grafana_target."""

    @contextmanager
    def start(name: str = "target") -> Iterator[tuple[Grafana, GrafanaComponent]]:
        with emulator(tmp_path / name) as target:
            conn = {"conn_type": "http", "host": "127.0.0.1", "port": target.port, "password": TOKEN}
            monkeypatch.setenv("AIRFLOW_CONN_GRAFANA_TARGET", json.dumps(conn))
            yield target, GrafanaComponent(target_settings("grafana", "grafana_target"))

    return start


def provisioning(grafana: Grafana, kind: str):
    return grafana.get(f"{PROVISIONING}/{kind}")


def without(value: dict, *keys: str) -> dict:
    return {key: item for key, item in value.items() if key not in keys}


def folder_tree(grafana: Grafana) -> set[tuple]:
    uids = [hit["uid"] for hit in grafana.get("/api/search", type="dash-folder", limit=5000)]
    folders = [grafana.get(f"/api/folders/{uid}") for uid in uids]
    return {(f["uid"], f["title"], f.get("parentUid")) for f in folders}


def comparable_dashboard(grafana: Grafana, uid: str) -> tuple[dict, str]:
    answer = grafana.get(f"/api/dashboards/uid/{uid}")
    return without(answer["dashboard"], "id", "version"), answer["meta"]["folderUid"]


def comparable_library_panels(grafana: Grafana) -> dict[str, dict]:
    elements = grafana.get("/api/library-elements", perPage=100)["result"]["elements"]
    return {
        e["uid"]: {
            **without(e, "id", "folderId", "version", "meta"),
            "connected": e["meta"]["connectedDashboards"],
        }
        for e in elements
    }


def public_settings(point: dict) -> dict:
    """A contact point without provenance and without the secrets the API shows as [REDACTED]."""
    settings = {k: v for k, v in point["settings"].items() if v != "[REDACTED]"}
    return {**without(point, "provenance"), "settings": settings}


def test_restore_onto_a_blank_grafana_gives_the_source_state(
    grafana, connect, make_settings, backed_up, restore_context, restore_target, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    manifest = backed_up(GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN))))
    with restore_target() as (target, restorer):
        ctx = restore_context(manifest, "grafana", restorer.settings)
        assert restorer.restore_items(ctx.section) == ["all"]
        blank = restorer.inspect_target(ctx, "all")
        assert blank["holds_data"] is False
        assert "holds no dashboards, folders, data sources or alert rules" in blank["what"]

        counts = restorer.restore(ctx, "all")
        assert counts == {
            "folders": 5,
            "datasources": 2,
            "library_panels": 3,
            "dashboards": 6,
            "templates": 1,
            "mute_timings": 1,
            "contact_points": 2,
            "rule_groups": 1,
            "alert_rules": 3,
            "policies": 1,
            "secrets_to_reenter": 3,  # two data sources, one webhook password
        }

        # Every dashboard: the same JSON once id and version are set aside, in the same folder uid.
        uids = grafana.dashboard_uids()
        assert target.dashboard_uids() == uids and len(uids) == 6
        for uid in uids:
            assert comparable_dashboard(target, uid) == comparable_dashboard(grafana, uid), uid
        # The same nested folders: uid, title, parentUid.
        assert folder_tree(target) == folder_tree(grafana) == set(FOLDERS)
        # Data sources, secure fields aside: those cannot come from the API export.
        for uid in ("rv-prometheus", "rv-loki"):
            restored = target.get(f"/api/datasources/uid/{uid}")
            source = grafana.get(f"/api/datasources/uid/{uid}")
            assert without(restored, "id", "version", "secureJsonFields") == without(
                source, "id", "version", "secureJsonFields"
            )
            assert restored["secureJsonFields"] == {} != source["secureJsonFields"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        secrets = next(m for m in warnings if "data sources need their secrets re-entered" in m)
        assert "Prometheus (ragvault) (rv-prometheus): basicAuthPassword, httpHeaderValue1" in secrets
        assert "Loki (ragvault) (rv-loki): httpHeaderValue1" in secrets
        webhook = next(m for m in warnings if "contact points need their secure settings re-entered" in m)
        assert "rag-oncall (rv-cp-oncall-webhook): password" in webhook
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "seeded-prometheus-password" not in logged and "seeded-webhook-password" not in logged
        assert comparable_library_panels(target) == comparable_library_panels(grafana)

        # Alerting: rules (uids, group and interval), contact points, policies, mute timings, templates.
        rules = lambda g: {r["uid"]: without(r, "id", "updated") for r in provisioning(g, "alert-rules")}  # noqa: E731
        assert rules(target) == rules(grafana) and len(rules(target)) == 3
        group = target.get(f"{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo")
        assert group["interval"] == 60
        assert [r["uid"] for r in group["rules"]] == [
            r["uid"] for r in grafana.get(f"{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo")["rules"]
        ]
        points = lambda g: sorted(map(public_settings, provisioning(g, "contact-points")), key=str)  # noqa: E731
        assert points(target) == points(grafana) and len(points(target)) == 2
        assert sorted(p["name"] for p in provisioning(target, "contact-points")) == [
            "grafana-default-email",  # the blank target's own default integration was replaced, not doubled
            "rag-oncall",
        ]
        assert provisioning(target, "policies") == provisioning(grafana, "policies")
        assert provisioning(target, "mute-timings") == provisioning(grafana, "mute-timings")
        assert provisioning(target, "templates") == provisioning(grafana, "templates")

        assert restorer.verify_restore(ctx, "all") == []

        # Editable in the UI: nothing carries a provenance, and a change marked as a UI edit is accepted
        # (Grafana refuses it, HTTP 403, on an object provisioned through the API).
        for kind in ("alert-rules", "contact-points", "mute-timings", "templates"):
            assert all("provenance" not in entry for entry in provisioning(target, kind)), kind
        assert "provenance" not in provisioning(target, "policies")
        rule = target.get(f"{PROVISIONING}/alert-rules/rv-rule-qdrant-down")
        edited = target.session.put(
            f"{target.url}{PROVISIONING}/alert-rules/rv-rule-qdrant-down",
            json={**rule, "title": "Qdrant down (edited)"},
            headers={"X-Disable-Provenance": "true"},
            timeout=10,
        )
        assert edited.status_code == 200, edited.text
        assert restorer.verify_restore(ctx, "all") == [
            "alert rule rv-rule-qdrant-down: title: "
            '"Qdrant down (edited)" on the target, '
            '"Qdrant unreachable" in the backup'
        ]

        restorer.restore(ctx, "all")
        assert restorer.verify_restore(ctx, "all") == []
        held = restorer.inspect_target(ctx, "all")
        assert held["holds_data"] is True
        assert "6 dashboards, 5 folders, 2 data sources, 3 alert rules" in held["what"]


def test_restore_over_data_replaces_it_without_duplicates(
    grafana, connect, make_settings, backed_up, restore_context, restore_target, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    manifest = backed_up(GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN))))
    with restore_target() as (target, restorer):
        # The target holds the same objects (with their secrets), then changed, and one of its own.
        seed_grafana(target.url, TOKEN)
        home = target.get("/api/dashboards/uid/rv-d-home")["dashboard"]
        target.post(
            "/api/dashboards/db", {"dashboard": {**home, "title": "Home (changed)"}, "overwrite": True}
        )
        target.post("/api/dashboards/db", {"dashboard": {"uid": "target-only", "title": "Target only"}})
        target.post("/api/folders/rv-quality/move", {"parentUid": ""})
        assert target.session.put(
            f"{target.url}/api/folders/rv-storage", json={"title": "Disks", "overwrite": True}, timeout=10
        ).ok
        loki = target.get("/api/datasources/uid/rv-loki")
        assert target.session.put(
            f"{target.url}/api/datasources/uid/rv-loki",
            json={**loki, "url": "http://elsewhere:3100"},
            timeout=10,
        ).ok
        ctx = restore_context(manifest, "grafana", restorer.settings)
        held = restorer.inspect_target(ctx, "all")
        assert held["holds_data"] is True
        assert "7 dashboards, 5 folders, 2 data sources, 3 alert rules" in held["what"]

        problems = restorer.verify_restore(ctx, "all")
        assert {
            'dashboard rv-d-home: dashboard.title: "Home (changed)" on the target, '
            '"RAG Stack Overview" in the backup',
            'folder rv-quality: parentUid: null on the target, "rv-retrieval" in the backup',
            'folder rv-storage: title: "Disks" on the target, "Storage" in the backup',
            'data source rv-loki: url: "http://elsewhere:3100" on the target, "http://127.0.0.1:3100" in the '
            "backup",
        } <= set(problems), problems
        assert sum(p.startswith("library panel ") and p.endswith("is missing") for p in problems) == 2
        assert any(p.startswith("contact point 'grafana-default-email' has an integration") for p in problems)

        for _ in range(2):  # restoring again changes nothing
            counts = restorer.restore(ctx, "all")
            assert counts["dashboards"] == 6
            assert counts["secrets_to_reenter"] == 0  # the target kept the secrets it had
            assert restorer.verify_restore(ctx, "all") == []

        assert target.dashboard_uids() == grafana.dashboard_uids() | {"target-only"}  # left in place
        assert folder_tree(target) == set(FOLDERS)
        assert comparable_dashboard(target, "rv-d-home") == comparable_dashboard(grafana, "rv-d-home")
        assert len(target.get("/api/datasources")) == 2
        assert target.get("/api/datasources/uid/rv-loki")["url"] == "http://127.0.0.1:3100"
        assert target.get("/api/datasources/uid/rv-loki")["secureJsonFields"] == {"httpHeaderValue1": True}
        assert comparable_library_panels(target) == comparable_library_panels(grafana)
        assert len(provisioning(target, "alert-rules")) == 3
        assert sorted(p["uid"] for p in provisioning(target, "contact-points")) == sorted(
            p["uid"] for p in provisioning(grafana, "contact-points")
        )
        assert len(provisioning(target, "mute-timings")) == len(provisioning(target, "templates")) == 1
        assert any(
            "not in the backup (left in place): dashboards: target-only" in r.getMessage()
            for r in caplog.records
        )

        # A change on the target after the restore is named by the verification.
        slo = target.get("/api/dashboards/uid/rv-d-platform-slo")["dashboard"]
        slo["panels"][0]["title"] = "Renamed panel"
        target.post("/api/dashboards/db", {"dashboard": slo, "folderUid": "rv-platform", "overwrite": True})
        problems = restorer.verify_restore(ctx, "all")
        assert len(problems) == 1 and problems[0].startswith(
            'dashboard rv-d-platform-slo: dashboard.panels[0].title: "Renamed panel" on the target'
        ), problems


def free_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on: Grafana is stopped
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_restore_files_onto_a_stopped_grafana(
    grafana, connect, make_settings, backed_up, restore_context, backup_date, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="ragvault")
    source = make_settings(
        connect(grafana.port, password=TOKEN),
        config_path=str(grafana.data_dir),
        db_path=str(grafana.data_dir),
    )
    manifest = backed_up(GrafanaComponent(source))
    stopped = tmp_path / "stopped"
    with emulator(stopped):  # a Grafana that ran once and was stopped: its empty grafana.db and grafana.ini
        pass
    old_db, old_ini = (stopped / "grafana.db").read_bytes(), (stopped / "grafana.ini").read_bytes()
    (stopped / "grafana.db-wal").write_bytes(b"a write-ahead log left by the old database")
    restorer = GrafanaComponent(
        make_settings(
            connect(free_port(), password=TOKEN),
            restore_files=True,
            db_path=str(stopped),
            config_path=str(stopped / "grafana.ini"),
        )
    )
    ctx = restore_context(manifest, "grafana", restorer.settings)
    before = restorer.inspect_target(ctx, "all")
    assert before["holds_data"] is False
    assert f"{stopped / 'grafana.db'} holds no dashboards" in before["what"]
    assert f"grafana.db.ragvault-{backup_date}.bak" in before["what"]

    assert restorer.restore(ctx, "all") == {"files": 2, "dashboards": 6}
    restored = sqlite3.connect(stopped / "grafana.db")
    try:
        assert restored.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        uids = {row[0] for row in restored.execute("SELECT uid FROM dashboard WHERE is_folder = 0")}
        secrets = restored.execute(
            "SELECT secure_json_data FROM data_source WHERE uid = 'rv-loki'"
        ).fetchone()[0]
    finally:
        restored.close()
    assert uids == grafana.dashboard_uids()
    assert set(json.loads(secrets)) == {"httpHeaderValue1"}  # the database carries the secrets
    assert (stopped / "grafana.ini").read_bytes() == (grafana.data_dir / "grafana.ini").read_bytes()
    # The previous files are kept; the old database's WAL moved with it, away from the restored one.
    assert (stopped / f"grafana.db.ragvault-{backup_date}.bak").read_bytes() == old_db
    assert (stopped / f"grafana.ini.ragvault-{backup_date}.bak").read_bytes() == old_ini
    assert (stopped / f"grafana.db.ragvault-{backup_date}.bak-wal").read_bytes().startswith(b"a write-ahead")
    assert sorted(path.name for path in stopped.iterdir()) == sorted(
        [
            "grafana.db",
            "grafana.ini",
            f"grafana.db.ragvault-{backup_date}.bak",
            f"grafana.db.ragvault-{backup_date}.bak-wal",
            f"grafana.ini.ragvault-{backup_date}.bak",
        ]
    )  # no temporary file left, no -wal beside the restored database
    assert restorer.verify_restore(ctx, "all") == []  # Grafana stopped: the files against the backup's bytes
    after = restorer.inspect_target(ctx, "all")
    assert (
        after["holds_data"] is True
        and "6 dashboards, 5 folders, 2 data sources, 3 alert rules" in after["what"]
    )

    # Restoring again keeps the first .bak: the files as they were before any restore.
    restorer.restore(ctx, "all")
    assert (stopped / f"grafana.db.ragvault-{backup_date}.bak").read_bytes() == old_db

    (stopped / "grafana.ini").write_text("[server]\nhttp_port = 3001\n")
    problems = restorer.verify_restore(ctx, "all")
    assert len(problems) == 1 and problems[0].startswith(f"grafana.ini: {stopped / 'grafana.ini'} (")
    assert "is not the backup's" in problems[0]

    # Grafana started on the restored grafana.db serves the backup's state, data source secrets included;
    # the verification then goes through its API.
    with emulator(stopped) as started:
        assert started.dashboard_uids() == grafana.dashboard_uids()
        assert started.get("/api/datasources/uid/rv-prometheus")["secureJsonFields"] == {
            "basicAuthPassword": True,
            "httpHeaderValue1": True,
        }
        running = GrafanaComponent(
            make_settings(connect(started.port, password=TOKEN), restore_files=True, db_path=str(stopped))
        )
        assert running.verify_restore(restore_context(manifest, "grafana", running.settings), "all") == []


def test_restore_files_refuses_while_grafana_runs(
    grafana, connect, make_settings, backed_up, restore_context, tmp_path
):
    manifest = backed_up(
        GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN), db_path=str(grafana.data_dir)))
    )
    target = tmp_path / "data"
    target.mkdir()
    restorer = GrafanaComponent(
        make_settings(connect(grafana.port, password=TOKEN), restore_files=True, db_path=str(target))
    )
    ctx = restore_context(manifest, "grafana", restorer.settings)
    assert f"Grafana answers at {grafana.url}: stop it first" in restorer.inspect_target(ctx, "all")["what"]
    with pytest.raises(ComponentError) as failure:
        restorer.restore(ctx, "all")
    message = str(failure.value)
    assert f"Grafana answers GET {grafana.url}/api/health: stop Grafana before restoring" in message
    assert list(target.iterdir()) == []  # nothing written


def test_restore_files_needs_files_in_the_backup(
    grafana, connect, make_settings, backed_up, restore_context, tmp_path
):
    manifest = backed_up(GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN))))
    data = tmp_path / "data"
    data.mkdir()
    restorer = GrafanaComponent(
        make_settings(connect(free_port(), password=TOKEN), restore_files=True, db_path=str(data))
    )
    with pytest.raises(ComponentError, match="holds neither grafana.db nor grafana.ini") as failure:
        restorer.restore(restore_context(manifest, "grafana", restorer.settings), "all")
    assert "restore_files: false" in str(failure.value)
    assert list(data.iterdir()) == []


def test_a_damaged_database_is_refused_before_it_replaces_the_old_one(
    connect, make_settings, repo, backup_date, restore_context, tmp_path
):
    # A backup whose grafana.db is not a database (its artifact is otherwise sound: right size and sha256).
    ctx = BackupContext(repo=repo, date=backup_date, component="grafana", run={"run_id": "test"})
    with ctx.open_artifact("grafana.db", compression="zstd") as writer:
        writer.write(b"SQLite format 3\x00" + os.urandom(8192))
    result = ctx.result(
        "all", counts={}, artifacts=[writer.artifact], details={"grafana_db": "online backup"}
    )
    manifest = repo.build_manifest(backup_date, [result], {"run_id": "test", "at": "now"})
    repo.commit_manifest(manifest)

    data = tmp_path / "data"
    data.mkdir()
    (data / "grafana.db").write_bytes(b"the old database")
    restorer = GrafanaComponent(
        make_settings(connect(free_port(), password=TOKEN), restore_files=True, db_path=str(data))
    )
    with pytest.raises(ComponentError) as failure:
        restorer.restore(restore_context(manifest, "grafana", restorer.settings), "all")
    assert failure.value.item == "grafana.db"
    assert "the restored grafana.db" in str(failure.value)
    assert [path.name for path in data.iterdir()] == ["grafana.db"]  # untouched, no temporary file left
    assert (data / "grafana.db").read_bytes() == b"the old database"


def test_json_arrays_are_read_item_by_item_across_chunk_boundaries(grafana):
    from ragvault.components.grafana.common import _json_items

    folders = grafana.get("/api/folders")
    text = json.dumps(folders, indent=1, ensure_ascii=False).encode()
    for size in (1, 3, 7, len(text)):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(_json_items(chunks, "folders.json")) == folders
    assert list(_json_items([b" [ ] \n"], "empty.json")) == []
    assert list(_json_items([b"[1", b'23, "\xc3', b'\xa9"]'], "split.json")) == [123, "é"]
    for broken in (b'{"a": 1}', b"[1, 2", b"[1 2]", b"[1] x"):
        with pytest.raises(ComponentError, match="broken.json"):
            list(_json_items([broken], "broken.json"))


def provision_like_terraform(target: Grafana, point: dict, template: dict, group: dict) -> None:
    """A contact point, a template and the rule group rag-slo (in its folder) written to the target the way
    Terraform's Grafana provider does: without X-Disable-Provenance, so they get provenance api."""
    sent = [
        target.session.post(f"{target.url}{PROVISIONING}/contact-points", json=point, timeout=10),
        target.session.put(f"{target.url}{PROVISIONING}/templates/{template['name']}",
                           json={"template": template["template"]}, timeout=10),
        target.session.post(f"{target.url}/api/folders", json={"uid": "rv-quality", "title": "Quality"}, timeout=10),
        target.session.put(f"{target.url}{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo",
                           json={**group, "rules": [without(r, "id", "provenance") for r in group["rules"]]},
                           timeout=10),
    ]
    assert [r.status_code for r in sent] == [202, 202, 200, 200], [r.text for r in sent]


def test_provisioned_alerting_objects_on_the_target_stop_the_restore_before_it_writes(
    grafana, connect, make_settings, backed_up, restore_context, restore_target
):
    """A target whose contact point and template were provisioned through the API (provenance api, as Terraform's
    Grafana provider leaves them): Grafana refuses to overwrite them with X-Disable-Provenance (403,
    ValidateProvenanceRelaxed in pkg/services/ngalert/provisioning/validation), so the pre-flight names them
    before any write. A rule group of provenance api is not in the list: CanUpdateProvenanceInRuleGroup lets a
    group replace take it to none, and the restore does."""
    manifest = backed_up(GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN))))
    source_point = next(p for p in provisioning(grafana, "contact-points") if p["uid"] == "rv-cp-oncall-webhook")
    source_template = provisioning(grafana, "templates")[0]
    source_group = grafana.get(f"{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo")
    with restore_target() as (target, restorer):
        ctx = restore_context(manifest, "grafana", restorer.settings)
        assert restorer.preflight(ctx, "all") == []
        provision_like_terraform(target, source_point, source_template, source_group)
        assert {r["provenance"] for r in provisioning(target, "alert-rules")} == {"api"}

        [problem] = restorer.preflight(ctx, "all")
        assert f"Grafana at {target.url} would refuse to overwrite 2 provisioned alerting object(s)" in problem
        assert "contact point 'rag-oncall' (uid rv-cp-oncall-webhook, provenance api)" in problem
        assert f"notification template {source_template['name']!r} (provenance api)" in problem
        assert "alert rule" not in problem
        assert target.dashboard_uids() == set()  # the pre-flight wrote nothing

        # a restore that went ahead anyway fails on the contact point, and says why (not "a permission")
        with pytest.raises(ComponentError) as refused:
            restorer.restore(ctx, "all")
        assert "provenance" in str(refused.value) and "lacks a permission" not in str(refused.value)

        # released on the target (deleted, as `terraform state rm` + delete would): the restore goes through
        # and takes the api rule group back to no provenance
        for response in (
            target.session.delete(f"{target.url}{PROVISIONING}/contact-points/rv-cp-oncall-webhook", timeout=10),
            target.session.delete(f"{target.url}{PROVISIONING}/templates/{source_template['name']}", timeout=10),
        ):
            assert response.status_code in (202, 204), response.text
        assert restorer.preflight(ctx, "all") == []
        restorer.restore(ctx, "all")
        assert all("provenance" not in rule for rule in provisioning(target, "alert-rules"))
        assert restorer.verify_restore(ctx, "all") == []


V2_DASHBOARDS = "/apis/dashboard.grafana.app/v2beta1/namespaces/default/dashboards"


def test_a_grafana_12_schema_v2_dashboard_is_backed_up_and_restored_through_the_new_api(
    tmp_path, connect, make_settings, backed_up, restore_context, restore_target, repo
):
    """Grafana 12 refuses a schema-v2 dashboard on /api/dashboards/uid with 406 and names its /apis URL
    (pkg/api/dashboard.go GetDashboard): the backup follows it and keeps the resource (name, spec, folder
    annotation); the restore writes it back through the same API version, creating it or replacing it with the
    target's resourceVersion; the verification compares spec and folder."""
    with emulator(tmp_path / "grafana12") as source:
        source.post("/api/folders", {"uid": "rv-v2", "title": "Schema v2"})
        resource = {
            "apiVersion": "dashboard.grafana.app/v2beta1", "kind": "Dashboard",
            "metadata": {"name": "rv-v2-answers", "annotations": {"grafana.app/folder": "rv-v2"}},
            "spec": {"title": "Answers (schema v2)", "elements": {"panel-1": {"kind": "Panel", "spec": {
                "id": 1, "title": "Latency"}}}, "layout": {"kind": "GridLayout", "spec": {"items": []}}},
        }
        created = source.session.post(source.url + V2_DASHBOARDS, json=resource, timeout=10)
        assert created.status_code == 201, created.text
        assert source.session.get(f"{source.url}/api/dashboards/uid/rv-v2-answers", timeout=10).status_code == 406
        legacy = {"uid": "rv-classic", "title": "Classic", "panels": []}
        assert source.session.post(source.url + "/api/dashboards/db", json={"dashboard": legacy},
                                   timeout=10).status_code == 200

        manifest = backed_up(GrafanaComponent(make_settings(connect(source.port, password=TOKEN))))
        saved = {a["key"].rsplit("/", 1)[-1]: a for a in manifest["artifacts"] if "/dashboards/" in a["key"]}
        assert set(saved) == {"rv-v2-answers.json", "rv-classic.json"}
        assert "/dashboards/rv-v2/rv-v2-answers.json" in saved["rv-v2-answers.json"]["key"]
        stored = json.loads(b"".join(repo.iter_artifact(saved["rv-v2-answers.json"])))
        assert stored == source.get(f"{V2_DASHBOARDS}/rv-v2-answers")

    with restore_target() as (target, restorer):
        ctx = restore_context(manifest, "grafana", restorer.settings)
        restorer.restore(ctx, "all")
        got = target.get(f"{V2_DASHBOARDS}/rv-v2-answers")
        assert got["spec"] == resource["spec"]
        assert got["metadata"]["annotations"]["grafana.app/folder"] == "rv-v2"
        assert target.get("/api/dashboards/uid/rv-classic")["dashboard"]["title"] == "Classic"
        assert restorer.verify_restore(ctx, "all") == []
        # edited on the target: the verification says so, and a second restore replaces it (resourceVersion)
        edited = dict(got, spec=dict(got["spec"], title="Edited on the target"))
        assert target.session.put(f"{target.url}{V2_DASHBOARDS}/rv-v2-answers", json=edited,
                                  timeout=10).status_code == 200
        assert [p for p in restorer.verify_restore(ctx, "all") if "rv-v2-answers" in p]
        restorer.restore(ctx, "all")
        assert target.get(f"{V2_DASHBOARDS}/rv-v2-answers")["spec"]["title"] == "Answers (schema v2)"
        assert restorer.verify_restore(ctx, "all") == []


def test_keep_writes_the_targets_api_provisioned_alerting_objects_back_as_api(
    grafana, connect, make_settings, backed_up, restore_context, restore_target, target_settings
):
    """components.grafana.alerting_provenance: keep. Grafana lets an object of provenance api be changed with the
    same provenance (ValidateProvenanceRelaxed, CanUpdateProvenanceInRuleGroup: stored == provided): the target's
    Terraform-managed contact point, template and rule group are written back as api, the rest without one."""
    import dataclasses

    manifest = backed_up(GrafanaComponent(make_settings(connect(grafana.port, password=TOKEN))))
    source_point = next(p for p in provisioning(grafana, "contact-points") if p["uid"] == "rv-cp-oncall-webhook")
    source_template = provisioning(grafana, "templates")[0]
    source_group = grafana.get(f"{PROVISIONING}/folder/rv-quality/rule-groups/rag-slo")
    with restore_target() as (target, restorer):
        provision_like_terraform(target, {**source_point, "settings": {**source_point["settings"], "url": "http://x"}},
                                 {**source_template, "template": '{{ define "x" }}old{{ end }}'}, source_group)
        data = {**restorer.settings.data}
        data["components"] = {**data["components"],
                              "grafana": {**data["components"]["grafana"], "alerting_provenance": "keep"}}
        keeper = GrafanaComponent(dataclasses.replace(restorer.settings, data=data))
        ctx = restore_context(manifest, "grafana", keeper.settings)
        assert keeper.preflight(ctx, "all") == []  # nothing of provenance file
        keeper.restore(ctx, "all")
        point = target.get(f"{PROVISIONING}/contact-points")
        kept = {p["uid"]: p.get("provenance", "") for p in point}
        assert kept["rv-cp-oncall-webhook"] == "api"
        template = {t["name"]: t for t in provisioning(target, "templates")}[source_template["name"]]
        assert template["template"] == source_template["template"] and template.get("provenance") == "api"
        assert {r.get("provenance") for r in provisioning(target, "alert-rules")} == {"api"}
        assert all("provenance" not in t for t in provisioning(target, "mute-timings"))  # none before, none now
        assert keeper.verify_restore(ctx, "all") == []


def test_a_slack_point_refused_without_its_secrets_is_created_with_the_redacted_text(
    tmp_path, connect, make_settings, backed_up, restore_context, restore_target, caplog
):
    """The API export shows a Slack point's url as [REDACTED]. Grafana refuses to create the point without it
    (pkg/services/ngalert/provisioning/contactpoints.go ValidateContactPoint; grafana/alerting
    receivers/slack/config.go: "recipient must be specified when using the Slack chat API"), so the restore
    creates it with the [REDACTED] text in its place and says the secret must be re-entered."""
    caplog.set_level(logging.INFO, logger="ragvault")
    with emulator(tmp_path / "slack-source") as source:
        answer = source.session.post(f"{source.url}{PROVISIONING}/contact-points", timeout=10, json={
            "uid": "rv-cp-slack", "name": "rag-slack", "type": "slack",
            "settings": {"url": "https://hooks.slack.example/T0/B0/secret", "title": "RAG alert"},
        })
        assert answer.status_code == 202, answer.text
        manifest = backed_up(GrafanaComponent(make_settings(connect(source.port, password=TOKEN))))
    with restore_target() as (target, restorer):
        ctx = restore_context(manifest, "grafana", restorer.settings)
        counts = restorer.restore(ctx, "all")
        assert counts["secrets_to_reenter"] == 1
        point = next(p for p in provisioning(target, "contact-points") if p["uid"] == "rv-cp-slack")
        assert point["settings"] == {"url": "[REDACTED]", "title": "RAG alert"}
        with sqlite3.connect(target.data_dir / "grafana.db") as db:
            config = json.loads(db.execute("SELECT alertmanager_configuration FROM alert_configuration").fetchone()[0])
        stored = next(i for r in config["alertmanager_config"]["receivers"]
                      for i in r.get("grafana_managed_receiver_configs") or [] if i["uid"] == "rv-cp-slack")
        assert base64.b64decode(stored["secureSettings"]["url"]).decode() == "[REDACTED]"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("'rag-slack' (slack, uid rv-cp-slack) is refused without its secure settings" in m
                   and "token must be specified" not in m and "recipient must be specified" in m for m in warnings)
        assert any("rag-slack (rv-cp-slack): url" in m for m in warnings)
        assert "hooks.slack.example" not in "\n".join(r.getMessage() for r in caplog.records)
        assert restorer.verify_restore(ctx, "all") == []


def test_a_dashboard_whose_library_panel_is_missing_is_restored_as_the_source_held_it(
    tmp_path, connect, make_settings, backed_up, restore_context, restore_target, caplog
):
    """Grafana saves a dashboard that names a missing library panel and answers 500 "Error while connecting
    library panels" (pkg/api/dashboard.go): a source can hold one. The restore saves it the same way and warns
    naming the panel, instead of failing the whole Grafana restore."""
    caplog.set_level(logging.INFO, logger="ragvault")
    with emulator(tmp_path / "dangling-source") as source:
        model = {"uid": "rv-dangling", "title": "Dangling", "panels": [
            {"id": 1, "libraryPanel": {"uid": "rv-lp-gone", "name": "Gone"}}]}
        saved = source.session.post(f"{source.url}/api/dashboards/db", json={"dashboard": model}, timeout=10)
        assert saved.status_code == 500 and saved.json()["message"] == "Error while connecting library panels"
        manifest = backed_up(GrafanaComponent(make_settings(connect(source.port, password=TOKEN))))
    with restore_target() as (target, restorer):
        ctx = restore_context(manifest, "grafana", restorer.settings)
        assert restorer.restore(ctx, "all")["dashboards"] == 1
        got = target.get("/api/dashboards/uid/rv-dangling")["dashboard"]
        assert got["panels"] == model["panels"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("dashboard rv-dangling ('Dangling'" in m and "rv-lp-gone exist neither in the backup nor on "
                   "the target" in m for m in warnings), warnings
        assert restorer.verify_restore(ctx, "all") == []


def test_a_grafana_that_hides_its_version_is_backed_up_and_says_so(
    tmp_path, connect, make_settings, context, caplog
):
    """pkg/api/http_server.go (apiHealthHandler): with [auth.anonymous] hide_version, /api/health has no
    version; the backup records grafana_version null and logs why there is none."""
    caplog.set_level(logging.INFO, logger="ragvault")
    server = make_server("127.0.0.1", 0, tmp_path / "hidden", token=TOKEN, hide_version=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        result = GrafanaComponent(make_settings(connect(server.server_address[1], password=TOKEN))).backup(
            context("grafana"), None
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert result.details["grafana_version"] is None
    assert any("grafana (version hidden: [auth.anonymous] hide_version) at" in r.getMessage()
               for r in caplog.records)
