"""The LangSmith emulator (``include/devstack/langsmith_emulator.py``) driven by the real SDK.

Every test talks HTTP to an emulator running in a thread of this process, through an unchanged
``langsmith.Client`` (plus a few raw ``requests`` calls for wire-level checks), and reads the data
back. The SDK's background tracing thread is flushed and stopped (``Client.close``) after each
test so pytest exits promptly.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

pytest.importorskip(
    "langsmith",
    reason="the langsmith SDK (langsmith==0.14.17) is not installed in this environment",
)

from langsmith import Client, RunTree
from langsmith import utils as ls_utils

from devstack.langsmith_emulator import LangSmithEmulatorServer, make_server

pytestmark = [
    pytest.mark.timeout(60),
    # The v1 endpoints (POST /runs/query, GET /runs/{id}) are driven through the SDK's v1 methods on purpose:
    # they are what a server before 0.16 has, the package's fallback. The suite fails on these notices
    # elsewhere (pyproject's filterwarnings); the v2 query is tested below through the generated client.
    pytest.mark.filterwarnings("ignore::langsmith._internal._beta_decorator.LangSmithDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The child_run_ids field is deprecated:DeprecationWarning"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR_SCRIPT = REPO_ROOT / "include" / "devstack" / "langsmith_emulator.py"
API_KEY = "ragvault-langsmith-test-key"
BASE = datetime(2025, 9, 22, 10, 0, tzinfo=UTC)


def start_emulator(
    data_dir: Path, api_key: str | None = API_KEY
) -> tuple[LangSmithEmulatorServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, str(data_dir), api_key=api_key)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="langsmith-emulator-test",
        daemon=True,
    )
    thread.start()
    return server, thread


def stop_emulator(server: LangSmithEmulatorServer, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


@pytest.fixture(scope="module", autouse=True)
def isolated_env():
    """Keep LANGSMITH_*/LANGCHAIN_* settings of the caller's shell out of the SDK."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("LANGSMITH_", "LANGCHAIN_")):
                patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def emulator(tmp_path_factory, isolated_env):
    server, thread = start_emulator(tmp_path_factory.mktemp("langsmith"))
    yield server
    stop_emulator(server, thread)


@pytest.fixture
def client(emulator):
    ls_client = Client(api_url=emulator.url, api_key=API_KEY)
    yield ls_client
    ls_client.close(timeout=10)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def api(emulator, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"x-api-key": API_KEY, **kwargs.pop("headers", {})}
    return requests.request(method, emulator.url + path, headers=headers, timeout=10, **kwargs)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def root_payload(project: str, start: datetime, **fields) -> dict:
    run_id = str(uuid.uuid4())
    return {
        "id": run_id,
        "trace_id": run_id,
        "dotted_order": stamp(start) + run_id,
        "name": fields.pop("name", "root"),
        "run_type": fields.pop("run_type", "chain"),
        "start_time": start.isoformat(),
        "session_name": project,
        "inputs": fields.pop("inputs", {"n": 1}),
        **fields,
    }


def child_payload(parent: dict, start: datetime, **fields) -> dict:
    run_id = str(uuid.uuid4())
    return {
        "id": run_id,
        "trace_id": parent["trace_id"],
        "parent_run_id": parent["id"],
        "dotted_order": f"{parent['dotted_order']}.{stamp(start)}{run_id}",
        "name": fields.pop("name", "child"),
        "run_type": fields.pop("run_type", "llm"),
        "start_time": start.isoformat(),
        "session_name": parent["session_name"],
        "inputs": fields.pop("inputs", {"prompt": "p"}),
        **fields,
    }


def copies(*runs: dict) -> list[dict]:
    """Deep copies: the SDK's ingest methods rewrite and pop fields of the dicts they are given."""
    return copy.deepcopy(list(runs))


def project_run_ids(client: Client, project: str, **kwargs) -> list[str]:
    return [str(run.id) for run in client.list_runs(project_name=project, **kwargs)]


# ---------------------------------------------------------------------------
# Service info and authentication
# ---------------------------------------------------------------------------


def test_info_steers_the_sdk_to_json_batch_ingestion(emulator, client):
    resp = requests.get(f"{emulator.url}/info", timeout=10)  # no key: /info is public
    assert resp.status_code == 200
    config = resp.json()["batch_ingest_config"]
    assert config["use_multipart_endpoint"] is False
    assert {"size_limit", "scale_up_nthreads_limit", "scale_up_qsize_trigger"} <= config.keys()
    assert client.info.batch_ingest_config["use_multipart_endpoint"] is False
    assert client.info.version == resp.json()["version"]
    # The same API also answers under the /api/v1 prefix of self-hosted deployments.
    assert api(emulator, "GET", "/api/v1/sessions", params={"limit": 1}).status_code == 200


