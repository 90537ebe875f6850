"""LangSmith backup against the LangSmith emulator (or a workspace through AIRFLOW_CONN_LANGSMITH_DEFAULT).

The module seeds projects of its own (a unique name prefix) over three days of a far-future week no other
test uses, backs up the middle day, reads what was uploaded back from MinIO and checks it against the
seeded data set and against what the SDK reads from the server. Rate limiting is played by a small local
HTTP proxy in front of the emulator that answers chosen requests with 429/503 before forwarding the rest.
The restore tests put that backup onto a private emulator (a blank workspace on a free port) and compare
both servers' projects, runs and feedback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from devstack.seed_langsmith import langsmith_dataset, seed_langsmith
from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.langsmith import LangSmithComponent
from ragvault.config import load_settings
from ragvault.hooks.langsmith import DEFAULT_API_URL, LangSmithHook

pytestmark = pytest.mark.timeout(120)

TRACES_PER_DAY = 20  # ~130 runs a day in rag-chatbot: more than one page of the runs query
#: what a server holds of a run, as the v2 query gives it (the oracle the backups and restores are checked with)
V2_FIELDS = ("id", "trace_id", "parent_run_ids", "dotted_order", "project_id", "name", "run_type", "start_time",
             "end_time", "status", "inputs", "outputs", "error", "tags", "extra", "events")
V2_SELECTS = [field.upper() for field in V2_FIELDS]
EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


def server_runs(hook, project_ids, ids=None, window=EVER) -> dict[str, dict]:
    """The runs a server holds in these projects (of ``ids`` only, when given), read straight through the
    SDK's generated client (``POST /api/v2/runs/query``), as the v2 ``Run`` JSON."""
    query = {"project_ids": list(project_ids), "min_start_time": window[0], "max_start_time": window[1],
             "selects": V2_SELECTS, **({"ids": list(ids)} if ids is not None else {})}
    return {run.id: run.model_dump(mode="json", include=set(V2_FIELDS))
            for run in hook.openapi().runs.query_v2(**query)}


def as_backed_up(run: dict) -> dict:
    """A v2 run in the shape of a runs.json record (what the server answers, mapped by hand)."""
    ancestors = run["parent_run_ids"] or []
    return {"id": run["id"], "trace_id": run["trace_id"], "parent_run_id": ancestors[-1] if ancestors else None,
            "parent_run_ids": ancestors, "dotted_order": run["dotted_order"], "session_id": run["project_id"],
            "name": run["name"], "run_type": run["run_type"].lower(), "status": run["status"].lower(),
            "start_time": moment(run["start_time"]), "end_time": moment(run["end_time"]), "inputs": run["inputs"],
            "outputs": run["outputs"], "error": run["error"], "tags": run["tags"], "extra": run["extra"],
            # the v2 Event model's unset fields (kwargs) left out, as runs.json has them
            "events": [{k: v for k, v in event.items() if v is not None} for event in run["events"]]
            if run["events"] else run["events"]}


def moment(value):
    return None if value is None else dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module", autouse=True)
