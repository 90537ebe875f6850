"""LangSmith: observability and debugging, the execution logs of the chains and agents.

The backup writes, under ``<date>/langsmith/``:

``projects.json``
    a JSON array of the workspace's tracing projects (every one, or those ``projects`` names or patterns
    select, minus ``exclude_projects``), each exactly as ``GET /sessions`` returns it: id, name,
    description, start and end time, ``extra`` (with the project's metadata), reference dataset id,
    default dataset id, tenant id, trace tier...
``runs.json.zst``
    the runs of those projects that *started* in the DAG run's data interval
    (``data_interval_start <= start_time < data_interval_end``), as **JSON Lines**: one JSON object a line,
    compressed with zstd. The name keeps the plan's ``runs.json``; the content is a stream so that a
    busy workspace never has to fit in memory. Each line is one run read through ``POST /api/v2/runs/query``
    (the SDK's generated client, ``client.runs.query``; cursor pagination, explicit field selection, one
    project after the other, newest first as the API sends them) with its place in the tree: ``id``,
    ``trace_id``, ``parent_run_id``, ``parent_run_ids``, ``dotted_order``, ``session_id`` (the project),
    ``name``, ``run_type``, ``start_time``, ``end_time``, ``status``, ``inputs``, ``outputs``, ``error``,
    ``tags``, ``extra`` (metadata, runtime), ``events``, tokens and costs; plus ``feedback``: the run's
    feedback records (key, score, value, comment, correction, source...), fetched for a batch of runs at a
    time. A server without the v2 query (self-hosted LangSmith before 0.16) is read through the v1
    ``POST /runs/query`` as plain HTTP; the manifest's ``runs_api`` says which one was used.

The result counts ``projects``, ``runs``, ``traces`` (the root runs among them: traces that started in
the interval) and ``feedback``; its details give the interval used and the runs of each project.

A run is kept by its own start time, so a trace that crosses the interval's end is split between two days'
backups and each run is in exactly one of them. When the run has no usable data interval (a manual run,
an empty interval) the 24 hours before its logical date (or before now) are backed up, and the log says so.

Rate limits and outages are handled by the SDK's retry configuration (:class:`LangSmithHook`): HTTP 429 and
5xx answers and connection errors are retried with a bounded exponential backoff that honours
``Retry-After``; what still fails raises a :class:`ComponentError` naming the API URL and the cause.
Files attached to runs (attachments) are not backed up: the SDK would download each one while listing.

Restore (one item, ``all``) writes the backup into the target workspace (the ``langsmith`` connection):

* each project of ``projects.json`` is looked up by name. A missing one is created with its backed-up id,
  name, description, ``extra`` (metadata) and start and end time (``POST /sessions`` accepts the id); an
  existing one keeps its id and gets the backed-up description, ``extra`` and end time. When the name
  exists under another id (or the id is taken by another project) the runs and feedback are restored
  into the target's project: its id replaces the backed-up one, and the log says so. Links to datasets
  (reference and default dataset ids) are not restored: datasets are not part of the backup.
* ``runs.json.zst`` is streamed ``restore_batch`` runs at a time (never the whole file in memory), each
  batch sorted by ``dotted_order`` so parents go before their children (a batch is never cut between
  two runs that started at the same instant, so a child that started with its parent travels with it),
  and sent through the SDK's batch ingestion with the same ids, trace ids, parents, dotted orders,
  times, inputs, outputs, errors, tags, ``extra`` (metadata and runtime), events and name; the service
  derives ``status``, ``parent_run_ids``, ``child_run_ids``, tokens and costs from them again. The runs
  the target already holds (asked by id first) are counted as present and not sent: the service would
  answer ``409 Conflict`` and keep its copy, as a run cannot be created twice.
* the feedback of each run is created with its own id, key, score, value, comment, correction, source
  and creation time, unless the target already holds a record with that id.

So restoring twice creates no duplicate. ``verify_restore`` checks that every project exists with its
description and metadata, that each holds as many runs started in the backup's interval as the backup,
that every backed-up feedback record is there, and compares a sample of ``verify_sample`` runs field by
field with ``runs.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import requests

from ragvault.components.base import INTERVAL, BackupContext, Component, ComponentError, RestoreContext, parse_time
from ragvault.config import select
from ragvault.hooks.langsmith import LangSmithHook, RunsQueryMissing
from ragvault.repository import ItemResult, iter_lines, utcnow_iso

#: the fields asked of ``POST /api/v2/runs/query`` (the SDK's own list for the same purpose, ``_V2_RUN_SELECTS``
#: in ``langsmith/_internal/_v2_migration_utils.py``). ``ATTACHMENTS`` is left out on purpose: attachments are not
#: backed up.
V2_SELECTS = (
    "ID", "NAME", "RUN_TYPE", "STATUS", "START_TIME", "END_TIME", "INPUTS", "OUTPUTS", "PARENT_RUN_IDS",
    "PROJECT_ID", "TRACE_ID", "DOTTED_ORDER", "REFERENCE_EXAMPLE_ID", "ERROR", "TAGS", "EXTRA", "EVENTS",
    "FEEDBACK_STATS", "FIRST_TOKEN_TIME", "APP_PATH", "PROMPT_TOKENS", "COMPLETION_TOKENS", "TOTAL_TOKENS",
    "PROMPT_COST", "COMPLETION_COST", "TOTAL_COST",
)
#: the same fields asked of the v1 ``POST /runs/query``, for servers without the v2 query (``s3_urls`` left out:
#: with it every attachment is fetched)
RUN_FIELDS = (
    "id", "trace_id", "parent_run_id", "parent_run_ids", "dotted_order", "session_id", "name", "run_type",
    "start_time", "end_time", "status", "inputs", "outputs", "error", "tags", "extra", "events",
    "reference_example_id", "feedback_stats", "app_path", "first_token_time", "prompt_tokens", "completion_tokens",
    "total_tokens", "prompt_cost", "completion_cost", "total_cost",
)
#: times in a run record, written as ISO 8601 in UTC whatever API they came from
RUN_TIMES = ("start_time", "end_time", "first_token_time")
#: the fields of a backed-up run sent back to create it (the service derives the others again)
RUN_CREATE_FIELDS = (
    "id", "trace_id", "parent_run_id", "dotted_order", "name", "run_type", "start_time", "end_time",
    "inputs", "outputs", "error", "tags", "extra", "events", "serialized", "reference_example_id",
)
#: the fields verify_restore compares between a restored run and runs.json (``session_id`` is compared
#: with the target project's id)
RUN_VERIFY_FIELDS = (
    "trace_id", "parent_run_id", "parent_run_ids", "dotted_order", "session_id", "name", "run_type",
    "start_time", "end_time", "status", "inputs", "outputs", "error", "tags", "extra", "events",
)
FEEDBACK_CREATE_FIELDS = (
    "id", "created_at", "modified_at", "run_id", "trace_id", "key", "score", "value", "comment",
    "correction", "start_time", "comparative_experiment_id", "feedback_group_id", "extra",
)
PROJECT_PAGE = 100
MAX_PROJECT_PAGES = 100_000
PROGRESS_EVERY = 10_000


class LangSmithComponent(Component):
    name = "langsmith"
    title = "LangSmith (observability): projects, the interval's runs with their trees and feedback"
    item_noun = None
    #: runs are interval data; the projects they belong to go with them (captured when the task runs)
    parts = frozenset({INTERVAL})

    def hook(self) -> LangSmithHook:
        return LangSmithHook(
            langsmith_conn_id=self.settings.conn_id("langsmith"),
            timeout=float(self.config.get("timeout_seconds", 60)),
            max_retries=int(self.config.get("max_retries", 5)),
            backoff_factor=float(self.config.get("backoff_seconds", 0.5)),
            max_backoff=float(self.config.get("max_backoff_seconds", 30)),
        )

    def endpoint(self) -> str:
        return self.hook().api_url

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        start, end, source = ctx.window()
        with self.hook() as hook, self._api_errors(hook, None):
            return self._backup(ctx, hook, start, end, source)

    def _backup(self, ctx: BackupContext, hook: LangSmithHook, start: datetime, end: datetime,
                source: str) -> ItemResult:
        client = hook.get_conn()
        captured_at = utcnow_iso()
        projects = self.projects(client)
        version = hook.server_version()
        ctx.log.info("langsmith %s at %s: %d project(s) selected: %s", version or "(version unknown)",
                     hook.api_url, len(projects), ", ".join(p["name"] for p in projects) or "none")
        projects_artifact = ctx.put_artifact(
            "projects.json", json.dumps(projects, indent=2, ensure_ascii=False).encode(),
            content_type="application/json")

        counts = {"projects": len(projects), "runs": 0, "traces": 0, "feedback": 0}
        per_project: dict[str, int] = {}
        batch_size = max(1, int(self.config.get("feedback_batch", 100)))
        runs_json = ctx.open_artifact("runs.json", compression="zstd", content_type="application/x-ndjson")
        with runs_json as writer:
            for project in projects:
                before = counts["runs"]
                batch: list[dict[str, Any]] = []
                for run in self._runs(ctx.log, hook, [project["id"]], start, end):
                    batch.append(run)
                    if len(batch) == batch_size:
                        self._write(writer, client, batch, counts, ctx)
                        batch = []
                if batch:
                    self._write(writer, client, batch, counts, ctx)
                if counts["runs"] > before:
                    per_project[project["name"]] = counts["runs"] - before
                    ctx.log.info("langsmith: project %s, %d run(s)", project["name"], counts["runs"] - before)
        ctx.log.info("langsmith: %d run(s) in %d trace(s), %d feedback record(s) between %s and %s",
                     counts["runs"], counts["traces"], counts["feedback"], start.isoformat(), end.isoformat())
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=version,
            counts=counts,
            artifacts=[projects_artifact, writer.artifact],
            details={
                "interval": {"start": start.isoformat(), "end": end.isoformat(), "source": source},
                "api_url": hook.api_url,
                "runs_api": hook.runs_api,
                **({"runs_api_reason": hook.runs_api_reason} if hook.runs_api_reason else {}),
                "runs_per_project": per_project,
            },
        )

    def projects(self, client) -> list[dict[str, Any]]:
        """The selected projects as ``GET /sessions`` returns them, sorted by name."""
        found: dict[str, dict[str, Any]] = {}
        for page_number in range(MAX_PROJECT_PAGES):
            params = {"limit": PROJECT_PAGE, "offset": page_number * PROJECT_PAGE}
            page = client.request_with_retries("GET", "/sessions", params=params).json()
            for project in page:
                found.setdefault(project.get("name") or project["id"], project)
            if len(page) < PROJECT_PAGE:
                break
        else:
            raise ComponentError(self.name, None, f"more than {MAX_PROJECT_PAGES * PROJECT_PAGE} projects")
        names = select(found, self.config.get("projects"), self.config.get("exclude_projects"))
        return [found[name] for name in names]

    @staticmethod
    def _runs(log, hook: LangSmithHook, project_ids: list[str], start: datetime, end: datetime,
              ids: list[str] | None = None, selects: Iterable[str] = V2_SELECTS) -> Iterator[dict[str, Any]]:
        """The runs of the projects that started in ``[start, end)`` (of ``ids`` only, when given), newest
        first as the API sends them, one page in memory at a time, each as a run record (:func:`run_record`).

        Through ``POST /api/v2/runs/query``; a server without it (self-hosted LangSmith before 0.16) is asked
        through the v1 ``POST /runs/query`` instead, once it has said so, and the log and manifest say it.
        """
        if not project_ids:
            return
        # [start, end) whatever bound the server's max_start_time is: the filter keeps the end out
        window = f'and(gte(start_time, "{start.isoformat()}"), lt(start_time, "{end.isoformat()}"))'
        if hook.runs_api == "v2":
            try:
                for run in hook.query_runs(project_ids=project_ids, start=start, end=end, selects=selects,
                                           filter=window, ids=ids):
                    yield run_record(run.model_dump(mode="json"), api="v2")
                return
            except RunsQueryMissing as exc:
                hook.runs_api, hook.runs_api_reason = "v1", str(exc)
                log.warning("langsmith: %s; using the v1 POST /runs/query instead", exc)
        body: dict[str, Any] = {"session": project_ids, "filter": window, "start_time": start.isoformat(),
                                "select": list(RUN_FIELDS), "order": "desc", "limit": 100}
        if ids is not None:
            body["id"] = ids
        for run in hook.query_runs_v1(body):
            yield run_record(run, api="v1")

    @staticmethod
    def _write(writer, client, batch: list[dict[str, Any]], counts: dict[str, int],
               ctx: BackupContext) -> None:
        """Attach their feedback to a batch of runs and write them, one JSON object a line."""
        feedback: dict[str, list[dict[str, Any]]] = {run["id"]: [] for run in batch}
        for record in client.list_feedback(run_ids=list(feedback)):
            item = record.model_dump(mode="json")
            if item.get("run_id") in feedback:
                feedback[item["run_id"]].append(item)
        for run in batch:
            run["feedback"] = feedback[run["id"]]
            writer.write(json.dumps(run, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
            counts["runs"] += 1
            counts["traces"] += run.get("parent_run_id") is None
            counts["feedback"] += len(run["feedback"])
            if counts["runs"] % PROGRESS_EVERY == 0:
                ctx.log.info("langsmith: %d runs so far", counts["runs"])

    # -- restore --------------------------------------------------------------------------------------

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        projects = _backup_projects(ctx, item)
        start, end = _backup_interval(ctx, item)
        with self.hook() as hook, self._api_errors(hook, item):
            client = hook.get_conn()
            held = {}
            for project in projects:
                found = _find_project(client, project["name"])
                if found is not None:
                    held[project["name"]] = _count(self._runs(ctx.log, hook, [found["id"]], start, end,
                                                              selects=("ID",)))
        if not held:
            return {"holds_data": False,
                    "what": f"none of the {len(projects)} backed-up project(s) exists on the target"}
        runs = ", ".join(f"{name}: {count}" for name, count in held.items())
        return {"holds_data": True,
                "what": f"{len(held)} of the {len(projects)} backed-up project(s) exist on the target, "
                        f"holding {sum(held.values())} run(s) started between {start.isoformat()} and "
                        f"{end.isoformat()} ({runs}); the runs already there are kept, the others added"}

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        projects = _backup_projects(ctx, item)
        batch_size = max(1, int(self.config.get("restore_batch", 100)))
        counts = {"projects": 0, "projects_created": 0, "projects_remapped": 0, "runs": 0, "runs_present": 0,
                  "traces": 0, "feedback": 0, "feedback_present": 0}
        with self.hook() as hook, self._api_errors(hook, item):
            client = hook.get_conn()
            ctx.log.info("langsmith: restoring %d project(s) and %d run(s) of the backup of %s into %s",
                         len(projects), ctx.item(item)["counts"].get("runs", 0), ctx.date, hook.api_url)
            project_ids = {project["id"]: self._restore_project(ctx, client, project, counts)
                           for project in projects}
            for batch in _batches(_backup_runs(ctx, item), batch_size):
                self._restore_batch(ctx, hook, item, batch, project_ids, counts)
                done = counts["runs"] + counts["runs_present"]
                if done // PROGRESS_EVERY > (done - len(batch)) // PROGRESS_EVERY:
                    ctx.log.info("langsmith: %d runs so far", done)
        ctx.log.info("langsmith: %d project(s) (%d created), %d run(s) in %d trace(s) and %d feedback "
                     "record(s) restored; %d run(s) and %d feedback record(s) were already there",
                     counts["projects"], counts["projects_created"], counts["runs"], counts["traces"],
                     counts["feedback"], counts["runs_present"], counts["feedback_present"])
        return counts

    def _restore_project(self, ctx: RestoreContext, client, project: dict[str, Any],
                         counts: dict[str, int]) -> str:
        """Create or update one backed-up project on the target; return its id there."""
        from langsmith.utils import LangSmithConflictError

        name = project["name"]
        fields = {key: project.get(key) for key in ("description", "extra", "end_time")
                  if project.get(key) is not None}
        existing = _find_project(client, name)
        if existing is None:
            body = {"id": project["id"], "name": name, **fields}
            if project.get("start_time"):
                body["start_time"] = project["start_time"]
            try:
                target = _send(client, "POST", "/sessions", body).json()
            except LangSmithConflictError:  # the id belongs to another project on the target
                del body["id"]
                target = _send(client, "POST", "/sessions", body).json()
            counts["projects_created"] += 1
        elif fields:
            target = _send(client, "PATCH", f"/sessions/{existing['id']}", fields).json()
        else:
            target = existing
        if target["id"] != project["id"]:
            counts["projects_remapped"] += 1
            ctx.log.warning("langsmith: project %s is %s on the target (%s in the backup): its runs and "
                            "feedback are restored there", name, target["id"], project["id"])
        links = [key for key in ("reference_dataset_id", "default_dataset_id") if project.get(key)]
        if links:
            ctx.log.info("langsmith: project %s: %s not restored (datasets are not part of the backup)",
                         name, " and ".join(links))
        counts["projects"] += 1
        return target["id"]

    def _restore_batch(self, ctx: RestoreContext, hook: LangSmithHook, item: str, batch: list[dict[str, Any]],
                       project_ids: dict[str, str], counts: dict[str, int]) -> None:
        """Create the batch's runs the target lacks (parents first), then their missing feedback."""
        from langsmith.utils import LangSmithConflictError

        client = hook.get_conn()
        batch.sort(key=lambda run: run["dotted_order"])
        ids = [run["id"] for run in batch]
        unknown = next((run for run in batch if run.get("session_id") not in project_ids), None)
        if unknown is not None:
            raise ComponentError(self.name, item,
                                 f"runs.json: run {unknown['id']} belongs to project "
                                 f"{unknown.get('session_id')}, which projects.json does not list")
        present = {run["id"] for run in self._runs(ctx.log, hook, _targets(batch, project_ids), *_span(batch),
                                                   ids=ids, selects=("ID",))}
        new = [run for run in batch if run["id"] not in present]
        try:
            hook.ingest_runs([_run_payload(run, project_ids) for run in new])
        except Exception as exc:
            if not _is_api_error(exc):
                raise
            raise ComponentError(self.name, item, f"LangSmith API at {hook.api_url}: could not create runs "
                                 f"{new[0]['id']} .. {new[-1]['id']}: {hook.describe_error(exc)}") from exc
        counts["runs"] += len(new)
        counts["runs_present"] += len(batch) - len(new)
        counts["traces"] += sum(run.get("parent_run_id") is None for run in new)

        stored = {str(record.id) for record in client.list_feedback(run_ids=ids)}
        for run in batch:
            for record in run.get("feedback") or ():
                if record["id"] in stored:
                    counts["feedback_present"] += 1
                    continue
                try:
                    _send(client, "POST", "/feedback", _feedback_payload(record, run, project_ids))
                except LangSmithConflictError:
                    counts["feedback_present"] += 1
                else:
                    counts["feedback"] += 1

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        problems: list[str] = []
        entry = ctx.item(item)
        projects = _backup_projects(ctx, item)
        start, end = _backup_interval(ctx, item)
        per_project = entry["details"].get("runs_per_project") or {}
        sample = max(1, int(self.config.get("verify_sample", 100)))
        step = max(1, -(-int(entry["counts"].get("runs", 0)) // sample))  # every step-th run of runs.json
        with self.hook() as hook, self._api_errors(hook, item):
            client = hook.get_conn()
            project_ids: dict[str, str] = {}
            for project in projects:
                name = project["name"]
                found = _find_project(client, name)
                if found is None:
                    problems.append(f"project {name} missing")
                    continue
                project_ids[project["id"]] = found["id"]
                for key, want, got in (
                        ("description", project.get("description"), found.get("description")),
                        ("metadata", (project.get("extra") or {}).get("metadata"),
                         (found.get("extra") or {}).get("metadata"))):
                    if want is not None and got != want:
                        problems.append(f"project {name}: its {key} differs from projects.json")
                runs = _count(self._runs(ctx.log, hook, [found["id"]], start, end, selects=("ID",)))
                if runs != per_project.get(name, 0):
                    problems.append(f"project {name}: {runs} run(s) started between {start.isoformat()} and "
                                    f"{end.isoformat()}, {per_project.get(name, 0)} in the backup")

            sampled: list[dict[str, Any]] = []
            missing_feedback: list[str] = []
            index = 0
            for batch in _batches(_backup_runs(ctx, item), 100):
                for run in batch:
                    if index % step == 0:
                        sampled.append(run)
                    index += 1
                stored = {str(record.id) for record in client.list_feedback(run_ids=[r["id"] for r in batch])}
                missing_feedback += [record["id"] for run in batch for record in run.get("feedback") or ()
                                     if record["id"] not in stored]
            if missing_feedback:
                problems.append(f"{len(missing_feedback)} feedback record(s) of runs.json missing on the "
                                f"target (first: {missing_feedback[0]})")
            problems += self._compare_sample(ctx.log, hook, sampled, project_ids)
        return problems

    @classmethod
    def _compare_sample(cls, log, hook: LangSmithHook, sampled: list[dict[str, Any]],
                        project_ids: dict[str, str]) -> list[str]:
        """The differences between these backed-up runs and the target's, field by field."""
        problems = []
        for first in range(0, len(sampled), 100):
            chunk = sampled[first:first + 100]
            found = {run["id"]: run for run in cls._runs(log, hook, _targets(chunk, project_ids), *_span(chunk),
                                                          ids=[run["id"] for run in chunk])}
            for run in chunk:
                restored = found.get(run["id"])
                if restored is None:
                    problems.append(f"run {run['id']} ({run['name']}) missing")
                    continue
                expected = run_record({**run, "session_id": project_ids.get(run["session_id"], run["session_id"])},
                                      api="v1")
                differ = [key for key in RUN_VERIFY_FIELDS if restored.get(key) != expected.get(key)]
                if differ:
                    problems.append(f"run {run['id']} ({run['name']}): {', '.join(differ)} "
                                    "differ from runs.json")
        return problems

    @contextmanager
    def _api_errors(self, hook: LangSmithHook, item: str | None) -> Iterator[None]:
        """Turn API errors into a :class:`ComponentError` naming the API URL and the cause."""
        try:
            yield
        except ComponentError:
            raise
        except Exception as exc:
            if not _is_api_error(exc):
                raise
            raise ComponentError(self.name, item,
                                 f"LangSmith API at {hook.api_url}: {hook.describe_error(exc)}") from exc


def _backup_projects(ctx: RestoreContext, item: str) -> list[dict[str, Any]]:
    """The projects of ``projects.json`` (a small file)."""
    return json.loads(b"".join(ctx.read(ctx.artifact(item, "projects.json"))))


def _backup_interval(ctx: RestoreContext, item: str) -> tuple[datetime, datetime]:
    """``(start, end)`` of the runs the backup holds, from its manifest."""
    window = ctx.item(item)["details"]["interval"]
    return parse_time(window["start"]), parse_time(window["end"])


def _backup_runs(ctx: RestoreContext, item: str) -> Iterator[dict[str, Any]]:
    """The runs of ``runs.json.zst``, one line decoded at a time."""
    return (json.loads(line) for line in iter_lines(ctx.read(ctx.artifact(item, "runs.json.zst"))))


def _batches(runs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """``size`` consecutive runs at a time, never cut between two runs that started at the same instant
    (the file is ordered by start time: a child that started with its parent stays in its batch), up to ten
    times ``size``. Batch ingestion takes a child whose parent is not there yet (it carries its trace id and
    dotted order), so the order between batches does not matter."""
    batch: list[dict[str, Any]] = []
    for run in runs:
        if len(batch) >= size and (run["start_time"] != batch[-1]["start_time"] or len(batch) >= 10 * size):
            yield batch
            batch = []
        batch.append(run)
    if batch:
        yield batch


def _count(items: Iterable[Any]) -> int:
    return sum(1 for _ in items)


def _find_project(client, name: str) -> dict[str, Any] | None:
    """The target's project of that name, as ``GET /sessions`` describes it, or ``None``."""
    found = client.request_with_retries("GET", "/sessions", params={"name": name, "limit": 1}).json()
    return next((project for project in found if project.get("name") == name), None)


def _send(client, method: str, path: str, body: dict[str, Any]):
    """A JSON request through the SDK's session (its retries, headers and error classes)."""
    return client.request_with_retries(method, path, request_kwargs={"data": json.dumps(body).encode()})


def _run_payload(run: dict[str, Any], project_ids: dict[str, str]) -> dict[str, Any]:
    """The create payload of a backed-up run, into the target's project."""
    payload = {key: run[key] for key in RUN_CREATE_FIELDS if run.get(key) is not None}
    payload["session_id"] = project_ids[run["session_id"]]
    return payload


def _feedback_payload(record: dict[str, Any], run: dict[str, Any],
                      project_ids: dict[str, str]) -> dict[str, Any]:
    """The ``POST /feedback`` body of a backed-up feedback record (the SDK's ``FeedbackCreate``)."""
    from langsmith import schemas

    fields = {key: record[key] for key in FEEDBACK_CREATE_FIELDS if record.get(key) is not None}
    fields.update(run_id=record.get("run_id"), trace_id=record.get("trace_id"))
    source = record.get("feedback_source") or {"type": "api"}
    session = record.get("session_id") or run["session_id"]
    feedback = schemas.FeedbackCreate(**fields, feedback_source=schemas.FeedbackSourceBase(**source),
                                      session_id=project_ids.get(session, session))
    return feedback.model_dump(mode="json", exclude_none=True)


def run_record(run: dict[str, Any], *, api: str) -> dict[str, Any]:
    """A run as ``runs.json`` holds it, from either query's JSON: the v1 run's fields (``session_id``,
    ``parent_run_id``, lower-case ``run_type`` and ``status``) with times in UTC ISO 8601.

    A v2 run says ``project_id`` and lists its ancestors in ``parent_run_ids`` (root first), so its parent is
    the last of them; its ``run_type`` and ``status`` are upper case (the mapping of the SDK's
    ``_v2_run_to_schema`` in ``langsmith/_internal/_v2_migration_utils.py``).
    """
    record = {key: run.get(key) for key in RUN_FIELDS}
    if api == "v2":
        ancestors = run.get("parent_run_ids") or []
        record.update(session_id=run.get("project_id"), parent_run_id=ancestors[-1] if ancestors else None)
    for key in ("run_type", "status"):
        if isinstance(record[key], str):
            record[key] = record[key].lower()
    record["parent_run_ids"] = list(record["parent_run_ids"] or [])
    record["inputs"] = record["inputs"] or {}
    for key in RUN_TIMES:
        if record[key] is not None:
            record[key] = _utc(record[key])
    if record["events"]:
        # the v2 Event model has name, time and kwargs; the v1 API gives the events as they were sent
        record["events"] = [{**{k: v for k, v in event.items() if v is not None},
                             **({"time": _utc(event["time"])} if event.get("time") else {})}
                            if isinstance(event, dict) else event for event in record["events"]]
    return record


def _utc(value: Any) -> str:
    return parse_time(value).isoformat().replace("+00:00", "Z")


def _targets(runs: list[dict[str, Any]], project_ids: dict[str, str]) -> list[str]:
    """The target's ids of the projects these backed-up runs belong to."""
    return sorted({project_ids.get(run["session_id"], run["session_id"]) for run in runs})


def _span(runs: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    """``[first start, last start]`` of these runs, as a half-open interval that holds them all."""
    from datetime import timedelta

    times = [parse_time(run["start_time"]) for run in runs]
    return min(times), max(times) + timedelta(microseconds=1)


def _is_api_error(exc: BaseException) -> bool:
    import langsmith
    from langsmith import utils as ls_utils

    return isinstance(exc, (ls_utils.LangSmithError, langsmith.APIError, requests.RequestException))
