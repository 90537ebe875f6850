"""A local emulator of the LangSmith REST API, sufficient for the ``langsmith`` Python SDK.

The devstack has no access to the hosted LangSmith service, so this module serves the subset of
the v1 REST API that the SDK's ``Client`` uses for tracing projects, runs and feedback. The SDK
talks to it unchanged::

    from langsmith import Client
    client = Client(api_url="http://127.0.0.1:11984", api_key="...")

Run it from the command line::

    python include/devstack/langsmith_emulator.py --host 127.0.0.1 --port 11984 \\
        --data-dir .devstack/langsmith [--api-key KEY]

or embed it (tests do)::

    server = make_server("127.0.0.1", 0, data_dir, api_key="key")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ...
    server.shutdown(); server.server_close()

Only the Python standard library is used. State lives in one SQLite database
(``<data-dir>/langsmith.sqlite3``) guarded by a lock, so the threaded HTTP server is safe to call
concurrently and the data survives restarts.

Emulated endpoints (an optional ``/api/v1`` or ``/api`` path prefix is accepted everywhere):

* ``GET /info`` (no auth): advertises JSON batch ingestion (``use_multipart_endpoint: false``),
  so the SDK's background tracer sends ``POST /runs/batch``. ``POST /runs/multipart`` is
  implemented as well (uncompressed; zstd is not advertised), for callers that use it directly.
* ``POST /sessions`` (409 on a duplicate name unless ``?upsert=true``), ``GET /sessions``
  (``id``, ``name``, ``name_contains``, ``reference_free``, ``reference_dataset``, ``metadata``,
  ``include_stats``, ``sort_by``, ``sort_by_desc``, ``offset``/``limit``),
  ``GET|PATCH|DELETE /sessions/{id}``.
* ``POST /runs``, ``PATCH /runs/{id}``, ``POST /runs/batch``, ``POST /runs/multipart``,
  ``POST /runs/query`` (cursor pagination through ``cursors.next``), ``GET /runs/{id}``,
  ``GET /runs/{id}/attachments/{name}`` (signed link, no auth).
* ``POST /feedback``, ``GET /feedback``, ``GET|PATCH|DELETE /feedback/{id}``, ``GET /settings``.

Runs are returned with the tree fields the service computes: ``parent_run_ids`` (ancestors, root
first), ``child_run_ids`` (all descendants in ``dotted_order`` order), ``direct_child_run_ids`` and
``status`` (``pending``, ``success`` or ``error``), plus ``feedback_stats`` and ``app_path``.

Ingestion follows the service's rules: ``dotted_order`` must be ``YYYYMMDDTHHMMSSffffffZ<uuid>``
segments joined by ``.``, whose last segment is the run itself, whose first is the trace root and
whose second to last is ``parent_run_id``, with non-decreasing timestamps. A second *create* of
an existing run id is answered with ``409 Conflict`` ("payload already received"), which every
SDK ingest path tolerates; the other operations of the same batch are still applied, so
re-ingesting never duplicates a run. Updates may arrive before the create they belong to and are
merged in when it arrives. Unlike the service, repeated updates of a run are applied rather than
rejected.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import signal
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LOG = logging.getLogger("ragvault.devstack.langsmith_emulator")

#: API version reported by ``GET /info``. Self-hosted LangSmith serves ``POST /api/v2/runs/query`` from 0.16
#: on (the SDK's ``RunsResource.query_v2`` docstring, ``langsmith/resources/runs/runs.py``); started with an
#: older ``--version``, the emulator has no v2 route, as such a server has not.
EMULATED_VERSION = "0.16.2"
V2_RUNS_MIN_VERSION = (0, 16)
DB_FILENAME = "langsmith.sqlite3"
DEFAULT_PROJECT = "default"
MAX_PAGE_SIZE = 100
MAX_BODY_BYTES = 256 * 1024 * 1024
BATCH_SIZE_LIMIT_BYTES = 20 * 1024 * 1024
RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})

#: Fields a run query may ``select``; ``id``, ``name``, ``run_type``, ``start_time`` and
#: ``trace_id`` are always returned because the SDK's ``Run`` model requires them.
SELECTABLE_RUN_FIELDS = frozenset(
    {
        "id",
        "name",
        "run_type",
        "start_time",
        "end_time",
        "status",
        "error",
        "extra",
        "events",
        "inputs",
        "outputs",
        "serialized",
        "tags",
        "parent_run_id",
        "parent_run_ids",
        "child_run_ids",
        "direct_child_run_ids",
        "trace_id",
        "dotted_order",
        "session_id",
        "reference_example_id",
        "feedback_stats",
        "app_path",
        "s3_urls",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_cost",
        "completion_cost",
        "total_cost",
        "prompt_token_details",
        "completion_token_details",
        "prompt_cost_details",
        "completion_cost_details",
        "first_token_time",
        "manifest_id",
        "in_dataset",
    }
)
ALWAYS_RETURNED_RUN_FIELDS = ("id", "name", "run_type", "start_time", "trace_id")

#: ``POST /api/v2/runs/query``: the ``RunSelectField`` values (``langsmith/types/run_select_field.py``) that
#: the emulator renders, and the v2 ``Run`` key each fills (``langsmith/types/run.py``). The other values of
#: that enum are refused as not emulated rather than answered with made-up data.
V2_SELECTS = {
    "ID": "id", "NAME": "name", "RUN_TYPE": "run_type", "STATUS": "status", "START_TIME": "start_time",
    "END_TIME": "end_time", "LATENCY_SECONDS": "latency_seconds", "FIRST_TOKEN_TIME": "first_token_time",
    "ERROR": "error", "EXTRA": "extra", "METADATA": "metadata", "EVENTS": "events", "INPUTS": "inputs",
    "OUTPUTS": "outputs", "PARENT_RUN_IDS": "parent_run_ids", "PROJECT_ID": "project_id", "TRACE_ID": "trace_id",
    "DOTTED_ORDER": "dotted_order", "IS_ROOT": "is_root", "REFERENCE_EXAMPLE_ID": "reference_example_id",
    "TOTAL_TOKENS": "total_tokens", "PROMPT_TOKENS": "prompt_tokens", "COMPLETION_TOKENS": "completion_tokens",
    "TOTAL_COST": "total_cost", "PROMPT_COST": "prompt_cost", "COMPLETION_COST": "completion_cost",
    "TAGS": "tags", "APP_PATH": "app_path", "FEEDBACK_STATS": "feedback_stats",
}
V2_SELECTS_NOT_EMULATED = frozenset({
    "ERROR_PREVIEW", "INPUTS_PREVIEW", "OUTPUTS_PREVIEW", "MANIFEST", "THREAD_ID", "REFERENCE_DATASET_ID",
    "PROMPT_TOKEN_DETAILS", "COMPLETION_TOKEN_DETAILS", "PROMPT_COST_DETAILS", "COMPLETION_COST_DETAILS",
    "PRICE_MODEL_ID", "ATTACHMENTS", "THREAD_EVALUATION_TIME", "IS_IN_DATASET", "LAST_QUEUED_AT", "SHARE_URL",
    "LS_USER_ID",
})
#: ``run_type`` values of the v2 query (``langsmith/types/run_type.py``): the v1 ones in upper case
V2_RUN_TYPES = frozenset(t.upper() for t in RUN_TYPES)
#: ``page_size``: 100 when omitted, 1 to 1000 when set (``RunsResource.query_v2``'s docstring)
V2_DEFAULT_PAGE_SIZE, V2_MAX_PAGE_SIZE = 100, 1000

_SEGMENT_RE = re.compile(
    r"^(?P<ts>\d{8}T\d{12}Z)"
    r"(?P<id>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_API_PREFIX_RE = re.compile(r"^/api(?:/v1)?(?=/)")


class ApiError(Exception):
    """An error answered to the client as ``{"detail": ...}`` with an HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------------------------
# Value helpers
# --------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: Any, field: str) -> datetime:
    """Parse an ISO-8601 string (naive means UTC) or epoch seconds/milliseconds to aware UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ApiError(422, f"{field}: expected a timestamp, got {value!r}")
    elif isinstance(value, (int, float)):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ApiError(422, f"{field}: invalid timestamp {value!r}") from exc
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ApiError(422, f"{field}: invalid ISO-8601 timestamp {value!r}") from exc
    else:
        raise ApiError(422, f"{field}: expected a timestamp, got {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime) -> str:
    """Render a timestamp the way the service does: naive UTC with microseconds.

    The fixed-width form also sorts lexically in chronological order, which the SQL
    indexes rely on.
    """
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _stored_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def parse_uuid(value: Any, field: str) -> str:
    """Return the canonical lowercase form of a UUID or raise a 422."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise ApiError(422, f"{field}: expected a UUID, got {value!r}")


def _optional_uuid(value: Any, field: str) -> str | None:
    return None if value is None else parse_uuid(value, field)