def isolated_env():
    """Keep LANGSMITH_*/LANGCHAIN_* settings of the caller's shell out of the SDK."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("LANGSMITH_", "LANGCHAIN_")):
                patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def ls_hook(isolated_env):
    with LangSmithHook() as hook:
        yield hook


@pytest.fixture(scope="module")
def seeded(ls_hook):
    """Three days of seeded traces in projects of our own, plus single runs on the middle day's edges.

    The traces are sent like an application sends them (the SDK adds its runtime and environment to each
    run's ``extra``); the edge runs through the hook's client, which sends runs exactly as given (no
    ``extra`` at all)."""
    from langsmith import Client

    client = ls_hook.get_conn()
    tracer = Client(api_url=ls_hook.api_url, api_key=ls_hook.api_key, auto_batch_tracing=False)
    prefix = f"rvtest-{uuid.uuid4().hex[:8]}-"
    day = dt.date(2045, 1, 1) + dt.timedelta(days=random.randrange(0, 5000))
    days = [day - dt.timedelta(days=1), day, day + dt.timedelta(days=1)]
    try:
        counts = seed_langsmith(tracer, days, prefix=prefix, traces_per_day=TRACES_PER_DAY)
        # Seeding is idempotent: the second time changes nothing (the tests below see no duplicate).
        assert seed_langsmith(tracer, days, prefix=prefix, traces_per_day=TRACES_PER_DAY) == counts
    finally:
        tracer.close(timeout=0)
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    edges = {
        "at_start": start,
        "at_end": end,
        "before_start": start - dt.timedelta(microseconds=1),
        "before_end": end - dt.timedelta(microseconds=1),
    }
    edge_runs = {label: edge_run(f"{prefix}rag-chatbot", label, moment) for label, moment in edges.items()}
    client.batch_ingest_runs(create=[dict(run) for run in edge_runs.values()])
    projects = {p.name: p for p in langsmith_dataset(days, prefix=prefix, traces_per_day=TRACES_PER_DAY)}
    projects[f"{prefix}rag-chatbot"].runs.extend(edge_runs.values())
    yield {"prefix": prefix, "day": day, "start": start, "end": end, "projects": projects, "edges": edge_runs,
           "counts": counts}
    for name in projects:
        client.delete_project(project_name=name)


def edge_run(project: str, label: str, moment: dt.datetime) -> dict:
    run_id = str(uuid.uuid4())
    return {"id": run_id, "trace_id": run_id, "dotted_order": moment.strftime("%Y%m%dT%H%M%S%fZ") + run_id,
            "session_name": project, "name": f"edge-{label}", "run_type": "tool",
            "start_time": moment.isoformat(), "end_time": (moment + dt.timedelta(milliseconds=3)).isoformat(),
            "inputs": {"edge": label}, "outputs": {"ok": True}, "tags": ["edge"]}


def expected_runs(seeded, project_names) -> dict[str, dict]:
    """The seeded runs of these projects that start in the interval, from the data set (not the server)."""
    return {
        run["id"]: run
        for name in project_names
        for run in seeded["projects"][name].runs
        if seeded["start"] <= dt.datetime.fromisoformat(run["start_time"]) < seeded["end"]
    }


def settings_for(make_config, conn_id: str = "langsmith_default", **component):
    return load_settings(make_config(connections={"langsmith": conn_id}, components={"langsmith": component}))


def interval_context(context, seeded) -> BackupContext:
    ctx = context("langsmith")
    ctx.run.update(data_interval_start=seeded["start"].isoformat(),
                   data_interval_end=seeded["end"].isoformat(), logical_date=seeded["start"].isoformat())
    return ctx


def read_back(repo, result):
    keys = {a.key.split("/", 2)[2]: a for a in result.artifacts}
    assert set(keys) == {"projects.json", "runs.json.zst"}
    projects = json.loads(b"".join(repo.iter_artifact(keys["projects.json"])))
    lines = b"".join(repo.iter_artifact(keys["runs.json.zst"])).decode().splitlines()
    return projects, [json.loads(line) for line in lines]


def test_backup_of_selected_projects_holds_exactly_the_interval_runs(make_config, context, repo, seeded,
                                                                     ls_hook):
    prefix, client = seeded["prefix"], ls_hook.get_conn()
    selected = [f"{prefix}nightly-evals", f"{prefix}rag-chatbot"]
    settings = settings_for(make_config, projects=[f"{prefix}rag-*", f"{prefix}nightly-evals"])
    threads_before = set(threading.enumerate())

    result = LangSmithComponent(settings).backup(interval_context(context, seeded), None)

    assert set(threading.enumerate()) - threads_before == set()  # no tracing thread left behind
    projects, runs = read_back(repo, result)

    # projects.json: the selected projects, each exactly as the API describes it, metadata included.
    assert [p["name"] for p in projects] == selected
    for project in projects:
        assert project == client.request_with_retries("GET", f"/sessions/{project['id']}").json()
        seeded_project = seeded["projects"][project["name"]]
        assert project["description"] == seeded_project.description
        assert project["extra"]["metadata"] == seeded_project.metadata
        assert "reference_dataset_id" in project and project["tenant_id"]

    # runs.json: exactly the runs that started in [start, end) in the selected projects, none twice.
    expected = expected_runs(seeded, selected)
    ids = [run["id"] for run in runs]
    assert len(ids) == len(set(ids)) == len(expected) == result.counts["runs"]
    assert set(ids) == set(expected)
    edges = seeded["edges"]
    assert {edges["at_start"]["id"], edges["before_end"]["id"]} <= set(ids)
    assert not {edges["before_start"]["id"], edges["at_end"]["id"]} & set(ids)
    other = seeded["projects"][f"{prefix}ingestion-agent"].runs
    assert expected_runs(seeded, [f"{prefix}ingestion-agent"]) and not {r["id"] for r in other} & set(ids)

    # The tree and content fields are what the server returns for each run, and what was seeded.
    on_server = server_runs(ls_hook, [p["id"] for p in projects], ids=ids)
    for run in runs:
        stored = as_backed_up(on_server[run["id"]])
        assert {**{f: run[f] for f in stored}, "start_time": moment(run["start_time"]),
                "end_time": moment(run["end_time"])} == stored
        sent = expected[run["id"]]
        assert (run["inputs"], run["error"], run["tags"]) == (sent["inputs"], sent.get("error"), sent["tags"])
        sent_metadata = (sent.get("extra") or {}).get("metadata", {})
        assert sent_metadata.items() <= run["extra"].get("metadata", {}).items()
        assert run["parent_run_id"] == sent.get("parent_run_id")
    by_id = {run["id"]: run for run in runs}
    nested = [r for r in runs if by_id.get(r["parent_run_id"] or "", {}).get("parent_run_id")]
    assert nested, "the seeded traces nest runs at least three deep"
    assert {r["run_type"] for r in runs} == {"chain", "llm", "retriever", "tool", "embedding", "prompt",
                                             "parser"}
    assert any(r["status"] == "error" for r in runs) and any(r["events"] for r in runs)

    # Each run carries its feedback: the seeded records, as the API lists them.
    seeded_feedback = {item["feedback_id"]: item for name in selected
                       for item in seeded["projects"][name].feedback if item["run_id"] in expected}
    written = [f for run in runs for f in run["feedback"]]
    assert {f["id"] for f in written} == set(seeded_feedback)
    assert len(written) == len(seeded_feedback) == result.counts["feedback"] > 0
    assert any(len(run["feedback"]) > 1 for run in runs)
    for run in runs:
        for feedback in run["feedback"]:
            sent = seeded_feedback[feedback["id"]]
            assert (feedback["run_id"], feedback["key"]) == (run["id"], sent["key"])
            assert feedback["score"] == sent["score"]
        if run["feedback"]:
            listed = [f.model_dump(mode="json") for f in client.list_feedback(run_ids=[run["id"]])]
            assert sorted(run["feedback"], key=lambda f: f["id"]) == sorted(listed, key=lambda f: f["id"])

    # Runs are grouped by project (in projects.json's order), newest first within each (as the API sends them).
    sessions = [run["session_id"] for run in runs]
    assert sorted(set(sessions), key=sessions.index) == [p["id"] for p in projects]
    for project in projects:
        starts = [moment(run["start_time"]) for run in runs if run["session_id"] == project["id"]]
        assert starts == sorted(starts, reverse=True)
    assert result.details["runs_api"] == "v2" and "runs_api_reason" not in result.details

    assert result.counts["projects"] == 2
    assert result.counts["traces"] == sum(run.get("parent_run_id") is None for run in expected.values())
    assert result.details["interval"] == {
        "start": seeded["start"].isoformat(), "end": seeded["end"].isoformat(), "source": "data_interval"}
    assert sum(result.details["runs_per_project"].values()) == len(expected)


def test_every_project_is_backed_up_when_none_is_configured(make_config, context, repo, seeded, ls_hook):
    settings = settings_for(make_config)  # projects: [] -> the whole workspace
    result = LangSmithComponent(settings).backup(interval_context(context, seeded), None)
    projects, runs = read_back(repo, result)
    names = [p["name"] for p in projects]
    assert set(seeded["projects"]) <= set(names) and names == sorted(set(names))
    # Nobody else traces in this far-future interval: the runs are exactly our three projects' ones.
    assert {run["id"] for run in runs} == set(expected_runs(seeded, seeded["projects"]))
    assert result.counts["projects"] == len(projects)


class Proxy:
    """A local HTTP server in front of the LangSmith API: it records every request, answers those
    ``reject(method, path, seen)`` picks with its status (429, 503...), and forwards the others."""

    def __init__(self, upstream: str, reject=lambda method, path, seen: None, retry_after: str | None = None):
        self.upstream, self.reject, self.retry_after = upstream, reject, retry_after
        self.log: list[tuple[str, str, int, bytes]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="langsmith-test-proxy", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()

    def count(self, method: str, path: str, status: int | None = None) -> int:
        return sum(1 for m, p, s, _ in self.log if m == method and p.split("?")[0] == path
                   and (status is None or s == status))

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.relay("GET")

            def do_POST(self) -> None:
                self.relay("POST")

            def relay(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                with proxy.lock:
                    seen = sum(1 for m, p, _, _ in proxy.log if m == method and p.split("?")[0] == path)
                    status = proxy.reject(method, path, seen)
                    index = len(proxy.log)
                    proxy.log.append((method, self.path, status or 0, body))
                if status:
                    payload = json.dumps({"detail": "Too Many Requests" if status == 429 else "unavailable"})
                    self.answer(status, payload.encode(), "application/json",
                                {"Retry-After": proxy.retry_after} if proxy.retry_after else {})
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in {"host", "content-length", "connection", "accept-encoding"}}
                upstream = requests.request(method, proxy.upstream + self.path, headers=headers, data=body,
                                            timeout=30)
                with proxy.lock:
                    proxy.log[index] = (method, self.path, upstream.status_code, body)
                self.answer(upstream.status_code, upstream.content,
                            upstream.headers.get("Content-Type", "application/json"), {})

            def answer(self, status: int, data: bytes, content_type: str, extra: dict) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def connection_to(monkeypatch, conn_id: str, port: int, api_key: str | None) -> None:
    conn = {"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "password": api_key}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_runs_are_paged_through_the_cursor(make_config, context, repo, seeded, ls_hook, monkeypatch):
    project = f"{seeded['prefix']}rag-chatbot"
    expected = expected_runs(seeded, [project])
    assert len(expected) > 100  # more than one page of POST /runs/query
    with Proxy(ls_hook.api_url) as proxy:
        connection_to(monkeypatch, "langsmith_paging", proxy.port, ls_hook.api_key)
        settings = settings_for(make_config, "langsmith_paging", projects=[project])
        result = LangSmithComponent(settings).backup(interval_context(context, seeded), None)
    _, runs = read_back(repo, result)
    newest_first = sorted(expected, key=lambda i: (dt.datetime.fromisoformat(expected[i]["start_time"]), i),
                          reverse=True)
    assert [run["id"] for run in runs] == newest_first
    queries = [json.loads(body) for method, path, _, body in proxy.log if path == "/api/v2/runs/query"]
    assert len(queries) >= 2 and "cursor" not in queries[0] and all("cursor" in q for q in queries[1:])
    # explicit field selection; the window, bounded on both sides
    assert set(queries[0]["selects"]) >= {"ID", "PARENT_RUN_IDS", "PROJECT_ID", "DOTTED_ORDER", "INPUTS"}
    assert queries[0]["min_start_time"].startswith(seeded["start"].isoformat()[:19])
    assert queries[0]["max_start_time"].startswith(seeded["end"].isoformat()[:19])
    # feedback is fetched for a batch of runs per request, not run by run
    assert proxy.count("GET", "/feedback") <= len(expected) // 100 + 2


@pytest.mark.parametrize("run_info", [
    {},
    {"data_interval_start": None, "data_interval_end": None},
    {"data_interval_start": "END", "data_interval_end": "END"},  # an empty interval
])
def test_without_a_data_interval_the_24_hours_before_the_logical_date_are_backed_up(
        make_config, context, repo, seeded, caplog, run_info):
    project = f"{seeded['prefix']}rag-chatbot"
    ctx = context("langsmith")
    end = seeded["end"].isoformat()
    ctx.run.update({k: (end if v == "END" else v) for k, v in run_info.items()}, logical_date=end)
    with caplog.at_level("WARNING", logger="ragvault"):
        result = LangSmithComponent(settings_for(make_config, projects=[project])).backup(ctx, None)
    _, runs = read_back(repo, result)
    assert {run["id"] for run in runs} == set(expected_runs(seeded, [project]))
    assert result.details["interval"] == {"start": seeded["start"].isoformat(), "end": end,
                                          "source": "24h before logical date"}
    assert "no usable data interval" in caplog.text and "24 hours before the logical date" in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_langsmith_fails_naming_the_endpoint_and_the_cause(make_config, context, monkeypatch):
    port = free_port()
    secret = "lsv2_pt_deadport0123456789abcdef"
    connection_to(monkeypatch, "langsmith_dead", port, secret)
    settings = settings_for(make_config, "langsmith_dead", max_retries=1, backoff_seconds=0.01)
    component = LangSmithComponent(settings)
    started = time.monotonic()
    with pytest.raises(ComponentError) as failure:
        component.backup(context("langsmith"), None)
    message = str(failure.value)
    assert message.startswith("langsmith: ")
    assert f"http://127.0.0.1:{port}" in message and component.endpoint() == f"http://127.0.0.1:{port}"
    assert "Connection refused" in message
    assert secret[:5] not in message and "API Key" not in message  # the SDK's text shows part of the key
    assert time.monotonic() - started < 15


def test_a_wrong_api_key_fails_without_showing_it(make_config, context, ls_hook, monkeypatch):
    secret = "lsv2_pt_wrongkey0123456789abcdef"
    conn = json.loads(os.environ["AIRFLOW_CONN_LANGSMITH_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_LANGSMITH_WRONG_KEY", json.dumps({**conn, "password": secret}))
    component = LangSmithComponent(settings_for(make_config, "langsmith_wrong_key"))
    with pytest.raises(ComponentError, match=rf"at {ls_hook.api_url}: LangSmithAuthError") as failure:
        component.backup(context("langsmith"), None)
    assert "401" in str(failure.value) and secret[:5] not in str(failure.value)


def test_rate_limited_and_unavailable_answers_are_retried(make_config, context, repo, seeded, ls_hook,
                                                          monkeypatch):
    project = f"{seeded['prefix']}nightly-evals"

    def reject(method, path, seen):
        if path == "/sessions" and seen == 0:
            return 503
        if path == "/api/v2/runs/query" and seen < 2:
            return 429
        return None

    with Proxy(ls_hook.api_url, reject, retry_after="1") as proxy:
        connection_to(monkeypatch, "langsmith_limited", proxy.port, ls_hook.api_key)
        settings = settings_for(make_config, "langsmith_limited", projects=[project], max_retries=3,
                                backoff_seconds=0.05, max_backoff_seconds=2)
        started = time.monotonic()
        result = LangSmithComponent(settings).backup(interval_context(context, seeded), None)
        elapsed = time.monotonic() - started
    _, runs = read_back(repo, result)
    assert {run["id"] for run in runs} == set(expected_runs(seeded, [project]))
    assert proxy.count("GET", "/sessions", 503) == 1 and proxy.count("GET", "/sessions", 200) >= 1
    assert proxy.count("POST", "/api/v2/runs/query", 429) == 2
    assert proxy.count("POST", "/api/v2/runs/query", 200) >= 1
    assert elapsed >= 1.9  # Retry-After: 1 was honoured twice


def test_a_rate_limit_that_does_not_end_fails_after_bounded_retries(make_config, context, ls_hook,
                                                                    monkeypatch):
    with Proxy(ls_hook.api_url, lambda method, path, seen: 429, retry_after="3600") as proxy:
        connection_to(monkeypatch, "langsmith_throttled", proxy.port, ls_hook.api_key)
        settings = settings_for(make_config, "langsmith_throttled", max_retries=2, max_backoff_seconds=1)
        started = time.monotonic()
        with pytest.raises(ComponentError, match=rf"http://127\.0\.0\.1:{proxy.port}.*(429|Rate limit)"):
            LangSmithComponent(settings).backup(context("langsmith"), None)
        elapsed = time.monotonic() - started
    assert proxy.count("GET", "/sessions", 429) == 3  # the first try and two retries
    assert 1.5 <= elapsed < 15  # Retry-After: 3600 capped to the 1 s max backoff


def test_hook_reads_the_api_url_key_and_workspace_from_the_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LS_URL", json.dumps(
        {"conn_type": "http", "host": "https://langsmith.example.com/api/v1/", "password": "key-1",
         "extra": {"workspace_id": "2b8e1a52-53c4-4f6a-9a35-9f4c5f1f7d10"}}))
    monkeypatch.setenv("AIRFLOW_CONN_LS_PARTS", json.dumps(
        {"conn_type": "http", "host": "ls.internal", "port": 8443, "password": "key-2"}))
    monkeypatch.setenv("AIRFLOW_CONN_LS_EMPTY", json.dumps({"conn_type": "http", "password": "key-3"}))

    with LangSmithHook("ls_url", max_retries=4, backoff_factor=0.25, max_backoff=7.5) as hook:
        assert hook.api_url == "https://langsmith.example.com/api/v1"
        client = hook.get_conn()
        assert (client.api_url, client.api_key) == ("https://langsmith.example.com/api/v1", "key-1")
        assert str(client._workspace_id) == "2b8e1a52-53c4-4f6a-9a35-9f4c5f1f7d10"
        assert client.tracing_queue is None  # auto batch tracing off: no background thread
        retry = client.session.get_adapter("https://langsmith.example.com").max_retries
        assert (retry.total, retry.backoff_factor, retry.backoff_max) == (4, 0.25, 7.5)
        assert retry.retry_after_max == 8  # Retry-After is capped too
        assert {429, 500, 502, 503, 504} <= set(retry.status_forcelist) and retry.allowed_methods is None
        assert client._timeout == (10, 60)
    assert hook._client is None
    assert LangSmithHook("ls_parts").api_url == "https://ls.internal:8443"
    assert LangSmithHook("ls_empty").api_url == DEFAULT_API_URL


# -- restore ----------------------------------------------------------------------------------------------
# The backup of the seeded middle day (our three projects) is restored onto a private emulator started on
# a free port with its own data directory: a blank workspace, reached through connection langsmith_target.


@contextmanager
def private_langsmith(data_dir, monkeypatch, conn_id: str, version: str | None = None):
    """A private, empty LangSmith emulator (answering as ``version``) as connection ``conn_id``; a hook on it."""
    from devstack.langsmith_emulator import EMULATED_VERSION, make_server

    key = f"lsv2_pt_target{uuid.uuid4().hex}"
    server = make_server("127.0.0.1", 0, str(data_dir), api_key=key, version=version or EMULATED_VERSION)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"langsmith-{conn_id}", daemon=True)
    thread.start()
    connection_to(monkeypatch, conn_id, server.server_address[1], key)
    try:
        with LangSmithHook(conn_id) as hook:
            yield hook
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def blank_target(tmp_path, monkeypatch):
    """A private, empty LangSmith emulator as connection ``langsmith_target``; yields a hook on it."""
    with private_langsmith(tmp_path / "langsmith-target", monkeypatch, "langsmith_target") as hook:
        yield hook


@pytest.fixture
def langsmith_backup(make_config, repo, backup_date, seeded):
    """The committed backup of our projects' middle day: ``(manifest, result, runs)``."""
    from ragvault.repository import utcnow_iso

    settings = settings_for(make_config, projects=[f"{seeded['prefix']}*"])
    ctx = BackupContext(repo=repo, date=backup_date, component="langsmith", run={
        "run_id": "test", "logical_date": seeded["start"].isoformat(),
        "data_interval_start": seeded["start"].isoformat(), "data_interval_end": seeded["end"].isoformat()})
    result = LangSmithComponent(settings).backup(ctx, None)
    manifest = repo.build_manifest(backup_date, [result], {"run_id": "test", "at": utcnow_iso()})
    repo.commit_manifest(manifest)
    _, runs = read_back(repo, result)
    assert result.counts["projects"] == 3 and len(runs) == result.counts["runs"] > 200
    return manifest, result, runs


def project_named(client, name: str) -> dict:
    found = client.request_with_retries("GET", "/sessions", params={"name": name}).json()
    assert len(found) == 1, f"{len(found)} projects named {name}"
    return found[0]


def run_ids_of(hook, project_id: str) -> list[str]:
    return list(server_runs(hook, [project_id]))


def feedback_of(client, run_ids: list[str]) -> list[dict]:
    records = [record.model_dump(mode="json") for start in range(0, len(run_ids), 100)
               for record in client.list_feedback(run_ids=run_ids[start:start + 100])]
    return sorted(records, key=lambda record: record["id"])



def test_restore_onto_a_blank_workspace_gives_back_projects_runs_and_feedback(
        langsmith_backup, blank_target, restore_context, target_settings, ls_hook, seeded):
    manifest, result, runs = langsmith_backup
    source, target = ls_hook.get_conn(), blank_target.get_conn()
    restorer = LangSmithComponent(target_settings("langsmith", "langsmith_target"))
    ctx = restore_context(manifest, "langsmith", restorer.settings)
    assert restorer.restore_items(ctx.section) == ["all"]
    assert restorer.inspect_target(ctx, "all") == {
        "holds_data": False, "what": "none of the 3 backed-up project(s) exists on the target"}

    counts = restorer.restore(ctx, "all")

    assert counts == {"projects": 3, "projects_created": 3, "projects_remapped": 0,
                      "runs": result.counts["runs"], "runs_present": 0, "traces": result.counts["traces"],
                      "feedback": result.counts["feedback"], "feedback_present": 0}
    # Projects: the same ids, descriptions, metadata and times.
    kept = ("id", "name", "description", "extra", "start_time", "end_time")
    for name, data in seeded["projects"].items():
        restored = project_named(target, name)
        original = project_named(source, name)
        assert {k: restored[k] for k in kept} == {k: original[k] for k in kept}
        assert (restored["description"], restored["extra"]["metadata"]) == (data.description, data.metadata)
    # Runs: exactly the backed-up ones in each project, each with its tree and content as the source has it.
    for name in seeded["projects"]:
        project_id = project_named(source, name)["id"]
        backed_up = {run["id"] for run in runs if run["session_id"] == project_id}
        restored = run_ids_of(blank_target, project_id)
        assert len(restored) == len(set(restored)) == len(backed_up) > 0 and set(restored) == backed_up
    project_ids = sorted({run["session_id"] for run in runs})
    assert server_runs(blank_target, project_ids) == server_runs(ls_hook, project_ids, ids=[r["id"] for r in runs])
    by_id = {run["id"]: run for run in runs}
    assert any(by_id.get(run["parent_run_id"] or "", {}).get("parent_run_id") for run in runs)  # 3 deep
    # extra comes back as it was: the application's runtime where it had one, nothing added where not.
    traced = [run for run in runs if not run["name"].startswith("edge-")]
    assert traced and all(run["extra"]["runtime"]["sdk"] == "langsmith-py" for run in traced)
    edge = seeded["edges"]["at_start"]["id"]
    assert server_runs(blank_target, project_ids, ids=[edge])[edge]["extra"] == {}
    assert any(run["status"] == "error" for run in runs) and any(run["events"] for run in runs)
    # Feedback: every record, with its id, key, score, source and creation time.
    ids = [run["id"] for run in runs]
    restored_feedback = feedback_of(target, ids)
    assert len(restored_feedback) == result.counts["feedback"] > 0
    assert restored_feedback == feedback_of(source, ids)

    assert restorer.verify_restore(ctx, "all") == []
    inspected = restorer.inspect_target(ctx, "all")
    assert inspected["holds_data"]
    assert inspected["what"].startswith(
        f"3 of the 3 backed-up project(s) exist on the target, holding {len(runs)} run(s) started between")

    # Restoring again over the restored workspace duplicates nothing: every run and record is already there.
    again = restorer.restore(ctx, "all")
    assert again == {"projects": 3, "projects_created": 0, "projects_remapped": 0, "runs": 0,
                     "runs_present": len(runs), "traces": 0, "feedback": 0,
                     "feedback_present": result.counts["feedback"]}
    restored = [run_id for name in seeded["projects"]
                for run_id in run_ids_of(blank_target, project_named(target, name)["id"])]
    assert sorted(restored) == sorted(ids)
    assert feedback_of(target, ids) == restored_feedback
    assert restorer.verify_restore(ctx, "all") == []

    # The verification names what changes on the target: an extra run in the interval, a lost feedback
    # record, a changed project description, a changed run.
    chatbot = project_named(target, f"{seeded['prefix']}rag-chatbot")
    extra_run = edge_run(chatbot["name"], "added", seeded["start"] + dt.timedelta(hours=12))
    target.batch_ingest_runs(create=[extra_run])
    lost = restored_feedback[0]
    target.delete_feedback(lost["id"])
    evals = project_named(target, f"{seeded['prefix']}nightly-evals")
    target.update_project(evals["id"], description="edited on the target")
    first = runs[0]  # the sample always holds the first run of runs.json
    target.update_run(first["id"], outputs={"edited": True}, trace_id=first["trace_id"],
                      dotted_order=first["dotted_order"],
                      end_time=dt.datetime.fromisoformat(first["end_time"]))
    problems = restorer.verify_restore(ctx, "all")
    in_backup = result.details["runs_per_project"][chatbot["name"]]
    assert problems == [
        f"project {evals['name']}: its description differs from projects.json",
        f"project {chatbot['name']}: {in_backup + 1} run(s) started between {seeded['start'].isoformat()} "
        f"and {seeded['end'].isoformat()}, {in_backup} in the backup",
        f"1 feedback record(s) of runs.json missing on the target (first: {lost['id']})",
        f"run {first['id']} ({first['name']}): outputs differ from runs.json",
    ]


def test_a_project_the_target_holds_under_another_id_receives_the_runs(
        langsmith_backup, blank_target, restore_context, target_settings, ls_hook, seeded):
    manifest, result, runs = langsmith_backup
    source, target = ls_hook.get_conn(), blank_target.get_conn()
    name = f"{seeded['prefix']}nightly-evals"
    there = target.create_project(name, description="made on the target", metadata={"env": "dr-site"})
    restorer = LangSmithComponent(target_settings("langsmith", "langsmith_target"))
    ctx = restore_context(manifest, "langsmith", restorer.settings)
    assert restorer.inspect_target(ctx, "all") == {
        "holds_data": True,
        "what": f"1 of the 3 backed-up project(s) exist on the target, holding 0 run(s) started between "
                f"{seeded['start'].isoformat()} and {seeded['end'].isoformat()} ({name}: 0); the runs "
                "already there are kept, the others added"}

    counts = restorer.restore(ctx, "all")

    assert (counts["projects"], counts["projects_created"], counts["projects_remapped"]) == (3, 2, 1)
    assert counts["runs"] == len(runs) and counts["feedback"] == result.counts["feedback"]
    restored = project_named(target, name)
    assert restored["id"] == str(there.id) != project_named(source, name)["id"]
    assert restored["description"] == seeded["projects"][name].description
    assert restored["extra"]["metadata"] == seeded["projects"][name].metadata
    evals = [run for run in runs if run["session_id"] == project_named(source, name)["id"]]
    assert sorted(run_ids_of(blank_target, restored["id"])) == sorted(run["id"] for run in evals)
    assert all(record["session_id"] == restored["id"]
               for record in feedback_of(target, [run["id"] for run in evals]))
    assert restorer.verify_restore(ctx, "all") == []


def test_runs_are_sent_in_batches_parents_before_children(langsmith_backup, blank_target, restore_context,
                                                          make_config, monkeypatch):
    manifest, result, runs = langsmith_backup
    with Proxy(blank_target.api_url) as proxy:
        connection_to(monkeypatch, "langsmith_target_proxy", proxy.port, blank_target.api_key)
        restorer = LangSmithComponent(settings_for(make_config, "langsmith_target_proxy", restore_batch=25))
        counts = restorer.restore(restore_context(manifest, "langsmith", restorer.settings), "all")
    assert counts["runs"] == len(runs)
    batches = [json.loads(body)["post"] for method, path, status, body in proxy.log
               if (method, path, status) == ("POST", "/runs/batch", 202)]
    sent = [run["id"] for batch in batches for run in batch]
    assert sorted(sent) == sorted(run["id"] for run in runs)  # each run once
    assert len(batches) >= len(runs) // 250
    assert sum(len(batch) == 25 for batch in batches) >= len(batches) // 2
    # within a batch, parents before their children (dotted order); across batches the order does not
    # matter: batch ingestion takes a run whose parent is not there yet (it carries its trace and dotted order)
    for batch in batches:
        assert [run["dotted_order"] for run in batch] == sorted(run["dotted_order"] for run in batch)
    together = [(batch, run) for batch in batches for run in batch
                if run.get("parent_run_id") in {r["id"] for r in batch}]
    assert together, "some children travel with their parent"
    # the runs the target already holds are asked by id, a batch at a time, not sent again
    assert proxy.count("POST", "/api/v2/runs/query") == len(batches)


def test_a_rejected_batch_fails_the_restore_naming_the_runs_and_the_cause(
        langsmith_backup, blank_target, restore_context, make_config, monkeypatch):
    manifest, _, runs = langsmith_backup
    reject = lambda method, path, seen: 422 if path == "/runs/batch" and seen == 1 else None  # noqa: E731
    with Proxy(blank_target.api_url, reject) as proxy:
        connection_to(monkeypatch, "langsmith_target_proxy", proxy.port, blank_target.api_key)
        restorer = LangSmithComponent(settings_for(make_config, "langsmith_target_proxy"))
        with pytest.raises(ComponentError) as failure:
            restorer.restore(restore_context(manifest, "langsmith", restorer.settings), "all")
    message = str(failure.value)
    assert message.startswith("langsmith[all]: LangSmith API at http://127.0.0.1:")
    assert "could not create runs" in message and "422" in message
    assert blank_target.api_key[:5] not in message
    assert proxy.count("POST", "/runs/batch", 422) == 1  # a 422 is not retried
    # the first batch went in, nothing after the rejected one
    assert len(run_ids_of(blank_target, runs[0]["session_id"])) == 100


def test_restore_batches_are_never_cut_between_runs_that_started_together():
    from ragvault.components.langsmith import _batches

    def run(number: int, start: str) -> dict:
        return {"id": f"run-{number}", "start_time": f"2045-01-01T00:00:0{start}"}

    runs = [run(0, "0"), run(1, "1"), run(2, "2"), run(3, "2"), run(4, "2"), run(5, "3"), run(6, "4")]
    assert [[r["id"] for r in batch] for batch in _batches(iter(runs), 2)] == [
        ["run-0", "run-1"], ["run-2", "run-3", "run-4"], ["run-5", "run-6"]]
    # ten times the batch size at most, whatever the ties
    tied = [run(n, "5") for n in range(25)]
    assert [len(batch) for batch in _batches(tied, 2)] == [20, 5]
    assert [len(batch) for batch in _batches(runs, 100)] == [7]


def test_an_unreachable_target_fails_the_inspection_naming_it(langsmith_backup, restore_context, make_config,
                                                              monkeypatch):
    manifest, _, _ = langsmith_backup
    port = free_port()
    connection_to(monkeypatch, "langsmith_nowhere", port, "lsv2_pt_nowhere0123456789abcdef")
    restorer = LangSmithComponent(settings_for(make_config, "langsmith_nowhere", max_retries=1,
                                               backoff_seconds=0.01))
    ctx = restore_context(manifest, "langsmith", restorer.settings)
    expected = rf"^langsmith\[all\]: LangSmith API at http://127\.0\.0\.1:{port}: .*Connection refused"
    for step in (restorer.inspect_target, restorer.restore, restorer.verify_restore):
        with pytest.raises(ComponentError, match=expected) as failure:
            step(ctx, "all")
        assert "lsv2_" not in str(failure.value)


def test_a_server_without_the_v2_query_is_read_through_the_v1_one(make_config, repo, backup_date, tmp_path,
                                                                   monkeypatch, restore_context, caplog):
    """Self-hosted LangSmith before 0.16 has no POST /api/v2/runs/query (404): the backup says so and reads the
    runs through the v1 query as plain HTTP (no deprecated SDK method), records which query it used, and that
    backup restores onto a current server (the v2 query) equal run for run."""
    from langsmith import Client

    from ragvault.repository import utcnow_iso

    day = dt.date(2044, 6, 1) + dt.timedelta(days=random.randrange(0, 300))
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    with private_langsmith(tmp_path / "old", monkeypatch, "langsmith_old", version="0.15.4") as old:
        tracer = Client(api_url=old.api_url, api_key=old.api_key, auto_batch_tracing=False)
        try:
            seed_langsmith(tracer, [day], prefix="old-", traces_per_day=4)
        finally:
            tracer.close(timeout=0)
        dataset = {run["id"]: run for project in langsmith_dataset([day], prefix="old-", traces_per_day=4)
                   for run in project.runs}
        settings = settings_for(make_config, "langsmith_old")
        ctx = BackupContext(repo=repo, date=backup_date, component="langsmith", run={
            "run_id": "old", "data_interval_start": start.isoformat(),
            "data_interval_end": (start + dt.timedelta(days=1)).isoformat()})
        with caplog.at_level("WARNING", logger="ragvault"):
            result = LangSmithComponent(settings).backup(ctx, None)
        assert result.source_version == "0.15.4"
    assert result.details["runs_api"] == "v1"
    assert "api/v2/runs/query answered HTTP 404" in result.details["runs_api_reason"]
    assert "before 0.16" in result.details["runs_api_reason"] and "v1 POST /runs/query" in caplog.text
    _, runs = read_back(repo, result)
    assert {run["id"] for run in runs} == set(dataset) and len(runs) == result.counts["runs"] > 10
    for run in runs:
        sent = dataset[run["id"]]
        assert (run["trace_id"], run["parent_run_id"], run["dotted_order"], run["name"]) == (
            sent["trace_id"], sent.get("parent_run_id"), sent["dotted_order"], sent["name"])
        assert run["run_type"] == sent["run_type"] and run["inputs"] == sent["inputs"]

    manifest = repo.build_manifest(backup_date, [result], {"run_id": "old", "at": utcnow_iso()})
    repo.commit_manifest(manifest)
    with private_langsmith(tmp_path / "new", monkeypatch, "langsmith_new") as new:
        restorer = LangSmithComponent(settings_for(make_config, "langsmith_new"))
        restore = restore_context(manifest, "langsmith", restorer.settings)
        counts = restorer.restore(restore, "all")
        assert counts["runs"] == len(runs)
        assert restorer.verify_restore(restore, "all") == []
        restored = server_runs(new, sorted({run["session_id"] for run in runs}))
        assert {run_id: as_backed_up(run) for run_id, run in restored.items()} == {
            run["id"]: {**{k: run[k] for k in as_backed_up(next(iter(restored.values())))},
                        "start_time": moment(run["start_time"]), "end_time": moment(run["end_time"])}
            for run in runs}