def test_requests_without_the_api_key_are_rejected(emulator):
    assert requests.get(f"{emulator.url}/sessions", timeout=10).status_code == 401
    wrong = requests.get(f"{emulator.url}/sessions", headers={"x-api-key": "nope"}, timeout=10)
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "Invalid API key"}
    assert api(emulator, "GET", "/sessions").status_code == 200

    for key in (None, "wrong-key"):
        anonymous = Client(api_url=emulator.url, api_key=key, auto_batch_tracing=False)
        try:
            with pytest.raises(ls_utils.LangSmithAuthError):
                list(anonymous.list_projects())
            with pytest.raises(ls_utils.LangSmithAuthError):
                anonymous.create_project(unique("denied"))
        finally:
            anonymous.close(timeout=5)


# ---------------------------------------------------------------------------
# Projects (sessions)
# ---------------------------------------------------------------------------


def test_project_lifecycle(emulator, client):
    name = unique("project")
    project = client.create_project(name, description="RAG traces", metadata={"team": "rag"})
    assert project.name == name
    assert project.metadata == {"team": "rag"}

    with pytest.raises(ls_utils.LangSmithConflictError):
        client.create_project(name)
    assert client.create_project(name, upsert=True).id == project.id

    read = client.read_project(project_name=name)
    assert (read.id, read.description, read.tenant_id) == (project.id, "RAG traces", project.tenant_id)
    assert client.read_project(project_id=project.id).name == name
    assert [p.id for p in client.list_projects(name=name)] == [project.id]
    assert project.id in {p.id for p in client.list_projects(reference_free=True)}
    assert project.id not in {p.id for p in client.list_projects(reference_free=False)}
    assert [p.id for p in client.list_projects(metadata={"team": "rag"}, name_contains=name)] == [project.id]

    end = BASE + timedelta(days=1)
    updated = client.update_project(project.id, description="closed", end_time=end)
    assert updated.description == "closed"
    assert client.read_project(project_name=name).end_time == end.replace(tzinfo=None)

    run = root_payload(name, BASE)
    client.batch_ingest_runs(create=copies(run))
    assert api(emulator, "GET", f"/runs/{run['id']}").status_code == 200

    client.delete_project(project_name=name)
    assert not client.has_project(name)
    with pytest.raises(ls_utils.LangSmithNotFoundError):
        client.read_project(project_id=project.id)
    assert api(emulator, "GET", f"/runs/{run['id']}").status_code == 404


def test_list_projects_pages_with_offset_and_limit(emulator, client):
    prefix = unique("paged")
    created = {client.create_project(f"{prefix}-{i:03d}").id for i in range(105)}

    listed = [p.id for p in client.list_projects(name_contains=prefix)]
    assert len(listed) == 105
    assert set(listed) == created

    first = api(emulator, "GET", "/sessions", params={"name_contains": prefix, "limit": 100}).json()
    rest = api(
        emulator, "GET", "/sessions", params={"name_contains": prefix, "limit": 100, "offset": 100}
    ).json()
    assert (len(first), len(rest)) == (100, 5)
    assert [p["start_time"] for p in first] == sorted((p["start_time"] for p in first), reverse=True)
    assert len(list(client.list_projects(name_contains=prefix, limit=7))) == 7


# ---------------------------------------------------------------------------
# Traces through the SDK's background tracer
# ---------------------------------------------------------------------------


def build_trace(client: Client, project: str, label: str, start: datetime, *, fail: bool) -> list[RunTree]:
    """A chain with two child LLM runs, posted and patched like instrumented code does."""
    root = RunTree(
        name=f"{label}-chain",
        run_type="chain",
        inputs={"question": f"what is {label}?"},
        project_name=project,
        ls_client=client,
        start_time=start,
        tags=["rag", label],
        extra={"metadata": {"tenant": "acme", "trace": label}},
    )
    root.post()
    first = root.create_child(
        name="llm-1",
        run_type="llm",
        inputs={"prompt": "retrieve"},
        start_time=start + timedelta(seconds=1),
        tags=["first"],
        extra={"metadata": {"model": "gpt-4.1-mini"}},
    )
    first.post()
    first.end(
        outputs={"text": f"{label} context"},
        end_time=start + timedelta(seconds=2),
        events=[{"name": "cache_miss", "time": (start + timedelta(seconds=1.5)).isoformat()}],
    )
    first.patch()
    second = root.create_child(
        name="llm-2",
        run_type="llm",
        inputs={"prompt": "answer"},
        start_time=start + timedelta(seconds=3),
    )
    second.post()
    if fail:
        second.end(error="RateLimitError: quota exceeded", end_time=start + timedelta(seconds=4))
        second.patch()
        root.end(error="RateLimitError: quota exceeded", end_time=start + timedelta(seconds=5))
    else:
        second.end(outputs={"text": f"{label} answer"}, end_time=start + timedelta(seconds=4))
        second.patch()
        root.end(outputs={"answer": f"{label} answer"}, end_time=start + timedelta(seconds=5))
    root.patch()
    return [root, first, second]