def _expect(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(422, f"{field}: expected {names}, got {type(value).__name__}")
    return value


def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no"}:
        return False
    raise ApiError(422, f"{field}: expected a boolean, got {value!r}")


def _as_int(value: Any, field: str, *, minimum: int = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, f"{field}: expected an integer, got {value!r}") from exc
    if number < minimum:
        raise ApiError(422, f"{field}: must be >= {minimum}")
    return number


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def parse_dotted_order(dotted_order: str) -> list[tuple[datetime, str]]:
    """Split a dotted order into ``(timestamp, run id)`` pairs, validating every segment."""
    if not isinstance(dotted_order, str) or not dotted_order:
        raise ApiError(422, "dotted_order: expected a non-empty string")
    segments = []
    for raw in dotted_order.split("."):
        match = _SEGMENT_RE.match(raw)
        if match is None:
            raise ApiError(
                422,
                f"dotted_order: invalid segment {raw!r}, expected YYYYMMDDTHHMMSSffffffZ<uuid>",
            )
        try:
            stamp = datetime.strptime(match["ts"], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise ApiError(422, f"dotted_order: invalid timestamp in segment {raw!r}") from exc
        segments.append((stamp, str(uuid.UUID(match["id"]))))
    return segments


def dotted_order_segment(start_time: datetime, run_id: str) -> str:
    return start_time.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ") + run_id


# --------------------------------------------------------------------------------------------
# Filter query language (subset)
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<punct>[(),\[\]])
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.:-]))
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.\-:+]*)
    )""",
    re.VERBOSE,
)
_COMPARATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "has", "in"})
_CONNECTIVES = frozenset({"and", "or", "not"})


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


class FilterSyntaxError(ApiError):
    def __init__(self, text: str, reason: str) -> None:
        super().__init__(400, f"Invalid filter {text!r}: {reason}")


def parse_filter(text: str) -> tuple:
    """Parse a LangSmith filter expression into a small AST.

    Supported: ``and(...)``, ``or(...)``, ``not(x)`` and the comparators ``eq``, ``neq``,
    ``gt``, ``gte``, ``lt``, ``lte``, ``has`` and ``in`` (with a ``[...]`` list) over the fields
    in :data:`FILTER_FIELDS`.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN_RE.match(stripped, position)
        if match is None or match.end() == position:
            raise FilterSyntaxError(text, f"unexpected input at offset {position}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    cursor = 0

    def peek() -> tuple[str, str] | None:
        return tokens[cursor] if cursor < len(tokens) else None

    def take(expected: str | None = None) -> tuple[str, str]:
        nonlocal cursor
        token = peek()
        if token is None:
            raise FilterSyntaxError(text, "unexpected end of expression")
        if expected is not None and token[1] != expected:
            raise FilterSyntaxError(text, f"expected {expected!r}, got {token[1]!r}")
        cursor += 1
        return token

    def value() -> Any:
        kind, raw = take()
        if kind == "string":
            return _unquote(raw)
        if kind == "number":
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if kind == "ident":
            lowered = raw.lower()
            if lowered in {"true", "false"}:
                return lowered == "true"
            if lowered in {"null", "none"}:
                return None
            return raw
        if raw == "[":
            items = []
            if peek() == ("punct", "]"):
                take("]")
                return items
            while True:
                items.append(value())
                separator = take()[1]
                if separator == "]":
                    return items
                if separator != ",":
                    raise FilterSyntaxError(text, f"expected ',' or ']', got {separator!r}")
        raise FilterSyntaxError(text, f"unexpected {raw!r}")

    def expression() -> tuple:
        kind, name = take()
        if kind != "ident":
            raise FilterSyntaxError(text, f"expected an operator, got {name!r}")
        operator = name.lower()
        take("(")
        if operator in _CONNECTIVES:
            operands = [expression()]
            while peek() == ("punct", ","):
                take(",")
                operands.append(expression())
            take(")")
            if operator == "not":
                if len(operands) != 1:
                    raise FilterSyntaxError(text, "not() takes exactly one expression")
                return ("not", operands[0])
            return (operator, operands)
        if operator not in _COMPARATORS:
            raise FilterSyntaxError(text, f"unsupported operator {name!r}")
        field_kind, field = take()
        if field_kind not in {"ident", "string"}:
            raise FilterSyntaxError(text, f"expected a field name, got {field!r}")
        field = _unquote(field) if field_kind == "string" else field
        if field not in FILTER_FIELDS:
            raise FilterSyntaxError(text, f"unsupported field {field!r}")
        take(",")
        operand = value()
        take(")")
        return ("cmp", operator, field, operand)

    tree = expression()
    if cursor != len(tokens):
        raise FilterSyntaxError(text, f"trailing input {tokens[cursor][1]!r}")
    return tree


def _latency(doc: dict) -> float | None:
    if not doc.get("end_time"):
        return None
    return (_stored_time(doc["end_time"]) - _stored_time(doc["start_time"])).total_seconds()


def _status(doc: dict) -> str:
    if doc.get("error"):
        return "error"
    return "success" if doc.get("end_time") else "pending"


#: Filterable fields: name -> (kind, accessor over a stored run document).
FILTER_FIELDS: dict[str, tuple[str, Callable[[dict], Any]]] = {
    "id": ("id", lambda d: d["id"]),
    "trace_id": ("id", lambda d: d["trace_id"]),
    "parent_run_id": ("id", lambda d: d.get("parent_run_id")),
    "session_id": ("id", lambda d: d["session_id"]),
    "reference_example_id": ("id", lambda d: d.get("reference_example_id")),
    "name": ("str", lambda d: d["name"]),
    "run_type": ("str", lambda d: d["run_type"]),
    "status": ("str", _status),
    "error": ("str", lambda d: d.get("error")),
    "dotted_order": ("str", lambda d: d["dotted_order"]),
    "start_time": ("time", lambda d: _stored_time(d["start_time"])),
    "end_time": ("time", lambda d: _stored_time(d.get("end_time"))),
    "latency": ("num", _latency),
    "is_root": ("bool", lambda d: d.get("parent_run_id") is None),
    "tags": ("list", lambda d: d.get("tags") or []),
}


def _coerce(kind: str, operand: Any, field: str) -> Any:
    if operand is None:
        return None
    if kind == "time":
        return parse_time(operand, f"filter {field}")
    if kind == "id":
        try:
            return str(uuid.UUID(str(operand)))
        except ValueError:
            return str(operand).lower()
    if kind == "num":
        if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
            raise ApiError(400, f"filter {field}: expected a number, got {operand!r}")
        try:
            return float(operand)
        except ValueError as exc:
            raise ApiError(400, f"filter {field}: expected a number, got {operand!r}") from exc
    if kind == "bool":
        return _as_bool(operand, f"filter {field}")
    return str(operand)


def _compare(operator: str, actual: Any, expected: Any) -> bool:
    if operator == "eq":
        return actual == expected
    if operator == "neq":
        return actual != expected
    if actual is None or expected is None:
        return False
    if operator == "gt":
        return actual > expected
    if operator == "gte":
        return actual >= expected
    if operator == "lt":
        return actual < expected
    if operator == "lte":
        return actual <= expected
    if operator == "has":
        return expected in actual if isinstance(actual, str) else actual == expected
    raise ApiError(400, f"unsupported operator {operator!r}")


def evaluate_filter(tree: tuple, doc: dict) -> bool:
    """Evaluate a parsed filter against one stored run document."""
    head = tree[0]
    if head == "and":
        return all(evaluate_filter(node, doc) for node in tree[1])
    if head == "or":
        return any(evaluate_filter(node, doc) for node in tree[1])
    if head == "not":
        return not evaluate_filter(tree[1], doc)
    _, operator, field, operand = tree
    kind, accessor = FILTER_FIELDS[field]
    actual = accessor(doc)
    if operator == "in":
        choices = operand if isinstance(operand, list) else [operand]
        coerced = [_coerce(kind, choice, field) for choice in choices]
        if kind == "list":
            return any(choice in actual for choice in coerced)
        return actual in coerced
    expected = _coerce(kind, operand, field)
    if kind == "list":
        if operator in {"has", "eq"}:
            return expected in actual
        if operator == "neq":
            return expected not in actual
        raise ApiError(400, f"filter {field}: operator {operator!r} is not supported on a list")
    return _compare(operator, actual, expected)


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    start_time TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    parent_run_id TEXT,
    dotted_order TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    run_type TEXT NOT NULL,
    has_error INTEGER NOT NULL,
    reference_example_id TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_session ON runs (session_id, start_time, id);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (start_time, id);
CREATE INDEX IF NOT EXISTS runs_by_trace ON runs (trace_id);
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id);
CREATE TABLE IF NOT EXISTS pending_patches (run_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    session_id TEXT,
    key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_run ON feedback (run_id);
CREATE TABLE IF NOT EXISTS attachments (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""

_PATCHABLE_FIELDS = (
    "name",
    "run_type",
    "start_time",
    "end_time",
    "inputs",
    "outputs",
    "error",
    "extra",
    "events",
    "tags",
    "serialized",
    "reference_example_id",
)


class Store:
    """SQLite-backed state of the emulator. Every public method is thread-safe."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(data_dir, DB_FILENAME)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.tenant_id = self._meta("tenant_id", lambda: str(uuid.uuid4()))
        self.created_at = self._meta("created_at", lambda: format_time(_now()))
        self._secret = self._meta("link_secret", lambda: secrets.token_hex(32)).encode()

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; roll back on any error."""
        with self._lock:
            if self._db is None:
                raise ApiError(503, "the emulator is shutting down")
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _meta(self, key: str, default: Callable[[], str]) -> str:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return row[0]
            value = default()
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    def sign(self, run_id: str, name: str) -> str:
        message = f"{run_id}/{name}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- sessions (tracing projects) -----------------------------------------------------------

    def _session_doc(self, db: sqlite3.Connection, session_id: str) -> dict | None:
        row = db.execute("SELECT doc FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _session_by_name(self, db: sqlite3.Connection, name: str) -> dict | None:
        row = db.execute("SELECT doc FROM sessions WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _insert_session(self, db: sqlite3.Connection, doc: dict) -> None:
        db.execute(
            "INSERT INTO sessions (id, name, start_time, doc) VALUES (?, ?, ?, ?)",
            (doc["id"], doc["name"], doc["start_time"], _dumps(doc)),
        )

    def _new_session(self, name: str, **fields: Any) -> dict:
        return {
            "id": fields.get("id") or str(uuid.uuid4()),
            "name": name,
            "description": fields.get("description"),
            "start_time": fields.get("start_time") or format_time(_now()),
            "end_time": fields.get("end_time"),
            "extra": fields.get("extra"),
            "reference_dataset_id": fields.get("reference_dataset_id"),
            "default_dataset_id": None,
            "tenant_id": self.tenant_id,
            "trace_tier": fields.get("trace_tier"),
        }

    def create_session(self, body: dict, *, upsert: bool) -> dict:
        _expect(body, dict, "body")
        name = body.get("name")
        if name is None:
            name = f"project-{uuid.uuid4().hex[:12]}"
        _expect(name, str, "name")
        if not name.strip():
            raise ApiError(422, "name: must not be empty")
        fields = {
            "id": _optional_uuid(body.get("id"), "id"),
            "description": _expect(body.get("description"), (str, type(None)), "description"),
            "extra": _expect(body.get("extra"), (dict, type(None)), "extra"),
            "reference_dataset_id": _optional_uuid(body.get("reference_dataset_id"), "reference_dataset_id"),
            "trace_tier": body.get("trace_tier"),
        }
        if body.get("start_time") is not None:
            fields["start_time"] = format_time(parse_time(body["start_time"], "start_time"))
        if body.get("end_time") is not None:
            fields["end_time"] = format_time(parse_time(body["end_time"], "end_time"))
        with self._tx() as db:
            existing = self._session_by_name(db, name)
            if existing is not None:
                if not upsert:
                    raise ApiError(409, "Session already exists.")
                for key in ("description", "extra", "end_time"):
                    if fields.get(key) is not None:
                        existing[key] = fields[key]
                db.execute("UPDATE sessions SET doc = ? WHERE id = ?", (_dumps(existing), existing["id"]))
                return existing
            if fields["id"] is not None and self._session_doc(db, fields["id"]) is not None:
                raise ApiError(409, "Session already exists.")
            doc = self._new_session(name, **fields)
            self._insert_session(db, doc)
            return doc

    def get_session(self, session_id: str, *, include_stats: bool) -> dict:
        with self._tx() as db:
            doc = self._session_doc(db, session_id)
            if doc is None:
                raise ApiError(404, "Session not found")
            return self._render_session(db, doc, include_stats)

    def update_session(self, session_id: str, body: dict) -> dict:
        _expect(body, dict, "body")
        with self._tx() as db:
            doc = self._session_doc(db, session_id)
            if doc is None:
                raise ApiError(404, "Session not found")
            name = body.get("name")
            if name is not None:
                _expect(name, str, "name")
                other = self._session_by_name(db, name)
                if other is not None and other["id"] != session_id:
                    raise ApiError(409, "Session already exists.")
                doc["name"] = name
            if body.get("description") is not None:
                doc["description"] = _expect(body["description"], str, "description")
            if body.get("extra") is not None:
                doc["extra"] = _expect(body["extra"], dict, "extra")
            if body.get("end_time") is not None:
                doc["end_time"] = format_time(parse_time(body["end_time"], "end_time"))
            db.execute(
                "UPDATE sessions SET name = ?, doc = ? WHERE id = ?",
                (doc["name"], _dumps(doc), session_id),
            )
            return self._render_session(db, doc, include_stats=False)

    def delete_session(self, session_id: str) -> None:
        with self._tx() as db:
            if self._session_doc(db, session_id) is None:
                raise ApiError(404, "Session not found")
            run_ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE session_id = ?", (session_id,))]
            for start in range(0, len(run_ids), 500):
                chunk = run_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM attachments WHERE run_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM feedback WHERE run_id IN ({marks})", chunk)
            db.execute("DELETE FROM feedback WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM runs WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def list_sessions(self, query: dict[str, list[str]]) -> list[dict]:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        ids = {parse_uuid(v, "id") for v in query.get("id", [])}
        name = one("name")
        name_contains = one("name_contains")
        reference_free = one("reference_free")
        reference_free_flag = None if reference_free is None else _as_bool(reference_free, "reference_free")
        datasets = {parse_uuid(v, "reference_dataset") for v in query.get("reference_dataset", [])}
        metadata_raw = one("metadata")
        try:
            metadata = json.loads(metadata_raw) if metadata_raw else None
        except json.JSONDecodeError as exc:
            raise ApiError(422, "metadata: expected a JSON object") from exc
        if metadata is not None and not isinstance(metadata, dict):
            raise ApiError(422, "metadata: expected a JSON object")
        include_stats = _as_bool(one("include_stats") or "false", "include_stats")
        offset = _as_int(one("offset") or 0, "offset")
        limit = min(_as_int(one("limit") or MAX_PAGE_SIZE, "limit", minimum=1), MAX_PAGE_SIZE)
        sort_by = one("sort_by") or "start_time"
        if sort_by not in {"start_time", "name", "last_run_start_time"}:
            raise ApiError(422, f"sort_by: unsupported value {sort_by!r}")
        descending = _as_bool(one("sort_by_desc") or "true", "sort_by_desc")

        with self._tx() as db:
            docs = [json.loads(row[0]) for row in db.execute("SELECT doc FROM sessions")]

            def keep(doc: dict) -> bool:
                if ids and doc["id"] not in ids:
                    return False
                if name is not None and doc["name"] != name:
                    return False
                if name_contains is not None and name_contains.lower() not in doc["name"].lower():
                    return False
                if reference_free_flag is not None and (
                    (doc.get("reference_dataset_id") is None) != reference_free_flag
                ):
                    return False
                if datasets and doc.get("reference_dataset_id") not in datasets:
                    return False
                if metadata:
                    stored = (doc.get("extra") or {}).get("metadata") or {}
                    if any(stored.get(k) != v for k, v in metadata.items()):
                        return False
                return True

            selected = [doc for doc in docs if keep(doc)]
            if sort_by == "last_run_start_time":
                last = dict(db.execute("SELECT session_id, MAX(start_time) FROM runs GROUP BY session_id"))
                selected.sort(key=lambda d: (last.get(d["id"]) or "", d["id"]), reverse=descending)
            else:
                selected.sort(key=lambda d: (d[sort_by], d["id"]), reverse=descending)
            page = selected[offset : offset + limit]
            return [self._render_session(db, doc, include_stats) for doc in page]

    def _render_session(self, db: sqlite3.Connection, doc: dict, include_stats: bool) -> dict:
        out = dict(doc)
        stats: dict[str, Any] = {
            "run_count": None,
            "latency_p50": None,
            "latency_p99": None,
            "first_token_p50": None,
            "first_token_p99": None,
            "total_tokens": None,
            "prompt_tokens": None,
            "completion_tokens": None,
            "total_cost": None,
            "prompt_cost": None,
            "completion_cost": None,
            "last_run_start_time": None,
            "feedback_stats": None,
            "session_feedback_stats": None,
            "run_facets": None,
            "error_rate": None,
        }
        if include_stats:
            count, last = db.execute(
                "SELECT COUNT(*), MAX(start_time) FROM runs WHERE session_id = ?", (doc["id"],)
            ).fetchone()
            roots = db.execute(
                "SELECT start_time, end_time, has_error FROM runs"
                " WHERE session_id = ? AND parent_run_id IS NULL",
                (doc["id"],),
            ).fetchall()
            latencies = sorted(
                (_stored_time(end) - _stored_time(start)).total_seconds()
                for start, end, _ in roots
                if end is not None
            )
            stats.update(
                run_count=count,
                last_run_start_time=last,
                error_rate=(sum(r[2] for r in roots) / len(roots)) if roots else None,
                latency_p50=_percentile(latencies, 0.50),
                latency_p99=_percentile(latencies, 0.99),
                feedback_stats=self._feedback_stats(
                    db, "SELECT doc FROM feedback WHERE session_id = ?", (doc["id"],)
                ),
            )
        out.update(stats)
        return out

    # -- runs: ingestion -----------------------------------------------------------------------

    def _prepare_post(self, db: sqlite3.Connection, payload: Any, *, derive_tree: bool) -> dict:
        """Validate one run create payload and return the document to store.

        The project is resolved later (``_session_ref``) so a rejected duplicate does not
        create one. With ``derive_tree`` (single ``POST /runs``) a missing ``trace_id`` /
        ``dotted_order`` is computed from the parent like the service's legacy endpoint.
        """
        _expect(payload, dict, "run")
        run_id = parse_uuid(payload["id"], "id") if payload.get("id") is not None else str(uuid.uuid4())
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(422, f"run {run_id}: name is required")
        run_type = payload.get("run_type")
        if run_type not in RUN_TYPES:
            raise ApiError(422, f"run {run_id}: run_type must be one of {sorted(RUN_TYPES)}")
        parent_run_id = _optional_uuid(payload.get("parent_run_id"), "parent_run_id")
        trace_id = _optional_uuid(payload.get("trace_id"), "trace_id")
        dotted_order = payload.get("dotted_order")
        start_raw = payload.get("start_time")
        start_time = parse_time(start_raw, "start_time") if start_raw is not None else None

        if dotted_order is None and derive_tree:
            start_time = start_time or _now()
            segment = dotted_order_segment(start_time, run_id)
            if parent_run_id is None:
                dotted_order = segment
            else:
                parent = self._load_run(db, parent_run_id)
                if parent is None:
                    raise ApiError(
                        422,
                        f"run {run_id}: parent run {parent_run_id} is unknown;"
                        " send trace_id and dotted_order with the run",
                    )
                dotted_order = f"{parent['dotted_order']}.{segment}"
        if dotted_order is None:
            raise ApiError(422, f"run {run_id}: dotted_order is required")
        segments = parse_dotted_order(dotted_order)
        if start_time is None:
            start_time = segments[-1][0]
        trace_id = self._validate_tree(run_id, trace_id, parent_run_id, segments)
        if parent_run_id is None and len(segments) > 1:
            raise ApiError(422, f"run {run_id}: parent_run_id is required for a child dotted_order")

        doc = {
            "id": run_id,
            "name": name,
            "run_type": run_type,
            "start_time": format_time(start_time),
            "end_time": None,
            "inputs": {},
            "outputs": None,
            "error": None,
            "extra": {},
            "events": [],
            "tags": [],
            "serialized": None,
            "reference_example_id": None,
            "parent_run_id": parent_run_id,
            "trace_id": trace_id,
            "dotted_order": dotted_order,
            "session_id": None,
        }
        self._apply_patch(doc, self._prepare_patch_fields(payload, run_id, creating=True))
        session_id = _optional_uuid(payload.get("session_id"), "session_id")
        session_name = payload.get("session_name")
        if session_id is not None:
            if self._session_doc(db, session_id) is None:
                raise ApiError(422, f"run {run_id}: session {session_id} does not exist")
            doc["session_id"] = session_id
        elif session_name is not None:
            doc["_session_name"] = _expect(session_name, str, "session_name")
        else:
            doc["_session_name"] = DEFAULT_PROJECT
        return doc

    @staticmethod
    def _validate_tree(
        run_id: str,
        trace_id: str | None,
        parent_run_id: str | None,
        segments: list[tuple[datetime, str]],
    ) -> str:
        if segments[-1][1] != run_id:
            raise ApiError(422, f"run {run_id}: the last dotted_order segment must be the run id")
        if trace_id is None:
            trace_id = segments[0][1]
        elif segments[0][1] != trace_id:
            raise ApiError(422, f"run {run_id}: the first dotted_order segment must be the trace id")
        if parent_run_id is not None and (len(segments) < 2 or segments[-2][1] != parent_run_id):
            raise ApiError(422, f"run {run_id}: the parent dotted_order segment must be parent_run_id")
        for (earlier, _), (later, _) in itertools.pairwise(segments):
            if later < earlier:
                raise ApiError(422, f"run {run_id}: dotted_order timestamps must not decrease")
        return trace_id

    @staticmethod
    def _prepare_patch_fields(payload: dict, run_id: str, *, creating: bool = False) -> dict:
        """Validate the updatable fields of a payload; ``None`` means "not provided"."""
        fields: dict[str, Any] = {}
        for key in _PATCHABLE_FIELDS:
            value = payload.get(key)
            if value is None:
                continue
            where = f"run {run_id}: {key}"
            if key in {"start_time", "end_time"}:
                value = format_time(parse_time(value, where))
            elif key in {"inputs", "outputs", "extra", "serialized"}:
                _expect(value, dict, where)
            elif key in {"events", "tags"}:
                _expect(value, list, where)
                if key == "tags" and not all(isinstance(tag, str) for tag in value):
                    raise ApiError(422, f"{where}: expected a list of strings")
            elif key == "error":
                value = value if isinstance(value, str) else _dumps(value)
            elif key == "reference_example_id":
                value = parse_uuid(value, where)
            elif key == "name":
                _expect(value, str, where)
            elif key == "run_type" and value not in RUN_TYPES:
                raise ApiError(422, f"{where}: must be one of {sorted(RUN_TYPES)}")
            fields[key] = value
        if creating:
            fields.pop("name", None)
            fields.pop("run_type", None)
            fields.pop("start_time", None)
        return fields

    @staticmethod
    def _apply_patch(doc: dict, fields: dict) -> dict:
        for key, value in fields.items():
            if key == "extra" and isinstance(doc.get("extra"), dict):
                merged = {**doc["extra"], **value}
                old_meta, new_meta = doc["extra"].get("metadata"), value.get("metadata")
                if isinstance(old_meta, dict) and isinstance(new_meta, dict):
                    merged["metadata"] = {**old_meta, **new_meta}
                doc["extra"] = merged
            else:
                doc[key] = value
        return doc

    @staticmethod
    def _merge_patches(older: dict, newer: dict) -> dict:
        merged = dict(older)
        Store._apply_patch(merged, newer)
        return merged

    def _session_ref(self, db: sqlite3.Connection, doc: dict) -> None:
        name = doc.pop("_session_name", None)
        if name is None:
            return
        session = self._session_by_name(db, name)
        if session is None:
            session = self._new_session(name)
            self._insert_session(db, session)
        doc["session_id"] = session["id"]

    def _load_run(self, db: sqlite3.Connection, run_id: str) -> dict | None:
        row = db.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _write_run(self, db: sqlite3.Connection, doc: dict, *, insert: bool) -> None:
        values = (
            doc["session_id"],
            doc["trace_id"],
            doc.get("parent_run_id"),
            doc["dotted_order"],
            doc["start_time"],
            doc.get("end_time"),
            doc["run_type"],
            1 if doc.get("error") else 0,
            doc.get("reference_example_id"),
            _dumps(doc),
            doc["id"],
        )
        if insert:
            db.execute(
                "INSERT INTO runs (session_id, trace_id, parent_run_id, dotted_order, start_time,"
                " end_time, run_type, has_error, reference_example_id, doc, id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            db.execute(
                "UPDATE runs SET session_id = ?, trace_id = ?, parent_run_id = ?, dotted_order = ?,"
                " start_time = ?, end_time = ?, run_type = ?, has_error = ?,"
                " reference_example_id = ?, doc = ? WHERE id = ?",
                values,
            )

    def ingest(
        self,
        posts: list[Any],
        patches: list[Any],
        *,
        attachments: list[tuple[str, str, str, bytes]] = (),
        feedback: list[Any] = (),
        derive_tree: bool = False,
    ) -> list[str]:
        """Apply creates, then updates, attachments and feedback in one transaction.

        Everything is validated before anything is written (a 422 changes nothing). Returns
        the descriptions of rejected duplicates; the caller answers 409 when there are any.
        """
        conflicts: list[str] = []
        with self._tx() as db:
            prepared_posts = [self._prepare_post(db, p, derive_tree=derive_tree) for p in posts]
            prepared_patches = []
            for payload in patches:
                _expect(payload, dict, "run")
                if payload.get("id") is None:
                    raise ApiError(422, "run update: id is required")
                run_id = parse_uuid(payload["id"], "id")
                if payload.get("dotted_order") is not None:
                    parse_dotted_order(payload["dotted_order"])
                prepared_patches.append((run_id, self._prepare_patch_fields(payload, run_id)))
            prepared_feedback = [self._prepare_feedback(db, item) for item in feedback]

            seen: set[str] = set()
            for doc in prepared_posts:
                if doc["id"] in seen or self._load_run(db, doc["id"]) is not None:
                    conflicts.append(f"post {doc['id']}")
                    continue
                seen.add(doc["id"])
                pending = db.execute(
                    "SELECT doc FROM pending_patches WHERE run_id = ?", (doc["id"],)
                ).fetchone()
                if pending is not None:
                    self._apply_patch(doc, json.loads(pending[0]))
                    db.execute("DELETE FROM pending_patches WHERE run_id = ?", (doc["id"],))
                self._session_ref(db, doc)
                self._write_run(db, doc, insert=True)
            for run_id, fields in prepared_patches:
                stored = self._load_run(db, run_id)
                if stored is not None:
                    self._write_run(db, self._apply_patch(stored, fields), insert=False)
                    continue
                row = db.execute("SELECT doc FROM pending_patches WHERE run_id = ?", (run_id,)).fetchone()
                merged = self._merge_patches(json.loads(row[0]), fields) if row else fields
                db.execute(
                    "INSERT OR REPLACE INTO pending_patches (run_id, doc) VALUES (?, ?)",
                    (run_id, _dumps(merged)),
                )
            for run_id, name, mime_type, data in attachments:
                db.execute(
                    "INSERT OR REPLACE INTO attachments (run_id, name, mime_type, data) VALUES (?, ?, ?, ?)",
                    (run_id, name, mime_type, data),
                )
            for doc in prepared_feedback:
                if db.execute("SELECT 1 FROM feedback WHERE id = ?", (doc["id"],)).fetchone():
                    conflicts.append(f"feedback {doc['id']}")
                    continue
                self._insert_feedback(db, doc)
        return conflicts

    # -- runs: reading -------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict:
        with self._tx() as db:
            doc = self._load_run(db, run_id)
            if doc is None:
                raise ApiError(404, "Run not found")
            return self._render_run(db, doc, None, _RenderContext())

    def get_attachment(self, run_id: str, name: str, signature: str) -> tuple[str, bytes]:
        if not hmac.compare_digest(self.sign(run_id, name), signature):
            raise ApiError(403, "Invalid attachment signature")
        with self._tx() as db:
            row = db.execute(
                "SELECT mime_type, data FROM attachments WHERE run_id = ? AND name = ?", (run_id, name)
            ).fetchone()
        if row is None:
            raise ApiError(404, "Attachment not found")
        return row[0], bytes(row[1])

    def query_runs(self, body: Any) -> dict:
        """Serve ``POST /runs/query``: filters, ordering and keyset cursor pagination.

        Body fields: ``session``, ``id``, ``trace``, ``parent_run``, ``reference_example``,
        ``is_root``, ``run_type``, ``error``, ``start_time`` (runs starting at or after it),
        ``end_time`` (runs starting at or before it), ``filter``, ``trace_filter`` (evaluated on
        the trace's root run), ``tree_filter`` (true when any run of the trace matches),
        ``query`` (substring of name, inputs, outputs or error), ``select``, ``order``
        (``desc`` by default, on ``start_time`` then ``id``), ``limit`` (page size, at most
        100) and ``cursor`` (``cursors.next`` of the previous page).
        """
        _expect(body, dict, "body")
        where: list[str] = []
        args: list[Any] = []

        def id_list(key: str) -> list[str] | None:
            value = body.get(key)
            if value is None:
                return None
            values = value if isinstance(value, list) else [value]
            return [parse_uuid(v, key) for v in values]

        def restrict(column: str, values: list[str] | None) -> None:
            if values is None:
                return
            if not values:
                where.append("0")
                return
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)

        restrict("session_id", id_list("session"))
        restrict("id", id_list("id"))
        restrict("reference_example_id", id_list("reference_example"))
        if body.get("trace") is not None:
            where.append("trace_id = ?")
            args.append(parse_uuid(body["trace"], "trace"))
        if body.get("parent_run") is not None:
            where.append("parent_run_id = ?")
            args.append(parse_uuid(body["parent_run"], "parent_run"))
        if body.get("is_root") is not None:
            is_root = _as_bool(body["is_root"], "is_root")
            where.append("parent_run_id IS NULL" if is_root else "parent_run_id IS NOT NULL")
        if body.get("run_type") is not None:
            if body["run_type"] not in RUN_TYPES:
                raise ApiError(422, f"run_type must be one of {sorted(RUN_TYPES)}")
            where.append("run_type = ?")
            args.append(body["run_type"])
        if body.get("error") is not None:
            where.append("has_error = ?")
            args.append(1 if _as_bool(body["error"], "error") else 0)
        if body.get("start_time") is not None:
            where.append("start_time >= ?")
            args.append(format_time(parse_time(body["start_time"], "start_time")))
        if body.get("end_time") is not None:
            where.append("start_time <= ?")
            args.append(format_time(parse_time(body["end_time"], "end_time")))

        order = body.get("order") or "desc"
        if order not in {"asc", "desc"}:
            raise ApiError(422, "order must be 'asc' or 'desc'")
        limit = min(_as_int(body.get("limit") or MAX_PAGE_SIZE, "limit", minimum=1), MAX_PAGE_SIZE)
        select = body.get("select")
        if select is not None:
            _expect(select, list, "select")
            unknown = sorted(str(s) for s in select if s not in SELECTABLE_RUN_FIELDS)
            if unknown:
                raise ApiError(422, f"select: unsupported fields {unknown}")
            fields: set[str] | None = set(select) | set(ALWAYS_RETURNED_RUN_FIELDS)
        else:
            fields = None
        cursor = body.get("cursor")
        if cursor is not None:
            start_key, id_key = _decode_cursor(cursor)
            where.append("(start_time, id) < (?, ?)" if order == "desc" else "(start_time, id) > (?, ?)")
            args.extend([start_key, id_key])

        predicates: list[Callable[[dict, _RenderContext, sqlite3.Connection], bool]] = []
        for key in ("filter", "trace_filter", "tree_filter"):
            if body.get(key):
                tree = parse_filter(_expect(body[key], str, key))
                predicates.append(_make_predicate(key, tree, self))
        if body.get("query"):
            needle = _expect(body["query"], str, "query").lower()
            predicates.append(
                lambda doc, _ctx, _db: (
                    needle
                    in _dumps([doc["name"], doc.get("inputs"), doc.get("outputs"), doc.get("error")]).lower()
                )
            )

        direction = "DESC" if order == "desc" else "ASC"
        sql = (
            "SELECT doc FROM runs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY start_time {direction}, id {direction}"
        )
        runs, next_cursor = self._page(sql, args, predicates, limit,
                                       lambda db, doc, ctx: self._render_run(db, doc, fields, ctx))
        return {"runs": runs, "cursors": {"next": next_cursor, "prev": None}, "parsed_query": None}

    def _page(self, sql: str, args: list[Any], predicates: list, limit: int,
              render: Callable[[sqlite3.Connection, dict, _RenderContext], dict]) -> tuple[list[dict], str | None]:
        """One page of a runs query: the first ``limit`` rows of ``sql`` that pass every predicate, rendered,
        and the cursor of the next page (None on the last one)."""
        with self._tx() as db:
            ctx = _RenderContext()
            page: list[dict] = []
            has_more = False
            for (raw,) in db.execute(sql, args).fetchall():
                doc = json.loads(raw)
                if not all(predicate(doc, ctx, db) for predicate in predicates):
                    continue
                if len(page) == limit:
                    has_more = True
                    break
                page.append(doc)
            rendered = [render(db, doc, ctx) for doc in page]
        return rendered, (_encode_cursor(page[-1]["start_time"], page[-1]["id"]) if has_more else None)

    def query_runs_v2(self, body: Any) -> dict:
        """Serve ``POST /api/v2/runs/query`` (``RunQueryV2Params`` in ``langsmith/types/run_query_v2_params.py``,
        documented on ``RunsResource.query_v2``): the runs of ``project_ids`` whose ``start_time`` is within
        ``[min_start_time, max_start_time]`` (default: the last day up to now), narrowed by ``ids``,
        ``trace_id``, ``is_root``, ``run_type``, ``has_error`` and the three filter expressions; ``items``
        sorted by ``start_time`` descending (the SDK's ``StreamingQueryV2Response`` reference), ``page_size``
        at a time (default 100, at most 1000), ``next_cursor`` null on the last page. Each run holds only the
        ``selects`` asked (default ``ID`` alone), in the v2 ``Run`` shape: ``project_id``, ``parent_run_ids``
        from the root down to the direct parent, upper-case ``run_type`` and ``status``.

        Parameters outside the RunQueryV2Params (a v1 body) and values of the wrong kind are refused with 400.
        """
        _expect(body, dict, "body")
        known = {"ai_search", "cursor", "filter", "has_error", "ids", "include_subtree_usage", "is_root",
                 "max_feedback_modified_at", "max_start_time", "min_feedback_modified_at", "min_start_time",
                 "page_size", "project_ids", "reference_dataset_id", "reference_examples", "run_type", "selects",
                 "trace_filter", "trace_id", "tree_filter"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ApiError(400, f"unknown parameters {unknown}")
        for key in ("ai_search", "reference_dataset_id", "reference_examples", "include_subtree_usage",
                    "min_feedback_modified_at", "max_feedback_modified_at"):
            if body.get(key) not in (None, False):
                raise ApiError(400, f"{key} is not emulated")
        projects = body.get("project_ids")
        if not isinstance(projects, list) or not projects:
            raise ApiError(400, "project_ids is required (a non-empty list of project UUIDs)")
        project_ids = [parse_uuid(value, "project_ids") for value in projects]
        now = _now()
        low = parse_time(body["min_start_time"], "min_start_time") if body.get("min_start_time") else (
            now - timedelta(days=1))
        high = parse_time(body["max_start_time"], "max_start_time") if body.get("max_start_time") else now
        page_size = body.get("page_size", V2_DEFAULT_PAGE_SIZE)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not (
                1 <= page_size <= V2_MAX_PAGE_SIZE):
            raise ApiError(400, f"page_size must be between 1 and {V2_MAX_PAGE_SIZE}")
        selects = body.get("selects") or ["ID"]
        _expect(selects, list, "selects")
        bad = sorted(str(v) for v in selects if v not in V2_SELECTS and v not in V2_SELECTS_NOT_EMULATED)
        if bad:
            raise ApiError(400, f"selects: unknown fields {bad}")
        missing = sorted(str(v) for v in selects if v in V2_SELECTS_NOT_EMULATED)
        if missing:
            raise ApiError(400, f"selects: {missing} are not emulated")
        fields = {V2_SELECTS[v] for v in selects}

        where = [f"session_id IN ({','.join('?' * len(project_ids))})", "start_time >= ?", "start_time <= ?"]
        args: list[Any] = [*project_ids, format_time(low), format_time(high)]
        if body.get("ids") is not None:
            ids = [parse_uuid(v, "ids") for v in _expect(body["ids"], list, "ids")]
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            args.extend(ids)
        if body.get("trace_id") is not None:
            where.append("trace_id = ?")
            args.append(parse_uuid(body["trace_id"], "trace_id"))
        if body.get("is_root") is not None:
            where.append("parent_run_id IS NULL" if _as_bool(body["is_root"], "is_root") else
                         "parent_run_id IS NOT NULL")
        if body.get("run_type") is not None:
            if body["run_type"] not in V2_RUN_TYPES:
                raise ApiError(400, f"run_type must be one of {sorted(V2_RUN_TYPES)}")
            where.append("run_type = ?")
            args.append(body["run_type"].lower())
        if body.get("has_error") is not None:
            where.append("has_error = ?")
            args.append(1 if _as_bool(body["has_error"], "has_error") else 0)
        if body.get("cursor") is not None:
            start_key, id_key = _decode_cursor(body["cursor"])
            where.append("(start_time, id) < (?, ?)")
            args.extend([start_key, id_key])
        predicates = [_make_predicate(key, parse_filter(_expect(body[key], str, key)), self)
                      for key in ("filter", "trace_filter", "tree_filter") if body.get(key)]
        sql = f"SELECT doc FROM runs WHERE {' AND '.join(where)} ORDER BY start_time DESC, id DESC"
        items, next_cursor = self._page(sql, args, predicates, page_size,
                                        lambda db, doc, ctx: self._render_run_v2(db, doc, fields, ctx))
        return {"items": items, "next_cursor": next_cursor}

    def _render_run_v2(self, db: sqlite3.Connection, doc: dict, fields: set[str], ctx: _RenderContext) -> dict:
        """A stored run in the v2 ``Run`` shape (``langsmith/types/run.py``), with only ``fields``."""
        v1 = self._render_run(db, doc, None, ctx)
        metadata = (v1.get("extra") or {}).get("metadata")
        values = {
            **{key: v1.get(key) for key in (
                "id", "name", "start_time", "end_time", "first_token_time", "error", "extra", "events", "inputs",
                "outputs", "trace_id", "dotted_order", "reference_example_id", "total_tokens", "prompt_tokens",
                "completion_tokens", "total_cost", "prompt_cost", "completion_cost", "tags", "app_path",
                "feedback_stats", "parent_run_ids")},
            "run_type": v1["run_type"].upper(),
            "status": v1["status"].upper(),
            "latency_seconds": _latency(doc),
            "metadata": metadata if isinstance(metadata, dict) else None,
            "project_id": doc["session_id"],
            "is_root": doc.get("parent_run_id") is None,
        }
        for key in ("start_time", "end_time", "first_token_time"):  # RFC 3339, in UTC (the v2 API's times)
            if values[key] is not None:
                values[key] = parse_time(values[key], key).isoformat().replace("+00:00", "Z")
        return {key: value for key, value in values.items() if key in fields}

    def _trace_docs(self, db: sqlite3.Connection, trace_id: str, ctx: _RenderContext) -> list[dict]:
        if trace_id not in ctx.traces:
            rows = db.execute("SELECT doc FROM runs WHERE trace_id = ?", (trace_id,)).fetchall()
            ctx.traces[trace_id] = sorted((json.loads(r[0]) for r in rows), key=lambda d: d["dotted_order"])
        return ctx.traces[trace_id]

    def _render_run(
        self, db: sqlite3.Connection, doc: dict, fields: set[str] | None, ctx: _RenderContext
    ) -> dict:
        def wanted(name: str) -> bool:
            return fields is None or name in fields

        out = {key: value for key, value in doc.items() if wanted(key)}
        if wanted("status"):
            out["status"] = _status(doc)
        if wanted("parent_run_ids"):
            out["parent_run_ids"] = [seg_id for _, seg_id in parse_dotted_order(doc["dotted_order"])[:-1]]
        if wanted("child_run_ids") or wanted("direct_child_run_ids"):
            prefix = doc["dotted_order"] + "."
            trace = self._trace_docs(db, doc["trace_id"], ctx)
            descendants = [d["id"] for d in trace if d["dotted_order"].startswith(prefix)]
            direct = [d["id"] for d in trace if d.get("parent_run_id") == doc["id"]]
            if wanted("child_run_ids"):
                out["child_run_ids"] = descendants or None
            if wanted("direct_child_run_ids"):
                out["direct_child_run_ids"] = direct or None
        if wanted("feedback_stats"):
            out["feedback_stats"] = self._feedback_stats(
                db, "SELECT doc FROM feedback WHERE run_id = ?", (doc["id"],)
            )
        if wanted("app_path"):
            out["app_path"] = (
                f"/o/{self.tenant_id}/projects/p/{doc['session_id']}/r/{doc['id']}?trace_id={doc['trace_id']}"
            )
        if wanted("s3_urls"):
            rows = db.execute(
                "SELECT name, mime_type FROM attachments WHERE run_id = ? ORDER BY name", (doc["id"],)
            ).fetchall()
            out["s3_urls"] = {
                f"attachment.{name}": {
                    "presigned_url": (
                        f"/runs/{doc['id']}/attachments/{quote(name, safe='')}"
                        f"?signature={self.sign(doc['id'], name)}"
                    ),
                    "s3_url": f"emulator://{doc['id']}/{name}",
                    "mime_type": mime_type,
                }
                for name, mime_type in rows
            } or None
        usage = _usage(doc)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if wanted(key):
                out[key] = usage[key]
        for key in (
            "prompt_cost",
            "completion_cost",
            "total_cost",
            "prompt_token_details",
            "completion_token_details",
            "prompt_cost_details",
            "completion_cost_details",
            "first_token_time",
            "manifest_id",
            "in_dataset",
        ):
            if wanted(key):
                out[key] = None
        return out

    # -- feedback ------------------------------------------------------------------------------

    def _prepare_feedback(self, db: sqlite3.Connection, body: Any) -> dict:
        _expect(body, dict, "feedback")
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise ApiError(422, "feedback: key is required")
        score = body.get("score")
        if score is not None and not isinstance(score, (int, float)):
            raise ApiError(422, "feedback: score must be a number or a boolean")
        now = format_time(_now())
        run_id = _optional_uuid(body.get("run_id"), "run_id")
        run = self._load_run(db, run_id) if run_id else None
        created = body.get("created_at")
        modified = body.get("modified_at")
        doc = {
            "id": parse_uuid(body["id"], "id") if body.get("id") is not None else str(uuid.uuid4()),
            "created_at": format_time(parse_time(created, "created_at")) if created else now,
            "modified_at": format_time(parse_time(modified, "modified_at")) if modified else now,
            "run_id": run_id,
            "trace_id": _optional_uuid(body.get("trace_id"), "trace_id")
            or (run["trace_id"] if run else None),
            "key": key,
            "score": score,
            "value": body.get("value"),
            "comment": _expect(body.get("comment"), (str, type(None)), "comment"),
            "correction": body.get("correction"),
            "feedback_source": _expect(body.get("feedback_source"), (dict, type(None)), "feedback_source"),
            "feedback_config": body.get("feedback_config"),
            "session_id": (run["session_id"] if run else None)
            or _optional_uuid(body.get("session_id"), "session_id"),
            "start_time": run["start_time"] if run else None,
            "comparative_experiment_id": _optional_uuid(
                body.get("comparative_experiment_id"), "comparative_experiment_id"
            ),
            "feedback_group_id": _optional_uuid(body.get("feedback_group_id"), "feedback_group_id"),
            "extra": _expect(body.get("extra"), (dict, type(None)), "extra"),
        }
        return doc

    @staticmethod
    def _insert_feedback(db: sqlite3.Connection, doc: dict) -> None:
        db.execute(
            "INSERT INTO feedback (id, run_id, session_id, key, created_at, doc) VALUES (?, ?, ?, ?, ?, ?)",
            (doc["id"], doc["run_id"], doc["session_id"], doc["key"], doc["created_at"], _dumps(doc)),
        )

    def create_feedback(self, body: Any) -> dict:
        with self._tx() as db:
            doc = self._prepare_feedback(db, body)
            if db.execute("SELECT 1 FROM feedback WHERE id = ?", (doc["id"],)).fetchone():
                raise ApiError(409, "Feedback already exists")
            self._insert_feedback(db, doc)
            return doc

    def get_feedback(self, feedback_id: str) -> dict:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM feedback WHERE id = ?", (feedback_id,)).fetchone()
        if row is None:
            raise ApiError(404, "Feedback not found")
        return json.loads(row[0])

    def update_feedback(self, feedback_id: str, body: Any) -> dict:
        _expect(body, dict, "body")
        with self._tx() as db:
            row = db.execute("SELECT doc FROM feedback WHERE id = ?", (feedback_id,)).fetchone()
            if row is None:
                raise ApiError(404, "Feedback not found")
            doc = json.loads(row[0])
            for key in ("score", "value", "correction", "comment", "feedback_config"):
                if body.get(key) is not None:
                    doc[key] = body[key]
            doc["modified_at"] = format_time(_now())
            db.execute("UPDATE feedback SET doc = ? WHERE id = ?", (_dumps(doc), feedback_id))
            return doc

    def delete_feedback(self, feedback_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM feedback WHERE id = ?", (feedback_id,)).rowcount == 0:
                raise ApiError(404, "Feedback not found")

    def list_feedback(self, query: dict[str, list[str]]) -> list[dict]:
        runs = {parse_uuid(v, "run") for v in query.get("run", [])}
        sessions = {parse_uuid(v, "session") for v in query.get("session", [])}
        keys = set(query.get("key", []))
        sources = {s.lower() for s in query.get("source", [])}
        offset = _as_int((query.get("offset") or [0])[-1], "offset")
        limit = min(_as_int((query.get("limit") or [MAX_PAGE_SIZE])[-1], "limit", minimum=1), MAX_PAGE_SIZE)
        with self._tx() as db:
            rows = db.execute("SELECT doc FROM feedback ORDER BY created_at DESC, id DESC").fetchall()
        selected = []
        for (raw,) in rows:
            doc = json.loads(raw)
            if runs and doc.get("run_id") not in runs:
                continue
            if sessions and doc.get("session_id") not in sessions:
                continue
            if keys and doc["key"] not in keys:
                continue
            source_type = str((doc.get("feedback_source") or {}).get("type") or "").lower()
            if sources and source_type not in sources:
                continue
            selected.append(doc)
        return selected[offset : offset + limit]

    @staticmethod
    def _feedback_stats(db: sqlite3.Connection, sql: str, args: tuple) -> dict | None:
        grouped: dict[str, list[dict]] = {}
        for (raw,) in db.execute(sql, args):
            doc = json.loads(raw)
            grouped.setdefault(doc["key"], []).append(doc)
        if not grouped:
            return None
        stats = {}
        for key, items in grouped.items():
            scores = [float(item["score"]) for item in items if isinstance(item.get("score"), (int, float))]
            values: dict[str, int] = {}
            for item in items:
                if isinstance(item.get("value"), str):
                    values[item["value"]] = values.get(item["value"], 0) + 1
            stats[key] = {
                "n": len(items),
                "avg": (sum(scores) / len(scores)) if scores else None,
                "values": values,
            }
        return stats

    # -- misc ----------------------------------------------------------------------------------

    def settings(self) -> dict:
        return {
            "id": self.tenant_id,
            "display_name": "ragvault devstack",
            "created_at": self.created_at,
            "tenant_handle": None,
        }


class _RenderContext:
    """Per-request caches (runs of a trace) shared by filter predicates and rendering."""

    __slots__ = ("traces",)

    def __init__(self) -> None:
        self.traces: dict[str, list[dict]] = {}


def _make_predicate(
    key: str, tree: tuple, store: Store
) -> Callable[[dict, _RenderContext, sqlite3.Connection], bool]:
    if key == "filter":
        return lambda doc, _ctx, _db: evaluate_filter(tree, doc)
    if key == "trace_filter":

        def on_root(doc: dict, ctx: _RenderContext, db: sqlite3.Connection) -> bool:
            root = next(
                (d for d in store._trace_docs(db, doc["trace_id"], ctx) if d["id"] == doc["trace_id"]), None
            )
            return root is not None and evaluate_filter(tree, root)

        return on_root

    def on_tree(doc: dict, ctx: _RenderContext, db: sqlite3.Connection) -> bool:
        return any(evaluate_filter(tree, d) for d in store._trace_docs(db, doc["trace_id"], ctx))

    return on_tree


def _usage(doc: dict) -> dict[str, int]:
    """Token counts from ``usage_metadata`` (outputs or metadata) or an LLM ``token_usage``."""
    outputs = doc.get("outputs") or {}
    metadata = (doc.get("extra") or {}).get("metadata") or {}
    usage = outputs.get("usage_metadata") or metadata.get("usage_metadata")
    if isinstance(usage, dict):
        prompt = int(usage.get("input_tokens") or 0)
        completion = int(usage.get("output_tokens") or 0)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        }
    llm_output = outputs.get("llm_output")
    token_usage = llm_output.get("token_usage") if isinstance(llm_output, dict) else None
    if isinstance(token_usage, dict):
        prompt = int(token_usage.get("prompt_tokens") or 0)
        completion = int(token_usage.get("completion_tokens") or 0)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": int(token_usage.get("total_tokens") or prompt + completion),
        }
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))
    return values[index]


def _encode_cursor(start_time: str, run_id: str) -> str:
    raw = _dumps({"start_time": start_time, "id": run_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: Any) -> tuple[str, str]:
    try:
        text = _expect(cursor, str, "cursor")
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        start = format_time(parse_time(data["start_time"], "cursor"))
        return start, parse_uuid(data["id"], "cursor")
    except (ValueError, KeyError, TypeError, ApiError) as exc:
        raise ApiError(400, "Invalid cursor") from exc


# --------------------------------------------------------------------------------------------
# Multipart ingestion
# --------------------------------------------------------------------------------------------


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str, bytes]]:
    """Split a ``multipart/form-data`` body into ``(name, content type, data)`` parts."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or match is None:
        raise ApiError(422, "expected a multipart/form-data body with a boundary")
    boundary = match.group(1).encode()
    delimiter = b"\r\n--" + boundary
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise ApiError(422, "malformed multipart body: missing closing boundary")
    parts = []
    for chunk in chunks[1:-1]:
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise ApiError(422, "malformed multipart part: missing header separator")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        name_match = re.search(r'\bname="([^"]*)"', headers.get("content-disposition", ""))
        if name_match is None:
            raise ApiError(422, "malformed multipart part: missing name")
        parts.append((name_match.group(1), headers.get("content-type", "application/octet-stream"), data))
    return parts


_MULTIPART_RUN_FIELDS = {"inputs", "outputs", "events", "extra", "error", "serialized"}


def multipart_operations(parts: list[tuple[str, str, bytes]]) -> dict[str, list]:
    """Group multipart parts into run creates/updates, attachments and feedback."""
    runs: dict[tuple[str, str], dict] = {}
    fields: list[tuple[str, str, str, Any]] = []
    attachments: list[tuple[str, str, str, bytes]] = []
    feedback: list[Any] = []

    def load(name: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, f"part {name!r}: invalid JSON") from exc

    for name, content_type, data in parts:
        pieces = name.split(".")
        if pieces[0] in {"post", "patch"} and len(pieces) in {2, 3}:
            run_id = parse_uuid(pieces[1], f"part {name!r}")
            if len(pieces) == 2:
                run = _expect(load(name, data), dict, f"part {name!r}")
                run["id"] = run_id
                runs[(pieces[0], run_id)] = run
            elif pieces[2] in _MULTIPART_RUN_FIELDS:
                fields.append((pieces[0], run_id, pieces[2], load(name, data)))
            else:
                raise ApiError(422, f"part {name!r}: unknown run field {pieces[2]!r}")
        elif pieces[0] == "attachment" and len(pieces) == 3:
            mime_type = content_type.split(";")[0].strip() or "application/octet-stream"
            attachments.append((parse_uuid(pieces[1], f"part {name!r}"), pieces[2], mime_type, data))
        elif pieces[0] == "feedback" and len(pieces) == 2:
            item = _expect(load(name, data), dict, f"part {name!r}")
            item.setdefault("id", pieces[1])
            feedback.append(item)
        else:
            raise ApiError(422, f"unsupported multipart part name {name!r}")
    for operation, run_id, field, value in fields:
        run = runs.get((operation, run_id))
        if run is None:
            raise ApiError(422, f"part {operation}.{run_id}.{field} has no {operation}.{run_id} part")
        run[field] = value
    return {
        "posts": [run for (operation, _), run in runs.items() if operation == "post"],
        "patches": [run for (operation, _), run in runs.items() if operation == "patch"],
        "attachments": attachments,
        "feedback": feedback,
    }


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------

_UUID = r"(?P<id>[0-9a-fA-F-]{36})"
Route = tuple[str, re.Pattern[str], str, bool]
_ROUTES: list[Route] = [
    ("GET", re.compile(r"^/info/?$"), "info", False),
    ("GET", re.compile(r"^/(?:health|ok)/?$"), "health", False),
    ("GET", re.compile(r"^/settings/?$"), "settings", True),
    ("POST", re.compile(r"^/sessions/?$"), "create_session", True),
    ("GET", re.compile(r"^/sessions/?$"), "list_sessions", True),
    ("GET", re.compile(rf"^/sessions/{_UUID}/?$"), "get_session", True),
    ("PATCH", re.compile(rf"^/sessions/{_UUID}/?$"), "update_session", True),
    ("DELETE", re.compile(rf"^/sessions/{_UUID}/?$"), "delete_session", True),
    ("POST", re.compile(r"^/runs/?$"), "create_run", True),
    ("POST", re.compile(r"^/runs/batch/?$"), "batch_runs", True),
    ("POST", re.compile(r"^/runs/multipart/?$"), "multipart_runs", True),
    ("POST", re.compile(r"^/runs/query/?$"), "query_runs", True),
    ("POST", re.compile(r"^/v2/runs/query/?$"), "query_runs_v2", True),
    ("GET", re.compile(rf"^/runs/{_UUID}/?$"), "get_run", True),
    ("PATCH", re.compile(rf"^/runs/{_UUID}/?$"), "update_run", True),
    ("GET", re.compile(rf"^/runs/{_UUID}/attachments/(?P<name>[^/]+)$"), "get_attachment", False),
    ("POST", re.compile(r"^/feedback/?$"), "create_feedback", True),
    ("GET", re.compile(r"^/feedback/?$"), "list_feedback", True),
    ("GET", re.compile(rf"^/feedback/{_UUID}/?$"), "get_feedback", True),
    ("PATCH", re.compile(rf"^/feedback/{_UUID}/?$"), "update_feedback", True),
    ("DELETE", re.compile(rf"^/feedback/{_UUID}/?$"), "delete_feedback", True),
]


class _Request:
    """What an endpoint needs from one HTTP request."""

    __slots__ = ("body", "content_type", "match", "query")

    def __init__(
        self, match: re.Match[str], query: dict[str, list[str]], body: bytes, content_type: str
    ) -> None:
        self.match = match
        self.query = query
        self.body = body
        self.content_type = content_type

    def json(self) -> Any:
        if not self.body:
            raise ApiError(422, "a JSON body is required")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(422, f"invalid JSON body: {exc}") from exc

    def path_id(self, field: str = "id") -> str:
        return parse_uuid(self.match["id"], field)

    def flag(self, name: str, default: bool = False) -> bool:
        values = self.query.get(name)
        return _as_bool(values[-1], name) if values else default


Response = tuple[int, Any]


class _Endpoints:
    """Endpoint implementations; each returns ``(status, JSON payload)``."""

    def __init__(self, server: LangSmithEmulatorServer) -> None:
        self.server = server
        self.store = server.store

    def info(self, req: _Request) -> Response:
        return 200, {
            "version": self.server.version,
            "license_expiration_time": None,
            "batch_ingest_config": {
                "use_multipart_endpoint": False,
                "scale_up_qsize_trigger": 1000,
                "scale_up_nthreads_limit": 16,
                "scale_down_nempty_trigger": 4,
                "size_limit": 100,
                "size_limit_bytes": BATCH_SIZE_LIMIT_BYTES,
            },
            "instance_flags": {
                "zstd_compression_enabled": False,
                "ch_query_enabled": True,
                "sdb_query_enabled": False,
                "dataset_examples_multipart_enabled": False,
                "examples_multipart_enabled": False,
            },
            "customer_info": None,
            "sdk_versions": None,
        }

    def health(self, req: _Request) -> Response:
        return 200, {"status": "ok"}

    def settings(self, req: _Request) -> Response:
        return 200, self.store.settings()

    def create_session(self, req: _Request) -> Response:
        return 200, self.store.create_session(req.json(), upsert=req.flag("upsert"))

    def list_sessions(self, req: _Request) -> Response:
        return 200, self.store.list_sessions(req.query)

    def get_session(self, req: _Request) -> Response:
        return 200, self.store.get_session(req.path_id("session_id"), include_stats=req.flag("include_stats"))

    def update_session(self, req: _Request) -> Response:
        return 200, self.store.update_session(req.path_id("session_id"), req.json())

    def delete_session(self, req: _Request) -> Response:
        self.store.delete_session(req.path_id("session_id"))
        return 202, {"message": "Session deleted"}

    @staticmethod
    def _ingested(conflicts: list[str]) -> Response:
        if conflicts:
            raise ApiError(409, "Conflict: payload already received: " + ", ".join(conflicts))
        return 202, {"message": "Runs batch ingested"}

    def create_run(self, req: _Request) -> Response:
        conflicts = self.store.ingest([req.json()], [], derive_tree=True)
        if conflicts:
            raise ApiError(409, "Run already exists")
        return 202, {"message": "Run created"}

    def update_run(self, req: _Request) -> Response:
        payload = _expect(req.json(), dict, "body")
        payload["id"] = req.path_id("run_id")
        self.store.ingest([], [payload])
        return 202, {"message": "Run updated"}

    def batch_runs(self, req: _Request) -> Response:
        body = _expect(req.json(), dict, "body")
        posts = _expect(body.get("post") or [], list, "post")
        patches = _expect(body.get("patch") or [], list, "patch")
        return self._ingested(self.store.ingest(posts, patches))

    def multipart_runs(self, req: _Request) -> Response:
        operations = multipart_operations(parse_multipart(req.body, req.content_type))
        return self._ingested(self.store.ingest(**operations))

    def query_runs_v2(self, req: _Request) -> Response:
        if not self.server.serves_v2_runs:
            raise ApiError(404, "Not Found")  # the route of a server before 0.16
        return 200, self.store.query_runs_v2(req.json())

    def query_runs(self, req: _Request) -> Response:
        return 200, self.store.query_runs(req.json())

    def get_run(self, req: _Request) -> Response:
        return 200, self.store.get_run(req.path_id("run_id"))

    def create_feedback(self, req: _Request) -> Response:
        return 200, self.store.create_feedback(req.json())

    def list_feedback(self, req: _Request) -> Response:
        return 200, self.store.list_feedback(req.query)

    def get_feedback(self, req: _Request) -> Response:
        return 200, self.store.get_feedback(req.path_id("feedback_id"))

    def update_feedback(self, req: _Request) -> Response:
        return 200, self.store.update_feedback(req.path_id("feedback_id"), req.json())

    def delete_feedback(self, req: _Request) -> Response:
        self.store.delete_feedback(req.path_id("feedback_id"))
        return 200, {"message": "Feedback deleted"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LangSmithEmulator/1.0"
    # Small keep-alive responses must not wait for the client's delayed ACK (Nagle).
    disable_nagle_algorithm = True
    server: LangSmithEmulatorServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise ApiError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            body = b"".join(chunks)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ApiError(413, "request body too large")
            body = self.rfile.read(length) if length else b""
        encoding = self.headers.get("Content-Encoding", "").lower().strip()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding not in {"", "identity"}:
            raise ApiError(415, f"unsupported Content-Encoding {encoding!r}")
        return body

    def _authorized(self) -> bool:
        expected = self.server.api_key
        if not expected:
            return True
        supplied = self.headers.get("x-api-key")
        if supplied is None:
            authorization = self.headers.get("Authorization", "")
            if authorization.lower().startswith("bearer "):
                supplied = authorization[7:].strip()
        return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())

    def _dispatch(self, method: str) -> None:
        status: int
        payload: Any
        try:
            try:
                body = self._read_body()
            except ApiError:
                self.close_connection = True
                raise
            except (ValueError, OSError, EOFError) as exc:
                self.close_connection = True
                raise ApiError(400, "could not read the request body") from exc
            parts = urlsplit(self.path)
            path = _API_PREFIX_RE.sub("", parts.path, count=1)
            query = parse_qs(parts.query, keep_blank_values=True)
            route, allowed = None, []
            for route_method, pattern, name, needs_auth in _ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                allowed.append(route_method)
                if route_method == method:
                    route = (name, match, needs_auth)
                    break
            if route is None:
                raise ApiError(405 if allowed else 404, "Method Not Allowed" if allowed else "Not Found")
            name, match, needs_auth = route
            if name == "get_attachment":
                self._send_attachment(match, query)
                return
            if needs_auth and not self._authorized():
                raise ApiError(401, "Invalid API key")
            request = _Request(match, query, body, self.headers.get("Content-Type", ""))
            status, payload = getattr(_Endpoints(self.server), name)(request)
        except ApiError as exc:
            status, payload = exc.status, {"detail": exc.detail}
        except Exception:  # a bug must not kill the connection without an answer
            LOG.exception("unhandled error serving %s %s", method, self.path)
            status, payload = 500, {"detail": "Internal Server Error"}
        self._send(status, _dumps(payload).encode(), "application/json")

    def _send_attachment(self, match: re.Match[str], query: dict[str, list[str]]) -> None:
        run_id = parse_uuid(match["id"], "run_id")
        signature = (query.get("signature") or [""])[-1]
        mime_type, data = self.server.store.get_attachment(run_id, unquote(match["name"]), signature)
        self._send(200, data, mime_type)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class LangSmithEmulatorServer(ThreadingHTTPServer):
    """Threaded HTTP server holding the emulator's :class:`Store`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], data_dir: str, api_key: str | None = None,
                 version: str = EMULATED_VERSION) -> None:
        super().__init__(address, _Handler)
        self.api_key = api_key or None
        self.version = version
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
        #: whether ``POST /api/v2/runs/query`` exists (self-hosted LangSmith 0.16 and later)
        self.serves_v2_runs = numbers >= V2_RUNS_MIN_VERSION
        try:
            self.store = Store(data_dir)
        except BaseException:
            super().server_close()
            raise

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self.store.close()


