"""Fixtures for the Qdrant emulator tests (``test_qdrant_emulator.py``).

``qdrant_openapi``
    Qdrant's published OpenAPI document (v1.19.0) turned into JSON Schema, able to validate any request body or
    answer body against the schema the document gives for a path, method and status.
``qdrant_emulator``
    Starts emulators (``include/devstack/qdrant_emulator.py``) in threads on free ports, each with its data in
    a temporary directory, and stops them at the end of the test.
``QdrantApi`` (from ``emulator.api()``, or ``qdrant_api(url, key)`` for any server)
    A small HTTP client that validates every JSON body it sends and every answer it gets against the OpenAPI
    document, and checks the status code.

The OpenAPI file is looked up in ``$QDRANT_OPENAPI_SPEC``, then in ``shared/specs/`` beside the repository.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from devstack.qdrant_emulator import EmulatorServer, make_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_ENV = "QDRANT_OPENAPI_SPEC"
SPEC_NAME = "qdrant-openapi-v1.19.0.json"
SPEC_URI = "urn:qdrant:openapi:v1.19.0"
MISSING = object()


def find_spec() -> Path:
    candidates = [Path(os.environ[SPEC_ENV])] if os.environ.get(SPEC_ENV) else []
    candidates += [REPO_ROOT / "include" / "devstack" / "specs" / SPEC_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise pytest.UsageError(f"Qdrant's OpenAPI document {SPEC_NAME} not found (looked in "
                            f"{', '.join(map(str, candidates))}); set {SPEC_ENV} to its path")


def openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects -> JSON Schema 2020-12.

    ``nullable: true`` becomes a ``null`` alternative. The document writes ``Option<T>`` as
    ``anyOf: [{$ref: T}, {nullable: true}]``: a lone ``{nullable: true}`` means "or null" (in JSON Schema an
    empty schema would accept anything and make every such ``anyOf`` pass), so it becomes ``{type: null}``.
    """
    if isinstance(node, list):
        return [openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: openapi_to_json_schema(value) for key, value in node.items()}
    if out.get("nullable") is not True:
        return out
    del out["nullable"]
    annotations = {"description", "default", "example", "deprecated", "title"}
    if not set(out) - annotations:
        return {"type": "null"}
    if isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}


def _format_checker() -> FormatChecker:
    checker = FormatChecker()
    ranges = {"uint8": 2**8, "uint32": 2**32, "uint64": 2**64, "uint": 2**64}

    def integer_range(limit: int) -> Callable[[Any], bool]:
        return lambda value: not isinstance(value, int) or isinstance(value, bool) or 0 <= value < limit

    for name, limit in ranges.items():
        checker.checks(name)(integer_range(limit))
    checker.checks("int64")(lambda v: not isinstance(v, int) or -(2**63) <= v < 2**63)

    @checker.checks("uuid", raises=ValueError)
    def is_uuid(value: Any) -> bool:
        if not isinstance(value, str):
            return True
        uuid.UUID(value)
        return True

    @checker.checks("partial-date-time")
    def is_partial_date_time(value: Any) -> bool:
        return not isinstance(value, str) or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", value)

    return checker


def _pointer(*parts: str) -> str:
    escaped = [p.replace("~", "~0").replace("/", "~1") for p in parts]
    return urllib.parse.quote("/" + "/".join(escaped), safe="/~")