def single_run(client: Client, project: str, name: str, start: datetime) -> RunTree:
    run = RunTree(
        name=name, run_type="tool", inputs={"x": 1}, project_name=project, ls_client=client, start_time=start
    )
    run.post()
    run.end(outputs={"y": 2}, end_time=start + timedelta(milliseconds=5))
    run.patch()
    return run


@pytest.fixture
def traced(client):
    """Two traces inside [BASE, BASE + 1h), runs just outside it and a run in another project."""
    project, other = unique("traces"), unique("elsewhere")
    trace_a = build_trace(client, project, "alpha", BASE, fail=False)
    trace_b = build_trace(client, project, "beta", BASE + timedelta(minutes=30), fail=True)
    early = single_run(client, project, "too-early", BASE - timedelta(microseconds=1))
    late = single_run(client, project, "too-late", BASE + timedelta(hours=1))
    foreign = single_run(client, other, "foreign", BASE + timedelta(minutes=10))
    client.flush(timeout=10)
    return {
        "project": project,
        "other": other,
        "a": trace_a,
        "b": trace_b,
        "early": early,
        "late": late,
        "foreign": foreign,
    }


WINDOW_FILTER = (
    f'and(gte(start_time, "{BASE.isoformat()}"), lt(start_time, "{(BASE + timedelta(hours=1)).isoformat()}"))'
)


def test_list_runs_in_a_start_time_window_returns_the_exact_tree(client, traced):
    project = client.read_project(project_name=traced["project"])
    expected = traced["a"] + traced["b"]

    runs = list(client.list_runs(project_name=traced["project"], filter=WINDOW_FILTER))
    assert sorted(str(r.id) for r in runs) == sorted(str(r.id) for r in expected)
    assert [r.start_time for r in runs] == sorted((r.start_time for r in runs), reverse=True)

    by_id = {r.id: r for r in runs}
    for sent in expected:
        got = by_id[sent.id]
        assert got.trace_id == sent.trace_id
        assert got.parent_run_id == sent.parent_run_id
        assert got.dotted_order == sent.dotted_order
        assert got.session_id == project.id
        assert (got.name, got.run_type) == (sent.name, sent.run_type)
        assert (got.start_time, got.end_time) == (sent.start_time, sent.end_time)
        assert got.inputs == sent.inputs
        assert got.outputs == sent.outputs
        assert got.error == sent.error
        assert got.tags == (sent.tags or [])
        assert got.events == sent.events
        assert sent.metadata.items() <= got.metadata.items()
        assert got.extra["runtime"]["sdk"] == "langsmith-py"
        assert got.status == ("error" if sent.error else "success")

    _, first_a, second_a = traced["a"]
    assert by_id[first_a.id].events[0]["name"] == "cache_miss"
    assert by_id[second_a.id].metadata["trace"] == "alpha"  # children inherit the root's metadata
    assert [r.id for r in client.list_runs(project_name=traced["other"])] == [traced["foreign"].id]


def test_run_tree_fields_computed_by_the_server(emulator, client, traced):
    root, first, second = traced["b"]
    stored = client.read_run(root.id)
    assert stored.child_run_ids == [first.id, second.id]
    assert stored.parent_run_ids == []
    child = client.read_run(second.id)
    assert child.parent_run_ids == [root.id]
    assert child.child_run_ids is None
    raw = api(emulator, "GET", f"/runs/{root.id}").json()
    assert raw["direct_child_run_ids"] == [str(first.id), str(second.id)]
    assert raw["status"] == "error"

    loaded = client.read_run(root.id, load_child_runs=True)
    assert [(c.id, c.name) for c in loaded.child_runs] == [(first.id, "llm-1"), (second.id, "llm-2")]