def make_server(host: str, port: int, data_dir: str, api_key: str | None = None,
                version: str = EMULATED_VERSION) -> LangSmithEmulatorServer:
    """Bind the emulator (``port=0`` picks a free port); call ``serve_forever()`` to run it. ``version`` is the
    LangSmith version it answers as (before 0.16: no v2 runs query)."""
    return LangSmithEmulatorServer((host, port), str(data_dir), api_key=api_key, version=version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LangSmith REST API emulator for the ragvault devstack.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=11984, help="port to bind (default: %(default)s)")
    parser.add_argument("--data-dir", required=True, help="directory holding the SQLite state")
    parser.add_argument("--api-key", default=None, help="require this value in the x-api-key header")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    parser.add_argument("--version", default=EMULATED_VERSION,
                        help="the LangSmith version to answer as; before 0.16 there is no v2 runs query "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    server = make_server(args.host, args.port, args.data_dir, api_key=args.api_key, version=args.version)
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        LOG.info("received signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    worker = threading.Thread(target=server.serve_forever, name="langsmith-emulator", daemon=True)
    worker.start()
    LOG.info(
        "LangSmith emulator listening on %s (data dir %s, auth %s)",
        server.url,
        os.path.abspath(args.data_dir),
        "on" if args.api_key else "off",
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        worker.join(timeout=10)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