class OpenApi:
    """Qdrant's OpenAPI document, able to validate bodies against the schemas of its operations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc = json.loads(path.read_text())
        schema_doc = openapi_to_json_schema(copy.deepcopy(self.doc))
        resource = Resource(contents=schema_doc, specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)
        self.format_checker = _format_checker()
        self.checked: set[tuple[str, str, str]] = set()

    def operation(self, method: str, template: str) -> dict:
        try:
            return self.doc["paths"][template][method.lower()]
        except KeyError:
            raise AssertionError(f"{method} {template} is not an operation of {self.path.name}") from None

    def validate(self, pointer: str, instance: Any, what: str) -> None:
        validator = Draft202012Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry,
                                         format_checker=self.format_checker)
        error = best_match(validator.iter_errors(instance))
        if error is not None:
            location = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise AssertionError(f"{what} does not match the OpenAPI schema at {location}: {error.message}\n"
                                 f"{json.dumps(instance)[:2000]}")

    def validate_request(self, method: str, template: str, body: Any) -> None:
        operation = self.operation(method, template)
        content = operation.get("requestBody", {}).get("content", {})
        assert "application/json" in content, f"{method} {template} takes no JSON body in the OpenAPI document"
        self.validate(_pointer("paths", template, method.lower(), "requestBody", "content", "application/json",
                               "schema"), body, f"request body of {method} {template}")

    def request_errors(self, method: str, template: str, body: Any) -> list[str]:
        """Why ``body`` is not a valid request body (empty when it is)."""
        try:
            self.validate_request(method, template, body)
        except AssertionError as exc:
            return [str(exc)]
        return []

    def validate_query(self, method: str, template: str, params: dict[str, Any]) -> None:
        declared = {p["name"]: i for i, p in enumerate(self.operation(method, template).get("parameters", []))
                    if p["in"] == "query"}
        for name, value in params.items():
            assert name in declared, f"query parameter {name} is not declared for {method} {template}"
            index = declared[name]
            schema = self.operation(method, template)["parameters"][index]["schema"]
            if schema.get("type") == "boolean":
                assert value in ("true", "false", True, False), f"{name}={value!r} is not a boolean"
                continue
            if schema.get("type") == "integer":
                value = int(value)
            self.validate(_pointer("paths", template, method.lower(), "parameters", str(index), "schema"), value,
                          f"query parameter {name} of {method} {template}")

    def response_content(self, method: str, template: str, status: int) -> tuple[str, dict]:
        responses = self.operation(method, template)["responses"]
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                return key, responses[key].get("content", {})
        raise AssertionError(f"status {status} is not an answer of {method} {template} in the OpenAPI document")

    def validate_response(self, method: str, template: str, response: requests.Response) -> None:
        key, content = self.response_content(method, template, response.status_code)
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not content:
            assert not response.content or content_type == "application/json", (
                f"{method} {template} {response.status_code}: the OpenAPI document gives no body")
            return
        assert content_type in content, (f"{method} {template} {response.status_code}: content type "
                                         f"{content_type!r}, the OpenAPI document gives {sorted(content)}")
        if content_type == "application/json":
            instance = response.json()
        elif content_type == "application/octet-stream":
            instance = "<binary>"  # left unread: the caller may be streaming it
        else:
            instance = response.text
        self.validate(_pointer("paths", template, method.lower(), "responses", key, "content", content_type,
                               "schema"), instance, f"answer {response.status_code} of {method} {template}")
        self.checked.add((method, template, key))


class QdrantApi:
    """HTTP client for one emulator: every JSON request body and every answer is checked against the spec."""

    def __init__(self, base_url: str, openapi: OpenApi, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.openapi = openapi
        self.session = requests.Session()
        if api_key:
            self.session.headers["api-key"] = api_key

    def url(self, template: str, path: dict[str, Any] | None = None) -> str:
        values = {k: urllib.parse.quote(str(v), safe="") for k, v in (path or {}).items()}
        return self.base_url + template.format(**values)

    def request(self, method: str, template: str, *, path: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None, json: Any = MISSING, expect: int = 200,
                check_body: bool = True, **kwargs: Any) -> requests.Response:
        if params:
            self.openapi.validate_query(method, template, params)
        if json is not MISSING:
            if check_body:
                self.openapi.validate_request(method, template, json)
            kwargs["json"] = json
        response = self.session.request(method, self.url(template, path), params=params, timeout=30, **kwargs)
        assert response.status_code == expect, (
            f"{method} {template} {path or ''}: expected {expect}, got {response.status_code}: "
            f"{response.text[:1000]}")
        self.openapi.validate_response(method, template, response)
        return response

    def result(self, method: str, template: str, **kwargs: Any) -> Any:
        """The ``result`` of a successful answer (the envelope checked: status ok, a time)."""
        body = self.request(method, template, **kwargs).json()
        assert body["status"] == "ok" and isinstance(body["time"], float), body
        return body["result"]

    def error(self, method: str, template: str, expect: int, **kwargs: Any) -> str:
        """The ``status.error`` text of an error answer with status ``expect``."""
        body = self.request(method, template, expect=expect, **kwargs).json()
        assert set(body) == {"status", "time"} and isinstance(body["status"]["error"], str), body
        return body["status"]["error"]

    def scroll_all(self, collection: str, page_size: int = 10, **body: Any) -> list[dict]:
        """Every point of ``collection`` through scroll pages of ``page_size`` (bounded by the point count)."""
        count = self.result("POST", "/collections/{collection_name}/points/count",
                            path={"collection_name": collection}, json={"exact": True})["count"]
        points, offset = [], None
        for _ in range(count // page_size + 2):
            request = {"limit": page_size, "with_payload": True, "with_vector": True, **body}
            if offset is not None:
                request["offset"] = offset
            page = self.result("POST", "/collections/{collection_name}/points/scroll",
                               path={"collection_name": collection}, json=request)
            points += page["points"]
            offset = page["next_page_offset"]
            if offset is None:
                return points
        raise AssertionError(f"scroll of {collection} did not end after {count} points")


@dataclass
class RunningEmulator:
    server: EmulatorServer
    thread: threading.Thread
    data_dir: Path
    openapi: OpenApi
    api_key: str | None
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def api(self, api_key: str | None | object = MISSING) -> QdrantApi:
        return QdrantApi(self.url, self.openapi, self.api_key if api_key is MISSING else api_key)

    def stop(self, clean: bool = True) -> None:
        """Stop serving; ``clean=False`` skips the shutdown work (folding the wal), like a killed process."""
        if self.stopped:
            return
        self.stopped = True
        self.server.shutdown()
        self.thread.join(timeout=10)
        if clean:
            self.server.server_close()
        else:
            self.server.socket.close()


@pytest.fixture(scope="session")
def qdrant_openapi() -> OpenApi:
    return OpenApi(find_spec())


@pytest.fixture
def qdrant_api(qdrant_openapi) -> Callable[[str, str | None], QdrantApi]:
    """``make(base_url, api_key) -> QdrantApi`` for a server started some other way (e.g. as a process)."""
    return lambda base_url, api_key=None: QdrantApi(base_url, qdrant_openapi, api_key)


@pytest.fixture
def qdrant_emulator(tmp_path, qdrant_openapi) -> Iterator[Callable[..., RunningEmulator]]:
    """``start(data_dir=None, api_key="test-qdrant-key", **make_server_kwargs) -> RunningEmulator``."""
    started: list[RunningEmulator] = []

    def start(data_dir: Path | None = None, api_key: str | None = "test-qdrant-key",
              **kwargs: Any) -> RunningEmulator:
        directory = data_dir or tmp_path / f"qdrant-{len(started)}"
        server = make_server("127.0.0.1", 0, directory, api_key, **kwargs)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        emulator = RunningEmulator(server, thread, directory, qdrant_openapi, api_key)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()