def test_list_runs_filters(client, traced):
    project = traced["project"]
    root_a, first_a, second_a = traced["a"]
    root_b, first_b, second_b = traced["b"]

    def ids(**kwargs) -> set:
        return {r.id for r in client.list_runs(project_name=project, **kwargs)}

    assert ids(filter=WINDOW_FILTER, is_root=True) == {root_a.id, root_b.id}
    assert ids(filter=WINDOW_FILTER, run_type="llm") == {first_a.id, second_a.id, first_b.id, second_b.id}
    assert ids(error=True) == {root_b.id, second_b.id}
    assert ids(trace_id=root_a.id) == {root_a.id, first_a.id, second_a.id}
    assert ids(parent_run_id=root_b.id) == {first_b.id, second_b.id}
    assert ids(run_ids=[root_a.id, traced["late"].id]) == {root_a.id, traced["late"].id}
    assert ids(start_time=BASE + timedelta(minutes=30)) == {
        root_b.id,
        first_b.id,
        second_b.id,
        traced["late"].id,
    }
    assert ids(filter='and(eq(run_type, "llm"), has(tags, "first"))') == {first_a.id, first_b.id}
    assert ids(filter='in(name, ["too-early", "too-late"])') == {traced["early"].id, traced["late"].id}
    assert ids(filter=f'or(eq(id, "{root_a.id}"), eq(trace_id, "{root_b.id}"))') == {
        root_a.id,
        root_b.id,
        first_b.id,
        second_b.id,
    }
    assert ids(
        filter=f'and(gt(start_time, "{BASE.isoformat()}"), lte(start_time, "{first_a.start_time.isoformat()}"))'
    ) == {first_a.id}
    assert ids(filter='eq(name, "llm-2")', trace_filter='eq(status, "error")') == {second_b.id}
    assert ids(is_root=True, tree_filter='has(tags, "first")') == {root_a.id, root_b.id}

    both = {
        r.id
        for r in client.list_runs(
            project_id=[client.read_project(project_name=n).id for n in (project, traced["other"])],
            filter=WINDOW_FILTER,
        )
    }
    assert both == {r.id for r in traced["a"] + traced["b"]} | {traced["foreign"].id}

    selected = list(client.list_runs(project_name=project, trace_id=root_a.id, select=["name", "inputs"]))
    assert {r.name for r in selected} == {"alpha-chain", "llm-1", "llm-2"}
    assert all(r.inputs and r.outputs is None and r.parent_run_id is None for r in selected)

    with pytest.raises(ls_utils.LangSmithError, match="unsupported field"):
        list(client.list_runs(project_name=project, filter='eq(colour, "red")'))


def test_project_stats(client, traced):
    (stats,) = client.list_projects(name=traced["project"], include_stats=True)
    assert stats.run_count == 8
    assert stats.error_rate == pytest.approx(0.25)  # one failed root out of four
    assert stats.last_run_start_time == (BASE + timedelta(hours=1)).replace(tzinfo=None)


# ---------------------------------------------------------------------------
# Cursor pagination, re-ingestion, other ingest paths
# ---------------------------------------------------------------------------


def test_list_runs_follows_cursors_across_pages(emulator, client):
    project = unique("many")
    payloads = [root_payload(project, BASE + timedelta(seconds=i), name=f"run-{i:03d}") for i in range(250)]
    client.batch_ingest_runs(create=payloads)

    runs = list(client.list_runs(project_name=project))
    assert [r.name for r in runs] == [f"run-{i:03d}" for i in reversed(range(250))]
    assert len(list(client.list_runs(project_name=project, limit=150))) == 150

    session = str(client.read_project(project_name=project).id)
    body: dict = {"session": [session], "order": "asc"}
    pages = []
    for _ in range(5):
        page = api(emulator, "POST", "/runs/query", json=body).json()
        pages.append([r["name"] for r in page["runs"]])
        if not page["cursors"]["next"]:
            break
        body["cursor"] = page["cursors"]["next"]
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [name for page in pages for name in page] == [f"run-{i:03d}" for i in range(250)]


def test_concurrent_writers_and_readers(emulator):
    """Eight clients ingest at once while another caller pages through the runs."""
    project = unique("concurrent")

    def writer(worker: int) -> None:
        ls_client = Client(api_url=emulator.url, api_key=API_KEY, auto_batch_tracing=False)
        try:
            for batch in range(5):
                start = BASE + timedelta(minutes=worker, seconds=batch * 10)
                runs = [
                    root_payload(project, start + timedelta(seconds=i), name=f"w{worker}") for i in range(10)
                ]
                ls_client.batch_ingest_runs(create=runs)
        finally:
            ls_client.close(timeout=5)

    def reader() -> int:
        statuses = [
            api(emulator, "POST", "/runs/query", json={"filter": 'eq(name, "w0")'}).status_code
            for _ in range(10)
        ]
        return statuses.count(200)

    with ThreadPoolExecutor(max_workers=9) as pool:
        writes = [pool.submit(writer, worker) for worker in range(8)]
        reads = pool.submit(reader)
        for future in writes:
            future.result(timeout=30)
        assert reads.result(timeout=30) == 10
    (stats,) = client_list_projects(emulator, name=project, include_stats=True)
    assert stats.run_count == 8 * 5 * 10
    assert len(project_run_ids_raw(emulator, stats.id)) == 400


