"""LangSmith hook: a ``langsmith.Client`` for projects, runs and feedback, the SDK's generated client for the
runs query of the v2 API, both with bounded retries."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from ragvault.hooks.base import ConnectionHook, connection_url

#: the hosted service, used when the connection names no host
DEFAULT_API_URL = "https://api.smith.langchain.com"
#: answers worth another try: timeouts, "too early", rate limiting and transient server errors
RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)


class LangSmithHook(ConnectionHook):
    """Talks to the LangSmith REST API (the hosted service or a self-hosted one).

    The connection (type ``http``) holds the API URL, either as ``schema`` (``https`` when empty),
    ``host`` and ``port``, or as a full URL in ``host`` (``https://langsmith.example.com/api/v1``); the
    API key as its ``password``; and optionally ``workspace_id`` in its extra, for org-scoped keys.

    The client reads, and writes back exactly what it is given: it starts no background tracing thread,
    ignores the tracing and OpenTelemetry settings of the environment, and neither hides, anonymises nor
    samples runs, nor adds this machine's runtime to them, whatever the ``LANGSMITH_HIDE_*`` or sampling
    variables say (a restore must send the backed-up runs unchanged). It retries through the SDK's own
    retry configuration (a urllib3 ``Retry`` mounted on its session): connection errors and HTTP
    408/425/429/5xx answers are retried up to ``max_retries`` times with exponential backoff, honouring
    ``Retry-After`` but never sleeping longer than ``max_backoff`` seconds at a time. Use the hook as a
    context manager, or call :meth:`close`, to release the client.

    :param langsmith_conn_id: the Airflow connection id.
    :param timeout: seconds allowed to read each answer.
    :param connect_timeout: seconds allowed to connect.
    :param max_retries: retries of one request before it fails.
    :param backoff_factor: the exponential backoff's base, in seconds (``factor * 2 ** (retry - 1)``).
    :param max_backoff: the longest sleep between two tries, in seconds (``Retry-After`` included).
    """

    conn_name_attr = "langsmith_conn_id"
    default_conn_name = "langsmith_default"
    conn_type = "http"
    hook_name = "LangSmith"

    def __init__(
        self,
        langsmith_conn_id: str = default_conn_name,
        timeout: float = 60,
        connect_timeout: float = 10,
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        max_backoff: float = 30,
    ) -> None:
        super().__init__()
        self.langsmith_conn_id = langsmith_conn_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.max_backoff = max_backoff
        self._client = None
        self._openapi = None
        self._ingest_errors: list[Exception] = []
        #: which runs query the server answers: ``v2`` (``POST /api/v2/runs/query``) until it says it has none
        self.runs_api = "v2"
        #: why the v1 query is used, when it is
        self.runs_api_reason: str | None = None

    @cached_property
    def api_url(self) -> str:
        if not (self.connection.host or "").strip():
            return DEFAULT_API_URL
        return connection_url(self.connection, scheme="https")

    @property
    def api_key(self) -> str | None:
        return self.connection.password or None

    @property
    def workspace_id(self) -> str | None:
        return self.connection.extra_dejson.get("workspace_id") or None

    def retry_config(self):
        """The urllib3 ``Retry`` the SDK mounts on its session (its own default, with our bounds)."""
        from langsmith.utils import LangSmithRetry

        return LangSmithRetry(
            total=self.max_retries,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # every method: the runs query is a POST that only reads
            backoff_factor=self.backoff_factor,
            backoff_max=self.max_backoff,
            backoff_jitter=min(self.backoff_factor, 1.0),
            respect_retry_after_header=True,
            retry_after_max=max(1, math.ceil(self.max_backoff)),
            raise_on_status=False,  # the last answer reaches the SDK, which names the status in its error
            raise_on_redirect=False,
        )

    def get_conn(self):
        """The hook's ``langsmith.Client`` (built on first use, closed by :meth:`close`)."""
        if self._client is None:
            from langsmith import Client

            self._client = Client(
                api_url=self.api_url,
                api_key=self.api_key,
                workspace_id=self.workspace_id,
                retry_config=self.retry_config(),
                timeout_ms=(int(self.connect_timeout * 1000), int(self.timeout * 1000)),
                auto_batch_tracing=False,  # no background tracing thread: runs are sent by ingest_runs
                tracing_mode="langsmith",  # not OpenTelemetry, whatever LANGSMITH_TRACING_MODE says
                disable_prompt_cache=True,
                # Runs go back as they were backed up, whatever the environment asks of a tracer.
                hide_inputs=False,
                hide_outputs=False,
                hide_metadata=False,
                omit_traced_runtime_info=True,
                tracing_sampling_rate=1.0,
                tracing_error_callback=self._ingest_errors.append,
            )
        return self._client

    @cached_property
    def openapi_url(self) -> str:
        """The API's root, without ``/api/v1``: where the generated client's ``/api/v2/...`` paths start."""
        url = self.api_url.rstrip("/")
        for suffix in ("/api/v1", "/api"):
            if url.endswith(suffix):
                return url[: -len(suffix)]
        return url

    def openapi(self):
        """The SDK's generated client (``langsmith.Langsmith``) for the v2 API, with the same key, workspace,
        timeouts and retry count (it retries connection errors, 408, 409, 429 and 5xx, honouring
        ``Retry-After``)."""
        if self._openapi is None:
            from langsmith import Langsmith, Timeout  # the SDK's own HTTP stack and its Timeout

            # one INFO line per request of a long paged read would bury the task's log: warnings only
            logging.getLogger("httpx2").setLevel(max(logging.getLogger("httpx2").getEffectiveLevel(), logging.WARNING))

            self._openapi = Langsmith(
                api_key=self.api_key or "", tenant_id=self.workspace_id, base_url=self.openapi_url,
                timeout=Timeout(self.timeout, connect=self.connect_timeout), max_retries=self.max_retries)
        return self._openapi

    def query_runs(self, *, project_ids: Sequence[str], start, end, selects: Sequence[str],
                   filter: str | None = None, ids: Sequence[str] | None = None,
                   page_size: int = 100) -> Iterator[Any]:
        """The runs of ``project_ids`` that started in ``[min_start_time, max_start_time]`` through ``POST
        /api/v2/runs/query`` (newest first, one page in memory at a time): the SDK's v2 ``Run`` models.

        Raises :class:`RunsQueryMissing` when the server has no such endpoint (self-hosted LangSmith before
        0.16), so that the caller can fall back on the v1 query.
        """
        import langsmith

        kwargs: dict[str, Any] = {"project_ids": list(project_ids), "min_start_time": start,
                                  "max_start_time": end, "selects": list(selects), "page_size": page_size}
        if filter:
            kwargs["filter"] = filter
        if ids is not None:
            kwargs["ids"] = list(ids)
        try:
            pages = self.openapi().runs.query_v2(**kwargs)
            yield from pages
        except (langsmith.NotFoundError, langsmith.APIStatusError) as exc:
            status = getattr(exc, "status_code", None)
            if status in (404, 405, 501) and _route_missing(exc):
                raise RunsQueryMissing(f"POST {self.openapi_url}/api/v2/runs/query answered HTTP {status}: "
                                       "the server has no v2 runs query (self-hosted LangSmith before 0.16)") from exc
            raise

    def query_runs_v1(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The runs ``POST /runs/query`` (API v1) answers for ``body``, every page (its ``cursors.next``), one
        page in memory at a time, as the JSON the server sends. For servers without the v2 query only: the
        SDK's methods over this endpoint are deprecated, so it is called as plain HTTP."""
        import json

        client = self.get_conn()
        cursor = None
        while True:
            page = client.request_with_retries(
                "POST", "/runs/query",
                request_kwargs={"data": json.dumps({**body, **({"cursor": cursor} if cursor else {})}).encode(),
                                "headers": {"Content-Type": "application/json"}}).json()
            yield from page.get("runs") or []
            cursor = (page.get("cursors") or {}).get("next")
            if not cursor:
                return

    def ingest_runs(self, runs: Sequence[dict[str, Any]]) -> None:
        """Create runs through the SDK's batch ingestion (``POST /runs/batch``, split at the server's size
        limit), and raise the first error.

        The SDK only logs a failed batch, as a tracer should; a restore must fail instead. A run the
        server already holds is answered ``409 Conflict``, which the SDK passes over: the server keeps
        one copy. The payloads are consumed (the SDK rewrites them).

        :param runs: run create payloads, each with ``id``, ``trace_id``, ``dotted_order`` and the
            project's ``session_id``.
        """
        if not runs:
            return
        client = self.get_conn()
        self._ingest_errors.clear()
        sdk_log = logging.getLogger("langsmith.client")
        sdk_log.addFilter(_drop_batch_failures)  # raised below, not logged twice (and never with a key)
        try:
            client.batch_ingest_runs(create=list(runs))
        finally:
            sdk_log.removeFilter(_drop_batch_failures)
        if self._ingest_errors:
            error = self._ingest_errors[0]
            self._ingest_errors.clear()
            raise error

    def close(self) -> None:
        """Close the clients' HTTP sessions and unregister the exit handler."""
        if self._client is not None:
            self._client.close(timeout=0)
            self._client = None
        if self._openapi is not None:
            self._openapi.close()
            self._openapi = None

    def __enter__(self) -> LangSmithHook:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def server_version(self) -> str | None:
        """The version ``GET /info`` reports, or ``None`` when the server does not say."""
        try:
            return self.get_conn().info.version or None
        except Exception:  # only decorates the manifest; a real outage fails the next call clearly
            return None

    def describe_error(self, exc: BaseException) -> str:
        """``exc`` as a one-line cause for an error message, without the API key.

        The SDK's connection errors append a partly masked API key: the underlying ``requests`` error is
        reported instead, and any trace of the key is removed from what remains.
        """
        import langsmith
        from langsmith import utils as ls_utils

        cause = exc
        if isinstance(exc, ls_utils.LangSmithConnectionError | langsmith.APIConnectionError) \
                and exc.__cause__ is not None:
            cause = exc.__cause__
        lines = [line for line in str(cause).splitlines()
                 if line.strip() and not line.lstrip().lower().startswith(("api key:", "content-length:"))]
        text = " ".join(line.strip() for line in lines)
        key = self.api_key
        if key:
            text = text.replace(key, "***")
            # the SDK's masked form: the first 5 and last 2 characters around asterisks
            text = re.sub(re.escape(key[:5]) + r"\*+" + re.escape(key[-2:]), "***", text)
        return f"{type(cause).__name__}: {text[:1000]}"


class RunsQueryMissing(RuntimeError):
    """The server has no ``POST /api/v2/runs/query``."""


def _route_missing(exc: BaseException) -> bool:
    """Whether an HTTP 404/405/501 says the route does not exist (not that a project or run is unknown)."""
    body = getattr(exc, "body", None)
    detail = body.get("detail") if isinstance(body, dict) else body
    return not detail or str(detail).strip().lower() in ("not found", "method not allowed", "not implemented")


def _drop_batch_failures(record: logging.LogRecord) -> bool:
    """A logging filter: the SDK's "Failed to batch ingest runs" warnings, which ingest_runs raises."""
    return not str(record.msg).startswith("Failed to batch ingest runs")
