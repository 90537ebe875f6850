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
    busy workspace never has to fit in memory. Each line is one run as the SDK's ``Run`` model reads it
    from ``POST /runs/query`` (paged with its cursor through ``Client.list_runs``, one project after the
    other, oldest first) with the whole tree: ``id``, ``trace_id``, ``parent_run_id``, ``parent_run_ids``,
    ``child_run_ids``, ``dotted_order``, ``session_id``, ``name``, ``run_type``, ``start_time``,
    ``end_time``, ``status``, ``inputs``, ``outputs``, ``error``, ``tags``, ``extra`` (metadata, runtime),
    ``events``, ``serialized``, tokens and costs; plus ``feedback``: the run's feedback records (key, score,
    value, comment, correction, source...), fetched for a batch of runs at a time.

The result counts ``projects``, ``runs``, ``traces`` (the root runs among them: traces that started in
the interval) and ``feedback``; its details give the interval used and the runs of each project.

A run is kept by its own start time, so a trace that crosses the interval's end is split between two days'
backups and each run is in exactly one of them. When the run has no usable data interval (a manual run,
an empty interval) the 24 hours before its logical date (or before now) are backed up, and the log says so.

Rate limits and outages are handled by the SDK's retry configuration (:class:`LangSmithHook`): HTTP 429 and
5xx answers and connection errors are retried with a bounded exponential backoff that honours
``Retry-After``; what still fails raises a :class:`ComponentError` naming the API URL and the cause.
Files attached to runs (attachments) are not backed up: the SDK would download each one while listing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.config import select
from ragvault.hooks.langsmith import LangSmithHook
from ragvault.repository import ItemResult, utcnow_iso

#: the run fields asked of ``POST /runs/query``. ``s3_urls`` is left out on purpose: with it the SDK
#: downloads every attachment of every run while listing.
RUN_FIELDS = (
    "id", "trace_id", "parent_run_id", "parent_run_ids", "child_run_ids", "dotted_order", "session_id",
    "name", "run_type", "start_time", "end_time", "status", "inputs", "outputs", "error", "tags", "extra",
    "events", "serialized", "reference_example_id", "feedback_stats", "app_path", "first_token_time",
    "prompt_tokens", "completion_tokens", "total_tokens", "prompt_cost", "completion_cost", "total_cost",
    "manifest_id", "in_dataset",
)
#: fields of the SDK's ``Run`` that are client-side objects, not data
RUN_EXCLUDE = {"attachments", "child_runs"}
FALLBACK_WINDOW = timedelta(hours=24)
PROJECT_PAGE = 100
MAX_PROJECT_PAGES = 100_000
PROGRESS_EVERY = 10_000


class LangSmithComponent(Component):
    name = "langsmith"
    title = "LangSmith (observability): projects, the interval's runs with their trees and feedback"
    item_noun = None

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
        start, end, source = interval(ctx)
        with self.hook() as hook:
            try:
                return self._backup(ctx, hook, start, end, source)
            except ComponentError:
                raise
            except Exception as exc:
                if not _is_api_error(exc):
                    raise
                raise ComponentError(self.name, None,
                                     f"LangSmith API at {hook.api_url}: {hook.describe_error(exc)}") from exc

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
                for run in self._runs(client, project["id"], start, end):
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
    def _runs(client, project_id: str, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
        """The project's runs started in ``[start, end)``, oldest first, one page in memory at a time."""
        window = f'and(gte(start_time, "{start.isoformat()}"), lt(start_time, "{end.isoformat()}"))'
        with _sdk_deprecations_silenced():
            runs = client.list_runs(project_id=project_id, start_time=start, filter=window,
                                    select=list(RUN_FIELDS), order="asc")
        while True:
            with _sdk_deprecations_silenced():  # the child_run_ids warning comes with the first page
                run = next(runs, None)
            if run is None:
                return
            yield run.model_dump(mode="json", exclude=RUN_EXCLUDE)

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


def interval(ctx: BackupContext) -> tuple[datetime, datetime, str]:
    """``(start, end, source)`` of the runs to back up: the data interval, or the 24 hours before the
    logical date (before now without one) when the interval is missing or empty."""
    start = _parse_time(ctx.run.get("data_interval_start"))
    end = _parse_time(ctx.run.get("data_interval_end"))
    if start is not None and end is not None and start < end:
        return start, end, "data_interval"
    logical = _parse_time(ctx.run.get("logical_date"))
    anchor, anchor_name = (logical, "the logical date") if logical is not None else (datetime.now(UTC), "now")
    start, end = anchor - FALLBACK_WINDOW, anchor
    ctx.log.warning("langsmith: the run has no usable data interval (start %s, end %s): backing up the runs "
                    "of the 24 hours before %s instead, [%s, %s)",
                    ctx.run.get("data_interval_start"), ctx.run.get("data_interval_end"), anchor_name,
                    start.isoformat(), end.isoformat())
    return start, end, f"24h before {anchor_name.removeprefix('the ')}"


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextmanager
def _sdk_deprecations_silenced() -> Iterator[None]:
    """Hide the SDK's notices that ``list_runs`` and ``child_run_ids`` have successors: in this SDK
    release they still are the documented way to page through runs with their tree, and the task log
    would otherwise repeat them for every project."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(is deprecated|child_run_ids)",
                                category=DeprecationWarning)
        yield


def _is_api_error(exc: BaseException) -> bool:
    from langsmith import utils as ls_utils

    return isinstance(exc, (ls_utils.LangSmithError, requests.RequestException))