def client_list_projects(emulator, **kwargs) -> list:
    ls_client = Client(api_url=emulator.url, api_key=API_KEY, auto_batch_tracing=False)
    try:
        return list(ls_client.list_projects(**kwargs))
    finally:
        ls_client.close(timeout=5)


def project_run_ids_raw(emulator, session_id) -> set[str]:
    body: dict = {"session": [str(session_id)], "select": ["id"]}
    ids: set[str] = set()
    for _ in range(10):
        page = api(emulator, "POST", "/runs/query", json=body).json()
        ids.update(run["id"] for run in page["runs"])
        if not page["cursors"]["next"]:
            return ids
        body["cursor"] = page["cursors"]["next"]
    raise AssertionError("more pages than expected")


def test_reingesting_runs_does_not_duplicate_them(emulator, client):
    project = unique("reingest")
    root = root_payload(
        project, BASE, outputs={"answer": "first"}, end_time=(BASE + timedelta(seconds=2)).isoformat()
    )
    child = child_payload(root, BASE + timedelta(seconds=1), outputs={"text": "first"})
    client.batch_ingest_runs(create=copies(root, child))
    assert len(project_run_ids(client, project)) == 2

    changed = {**root, "outputs": {"answer": "second"}}
    client.batch_ingest_runs(create=copies(changed, child))  # the 409 is tolerated by the SDK
    client.multipart_ingest(create=copies(changed, child))
    sequential = Client(api_url=emulator.url, api_key=API_KEY, auto_batch_tracing=False)
    try:
        sequential.create_run(
            **{k: v for k, v in changed.items() if k != "session_name"}, project_name=project
        )
    finally:
        sequential.close(timeout=5)

    runs = list(client.list_runs(project_name=project))
    assert sorted(str(r.id) for r in runs) == sorted([root["id"], child["id"]])
    assert client.read_run(root["id"]).outputs == {"answer": "first"}

    newcomer = child_payload(root, BASE + timedelta(seconds=3), name="newcomer")
    resp = api(emulator, "POST", "/runs/batch", json={"post": [root, newcomer], "patch": []})
    assert resp.status_code == 409
    assert root["id"] in resp.json()["detail"]
    assert len(project_run_ids(client, project)) == 3  # the new run of that batch was stored


def test_single_run_endpoints_derive_the_tree(emulator):
    project = unique("single")
    sequential = Client(api_url=emulator.url, api_key=API_KEY, auto_batch_tracing=False)
    try:
        root_id, child_id = uuid.uuid4(), uuid.uuid4()
        sequential.create_run(
            "plan", {"goal": "x"}, "chain", id=root_id, project_name=project, start_time=BASE
        )
        sequential.create_run(
            "search",
            {"q": "x"},
            "retriever",
            id=child_id,
            parent_run_id=root_id,
            project_name=project,
            start_time=BASE + timedelta(seconds=1),
        )
        sequential.update_run(child_id, outputs={"documents": ["d1"]}, end_time=BASE + timedelta(seconds=2))
        sequential.update_run(root_id, error="boom", end_time=BASE + timedelta(seconds=3))

        root, child = sequential.read_run(root_id), sequential.read_run(child_id)
        assert root.dotted_order == f"{stamp(BASE)}{root_id}"
        assert child.dotted_order == f"{root.dotted_order}.{stamp(BASE + timedelta(seconds=1))}{child_id}"
        assert (child.trace_id, child.parent_run_id) == (root_id, root_id)
        assert (child.outputs, child.status) == ({"documents": ["d1"]}, "success")
        assert (root.error, root.status, root.child_run_ids) == ("boom", "error", [child_id])
    finally:
        sequential.close(timeout=5)


def test_updates_arriving_before_their_run_are_merged(emulator, client):
    project = unique("early-patch")
    root = root_payload(project, BASE)
    patch = {
        "id": root["id"],
        "trace_id": root["trace_id"],
        "dotted_order": root["dotted_order"],
        "outputs": {"done": True},
        "end_time": (BASE + timedelta(seconds=1)).isoformat(),
    }
    assert api(emulator, "POST", "/runs/batch", json={"post": [], "patch": [patch]}).status_code == 202
    assert api(emulator, "GET", f"/runs/{root['id']}").status_code == 404
    assert api(emulator, "POST", "/runs/batch", json={"post": [root], "patch": []}).status_code == 202
    stored = client.read_run(root["id"])
    assert (stored.outputs, stored.status, stored.inputs) == ({"done": True}, "success", {"n": 1})


def test_multipart_ingest_with_attachments(emulator, client):
    project = unique("multipart")
    root = root_payload(project, BASE, attachments={"report": ("text/plain", b"retrieval report")})
    child = child_payload(root, BASE + timedelta(seconds=1))
    client.multipart_ingest(create=copies(root, child))
    update = {
        "id": child["id"],
        "trace_id": child["trace_id"],
        "parent_run_id": root["id"],
        "dotted_order": child["dotted_order"],
        "outputs": {"text": "ok"},
        "end_time": (BASE + timedelta(seconds=2)).isoformat(),
    }
    client.multipart_ingest(update=[update])  # sent as patch.<id> parts of their own
    stored = client.read_run(root["id"])
    assert stored.attachments["report"]["reader"].read() == b"retrieval report"
    assert stored.attachments["report"]["mime_type"] == "text/plain"
    assert (client.read_run(child["id"]).outputs, client.read_run(child["id"]).status) == (
        {"text": "ok"},
        "success",
    )
    assert stored.child_run_ids == [uuid.UUID(child["id"])]

    url = api(emulator, "GET", f"/runs/{root['id']}").json()["s3_urls"]["attachment.report"]["presigned_url"]
    assert requests.get(emulator.url + url.split("?")[0] + "?signature=forged", timeout=10).status_code == 403


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda run: run.update(dotted_order="2025-09-22T10:00:00Z" + run["id"]), "invalid segment"),
        (lambda run: run.update(dotted_order=stamp(BASE) + str(uuid.uuid4())), "last dotted_order segment"),
        (lambda run: run.update(trace_id=str(uuid.uuid4())), "first dotted_order segment"),
        (lambda run: run.update(parent_run_id=str(uuid.uuid4())), "parent dotted_order segment"),
        (lambda run: run.pop("parent_run_id"), "parent_run_id is required"),
        (
            lambda run: run.update(
                dotted_order=run["dotted_order"].replace(
                    stamp(BASE + timedelta(seconds=1)), stamp(BASE - timedelta(seconds=1))
                )
            ),
            "must not decrease",
        ),
        (lambda run: run.update(run_type="agent"), "run_type"),
    ],
)
def test_ingest_validates_the_run_tree(emulator, client, mutate, message):
    project = unique("invalid")
    root = root_payload(project, BASE)
    child = child_payload(root, BASE + timedelta(seconds=1))
    mutate(child)
    resp = api(emulator, "POST", "/runs/batch", json={"post": [root, child], "patch": []})
    assert resp.status_code == 422
    assert message in resp.json()["detail"]
    assert api(emulator, "GET", f"/runs/{root['id']}").status_code == 404  # nothing of the batch stored
    assert not client.has_project(project)


# ---------------------------------------------------------------------------
# Feedback
# ---------------------------------------------------------------------------


def test_feedback_create_list_update(client, traced):
    project = client.read_project(project_name=traced["project"])
    root, first, _ = traced["a"]
    correctness = client.create_feedback(
        root.id, "correctness", score=1, comment="grounded", trace_id=root.id, session_id=project.id
    )
    client.create_feedback(
        first.id, "relevance", score=0.5, value="partial", trace_id=root.id, session_id=project.id
    )
    client.create_feedback(root.id, "helpfulness", score=0, trace_id=root.id, session_id=project.id)

    on_root = {f.key: f for f in client.list_feedback(run_ids=[root.id])}
    assert set(on_root) == {"correctness", "helpfulness"}
    assert (on_root["correctness"].score, on_root["correctness"].comment) == (1, "grounded")
    assert on_root["correctness"].id == correctness.id
    assert on_root["correctness"].session_id == project.id
    assert on_root["correctness"].trace_id == root.id
    both_runs = list(client.list_feedback(run_ids=[root.id, first.id], feedback_key=["relevance"]))
    assert [(f.run_id, f.value) for f in both_runs] == [(first.id, "partial")]

    client.update_feedback(correctness.id, score=0, comment="hallucinated")
    updated = client.read_feedback(correctness.id)
    assert (updated.score, updated.comment) == (0, "hallucinated")

    stats = client.read_run(root.id).feedback_stats
    assert stats["correctness"]["n"] == 1 and stats["helpfulness"]["avg"] == 0

    client.delete_feedback(correctness.id)
    assert {f.key for f in client.list_feedback(run_ids=[root.id])} == {"helpfulness"}


# ---------------------------------------------------------------------------
# Persistence and the command line
# ---------------------------------------------------------------------------


def test_state_survives_a_restart(tmp_path):
    server, thread = start_emulator(tmp_path)
    first_client = Client(api_url=server.url, api_key=API_KEY)
    try:
        project = first_client.create_project("persisted")
        build_trace(first_client, "persisted", "gamma", BASE, fail=False)
        first_client.flush(timeout=10)
    finally:
        first_client.close(timeout=5)
        stop_emulator(server, thread)

    server, thread = start_emulator(tmp_path)
    second_client = Client(api_url=server.url, api_key=API_KEY, auto_batch_tracing=False)
    try:
        again = second_client.read_project(project_name="persisted")
        assert (again.id, again.tenant_id) == (project.id, project.tenant_id)
        assert len(list(second_client.list_runs(project_name="persisted"))) == 3
    finally:
        second_client.close(timeout=5)
        stop_emulator(server, thread)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_command_line_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EMULATOR_SCRIPT), "--host", "127.0.0.1", "--port", str(port)]
        + ["--data-dir", str(tmp_path / "data"), "--api-key", API_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/info", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "the emulator did not start within 20 s"
            time.sleep(0.1)
        created = requests.post(
            f"{base}/sessions", json={"name": "cli"}, headers={"x-api-key": API_KEY}, timeout=5
        )
        assert created.status_code == 200
        assert requests.get(f"{base}/sessions", timeout=5).status_code == 401
    finally:
        process.terminate()
        try:
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
            process.stdout.close()
    assert (tmp_path / "data" / "langsmith.sqlite3").is_file()


# ---------------------------------------------------------------------------
# The v2 runs query (POST /api/v2/runs/query), through the SDK's generated client
# ---------------------------------------------------------------------------


def v2_client(emulator):
    from langsmith import Langsmith

    return Langsmith(api_key=API_KEY, base_url=emulator.url, max_retries=0)


V2_ALL = ["ID", "NAME", "RUN_TYPE", "STATUS", "START_TIME", "END_TIME", "INPUTS", "OUTPUTS", "PARENT_RUN_IDS",
          "PROJECT_ID", "TRACE_ID", "DOTTED_ORDER", "ERROR", "TAGS", "EXTRA", "EVENTS", "IS_ROOT"]


def test_v2_runs_query_returns_the_window_newest_first_in_the_v2_shape(emulator, client, traced):
    """RunsResource.query_v2 (langsmith/resources/runs/runs.py) and the v2 Run (langsmith/types/run.py):
    project_ids and the [min_start_time, max_start_time] window select, items come newest first (the SDK's
    StreamingQueryV2Response reference: "sorted by start_time descending"), only the selected fields,
    project_id instead of session_id, parent_run_ids root first, upper-case run_type and status."""
    project = client.read_project(project_name=traced["project"])
    expected = traced["a"] + traced["b"]
    with v2_client(emulator) as api_v2:
        runs = list(api_v2.runs.query_v2(project_ids=[str(project.id)], min_start_time=BASE,
                                         max_start_time=BASE + timedelta(hours=1) - timedelta(microseconds=1),
                                         selects=V2_ALL))
        assert sorted(r.id for r in runs) == sorted(str(r.id) for r in expected)
        keys = [(r.start_time, r.id) for r in runs]
        assert keys == sorted(keys, reverse=True)
        by_id = {r.id: r for r in runs}
        for sent in expected:
            got = by_id[str(sent.id)]
            assert got.project_id == str(project.id) and got.trace_id == str(sent.trace_id)
            ancestors = [str(sent.trace_id)] if sent.parent_run_id else []
            assert got.parent_run_ids == ancestors and got.is_root is (sent.parent_run_id is None)
            assert got.run_type == sent.run_type.upper()
            assert got.status == ("ERROR" if sent.error else "SUCCESS")
            assert (got.start_time, got.end_time) == (sent.start_time.replace(tzinfo=UTC),
                                                      sent.end_time.replace(tzinfo=UTC))
            assert got.inputs == sent.inputs and got.outputs == sent.outputs and got.error == sent.error
            assert got.dotted_order == sent.dotted_order and got.name == sent.name
        # only the selected fields come back; without selects, only the id
        [one] = list(api_v2.runs.query_v2(project_ids=[str(project.id)], ids=[str(traced["a"][0].id)],
                                          min_start_time=BASE - timedelta(days=1), selects=["ID", "NAME"]))
        assert one.model_dump(exclude_none=True) == {"id": str(traced["a"][0].id), "name": traced["a"][0].name}
        [bare] = list(api_v2.runs.query_v2(project_ids=[str(project.id)], ids=[str(traced["a"][0].id)],
                                           min_start_time=BASE - timedelta(days=1)))
        assert bare.model_dump(exclude_none=True) == {"id": str(traced["a"][0].id)}
        # a filter narrows as in v1; the default window is the last day, so these old runs are not in it
        errors = list(api_v2.runs.query_v2(project_ids=[str(project.id)], min_start_time=BASE - timedelta(days=1),
                                           filter='eq(status, "error")', selects=["ID"]))
        assert {r.id for r in errors} == {str(traced["b"][0].id), str(traced["b"][2].id)}
        assert list(api_v2.runs.query_v2(project_ids=[str(project.id)], selects=["ID"])) == []


def test_v2_runs_query_pages_with_its_cursor(emulator, client, traced):
    project = client.read_project(project_name=traced["project"])
    with v2_client(emulator) as api_v2:
        first = api_v2.runs.query_v2(project_ids=[str(project.id)], min_start_time=BASE - timedelta(days=1),
                                     page_size=2, selects=["ID", "START_TIME"])
        assert len(first.items) == 2 and first.next_cursor
        every = [r.id for r in api_v2.runs.query_v2(project_ids=[str(project.id)], page_size=2,
                                                    min_start_time=BASE - timedelta(days=1), selects=["ID"])]
    assert len(every) == len(set(every)) == 8  # two traces of three runs, too-early and too-late


@pytest.mark.parametrize(("body", "message"), [
    ({"selects": ["ID"]}, "project_ids is required"),
    ({"project_ids": ["PROJECT"], "page_size": 0}, "page_size must be between 1 and 1000"),
    ({"project_ids": ["PROJECT"], "page_size": 1001}, "page_size must be between 1 and 1000"),
    ({"project_ids": ["PROJECT"], "selects": ["id"]}, "unknown fields"),
    ({"project_ids": ["PROJECT"], "selects": ["SHARE_URL"]}, "not emulated"),
    ({"project_ids": ["PROJECT"], "run_type": "llm"}, "run_type must be one of"),
    ({"session": ["PROJECT"], "select": ["id"]}, "unknown parameters"),  # a v1 body
], ids=["no-projects", "page-0", "page-1001", "lower-case-select", "not-emulated", "lower-run-type", "v1-body"])
def test_v2_runs_query_refuses_what_its_params_do_not_allow(emulator, client, traced, body, message):
    project = str(client.read_project(project_name=traced["project"]).id)
    body = {key: [project if v == "PROJECT" else v for v in value] if isinstance(value, list) else value
            for key, value in body.items()}
    response = api(emulator, "POST", "/api/v2/runs/query", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_a_server_before_0_16_has_no_v2_runs_query(tmp_path):
    import langsmith

    server, thread = start_emulator_version(tmp_path, "0.15.4")
    try:
        assert requests.get(f"{server.url}/info", timeout=10).json()["version"] == "0.15.4"
        with v2_client(server) as api_v2, pytest.raises(langsmith.NotFoundError) as raised:
            list(api_v2.runs.query_v2(project_ids=[str(uuid.uuid4())], selects=["ID"]))
        assert raised.value.status_code == 404 and raised.value.body == {"detail": "Not Found"}
        # the v1 query is there
        response = requests.post(f"{server.url}/runs/query", json={"limit": 1}, headers={"x-api-key": API_KEY},
                                 timeout=10)
        assert response.status_code == 200 and response.json()["runs"] == []
    finally:
        stop_emulator(server, thread)


def start_emulator_version(data_dir: Path, version: str):
    server = make_server("127.0.0.1", 0, str(data_dir), api_key=API_KEY, version=version)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


def _undeclared(model) -> list[str]:
    """Fields of a parsed SDK model (and of its nested models) that the SDK's type does not declare."""
    from pydantic import BaseModel

    found = [f"{type(model).__name__}.{key}" for key in (model.model_extra or {})]
    for value in model.__dict__.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found += _undeclared(item)
    return found


def test_v2_answers_hold_only_what_the_sdks_types_declare(emulator, client, traced):
    """langsmith/types/runs/streaming_query_v2_response.py (StreamingQueryV2Response) and langsmith/types/run.py
    (Run, with its RunType and status Literals): the raw answer, every field selected, parses with the SDK's own
    models and carries no field they do not declare; the request body is one RunQueryV2Params accepts
    (langsmith/types/run_query_v2_params.py)."""
    from langsmith.types.run_query_v2_params import RunQueryV2Params
    from langsmith.types.runs.streaming_query_v2_response import StreamingQueryV2Response

    project = str(client.read_project(project_name=traced["project"]).id)
    body = {"project_ids": [project], "min_start_time": (BASE - timedelta(days=1)).isoformat(), "selects": V2_ALL,
            "page_size": 3}
    assert set(body) <= set(RunQueryV2Params.__annotations__)
    answer = api(emulator, "POST", "/api/v2/runs/query", json=body)
    assert answer.status_code == 200, answer.text
    parsed = StreamingQueryV2Response.model_validate(answer.json())
    assert len(parsed.items) == 3 and parsed.next_cursor
    assert _undeclared(parsed) == []
    assert all(run.run_type in ("CHAIN", "LLM", "TOOL", "RETRIEVER", "EMBEDDING", "PROMPT", "PARSER")
               for run in parsed.items)

