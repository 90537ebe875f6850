"""Grafana hook: a requests session on Grafana's HTTP API, with paginated listings and clear errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ragvault.hooks.base import ConnectionHook, connection_url

#: answers worth another try (GET only): rate limiting and a proxy or Grafana restarting
RETRY_STATUSES = (429, 502, 503, 504)
#: bound on the pages of any listing (a server ignoring the page parameter is detected earlier)
MAX_PAGES = 100_000


class GrafanaError(RuntimeError):
    """Grafana answered with an error, with something that is not JSON, or not at all.

    The message names the method, the URL (never the credentials) and the cause; :attr:`status` is the
    HTTP status, or ``None`` when no answer came.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class GrafanaHook(ConnectionHook):
    """Talks to Grafana's HTTP API (Grafana 9 to 12, nested folders included).

    The connection (type ``http``) holds the address either as ``schema`` (``http`` when empty), ``host``
    and ``port`` (3000 by default), or as a full URL in ``host`` (``https://grafana.example.com/grafana``,
    for a Grafana served under a sub-path); extra ``url`` overrides both. Credentials: with a ``login``,
    ``login``/``password`` are sent as HTTP basic auth (a Grafana user); without one, ``password`` is a
    service account token sent as ``Authorization: Bearer``. Optional extra: ``org_id`` (sent as
    ``X-Grafana-Org-Id``) and ``verify`` (``false``, or a CA bundle path, for TLS).

    GET requests are retried on connection errors and on HTTP 429/502/503/504, at most ``retries`` times
    with exponential backoff. Every failure raises :class:`GrafanaError` naming the endpoint and the cause.

    :param grafana_conn_id: the Airflow connection id.
    :param timeout: seconds allowed to read each answer.
    :param connect_timeout: seconds allowed to connect.
    :param retries: retries of one GET before it fails.
    :param backoff_factor: base of the exponential backoff between retries, in seconds.
    """

    conn_name_attr = "grafana_conn_id"
    default_conn_name = "grafana_default"
    conn_type = "http"
    hook_name = "Grafana"

    def __init__(
        self,
        grafana_conn_id: str = default_conn_name,
        timeout: float = 60,
        connect_timeout: float = 10,
        retries: int = 3,
        backoff_factor: float = 0.5,
    ) -> None:
        super().__init__()
        self.grafana_conn_id = grafana_conn_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff_factor = backoff_factor

    # -- connection -------------------------------------------------------------------------------------
    @cached_property
    def _address(self) -> tuple[str, tuple[str, str] | None]:
        """The base URL without credentials, and the ``user:password`` a full URL may carry."""
        conn = self.connection
        raw = str(conn.extra_dejson.get("url") or "").strip()
        host = (conn.host or "").strip()
        if not raw and "://" in host:
            raw = host
        if not raw:
            if not host:
                raise GrafanaError(f"connection {self.grafana_conn_id!r} names no host")
            raw = connection_url(conn, port=3000)
        parts = urlsplit(raw)
        userinfo = None
        if parts.username is not None:
            userinfo = (parts.username, parts.password or "")
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6 literal
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), userinfo

    @property
    def base_url(self) -> str:
        """Grafana's root URL, without credentials (safe to log)."""
        return self._address[0]

    def describe(self) -> str:
        return self.base_url

    @cached_property
    def session(self) -> requests.Session:
        conn, extra = self.connection, self.connection.extra_dejson
        session = requests.Session()
        session.headers["Accept"] = "application/json"
        userinfo = self._address[1]
        if conn.login:
            session.auth = (conn.login, conn.password or "")
        elif conn.password:
            session.headers["Authorization"] = f"Bearer {conn.password}"
        elif userinfo:
            session.auth = userinfo
        if extra.get("org_id"):
            session.headers["X-Grafana-Org-Id"] = str(extra["org_id"])
        verify = extra.get("verify")
        if isinstance(verify, str) and verify.lower() in ("true", "false"):
            verify = verify.lower() == "true"
        if verify is not None:
            session.verify = verify  # a bool, or the path of a CA bundle
        retry = Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            backoff_factor=self.backoff_factor,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "HEAD"}),
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer comes back and is reported with its status
        )
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def get_conn(self) -> requests.Session:
        """The authenticated ``requests.Session``."""
        return self.session

    def close(self) -> None:
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    def __enter__(self) -> GrafanaHook:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, expected: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """Call the API and return its decoded JSON answer (``None`` for an empty body).

        :param path: the API path, e.g. ``/api/search``.
        :param expected: the statuses that count as success.
        :raises GrafanaError: on a connection failure, an unexpected status or a body that is not JSON.
        """
        url = self.url(path)
        try:
            response = self.session.request(
                method, url, timeout=(self.connect_timeout, self.timeout), **kwargs
            )
        except requests.RequestException as exc:
            raise GrafanaError(f"{method} {url}: no answer from Grafana: {_reason(exc)}") from exc
        if response.status_code not in expected:
            raise GrafanaError(
                f"{method} {url}: HTTP {response.status_code} {response.reason or ''}".rstrip()
                + f": {_error_text(response)}{_hint(response, self.grafana_conn_id)}",
                status=response.status_code,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise GrafanaError(
                f"{method} {url}: HTTP {response.status_code} but the body is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')}): "
                f"{response.text[:200]!r}",
                status=response.status_code,
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def get_optional(self, path: str, **params: Any) -> Any:
        """Like :meth:`get`, but ``None`` when the object does not exist (HTTP 404)."""
        try:
            return self.get(path, **params)
        except GrafanaError as exc:
            if exc.status == 404:
                return None
            raise

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expected: tuple[int, ...] = (200,),
        disable_provenance: bool = False,
    ) -> Any:
        """A write (``POST``, ``PUT``, ``PATCH``, ``DELETE``) with a JSON body; never retried.

        :param body: the JSON body, or ``None`` for none.
        :param expected: the statuses that count as success.
        :param disable_provenance: send ``X-Disable-Provenance: true`` (alerting provisioning API): the
            objects written stay editable in Grafana's UI instead of being marked as provisioned.
        :raises GrafanaError: as :meth:`request`.
        """
        headers = {"X-Disable-Provenance": "true"} if disable_provenance else None
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        return self.request(method, path, expected=expected, **kwargs)

    def health(self) -> dict[str, Any]:
        """``GET /api/health``: ``version``, ``commit`` and ``database`` (``ok``); needs no credentials."""
        return self.get("/api/health") or {}

    def answers(self) -> bool:
        """Whether a server answers ``GET /api/health`` at all (any HTTP status counts as an answer)."""
        try:
            self.health()
        except GrafanaError as exc:
            return exc.status is not None
        return True

    def server_version(self) -> str | None:
        return self.health().get("version")

    # -- paginated listings ------------------------------------------------------------------------------
    def paginate(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        page_size: int = 1000,
        size_param: str = "limit",
        items: Callable[[Any], list[dict[str, Any]]] = lambda body: body or [],
        key: str = "uid",
    ) -> Iterator[dict[str, Any]]:
        """Every item of a ``page``-numbered listing, one page in memory at a time.

        Items are de-duplicated on ``key`` (an object pushed onto the next page by a creation while the
        pages are read is yielded once). The listing ends on a short page, or on a page repeating the
        previous one item for item (a server that ignores the page parameter).
        """
        seen: set[Any] = set()
        previous: list[Any] | None = None
        for page in range(1, MAX_PAGES + 1):
            batch = items(self.get(path, **{**(params or {}), size_param: page_size, "page": page}))
            keys = [item.get(key) for item in batch]
            if keys == previous:
                return
            for item in batch:
                if item.get(key) not in seen:
                    seen.add(item.get(key))
                    yield item
            if len(batch) < page_size:
                return
            previous = keys
        raise GrafanaError(f"GET {self.url(path)}: still paging after {MAX_PAGES} pages of {page_size}")

    def search(self, kind: str = "dash-db", page_size: int = 1000, **params: Any) -> Iterator[dict[str, Any]]:
        """``GET /api/search`` hits of one ``type`` (``dash-db`` dashboards, ``dash-folder`` folders)."""
        return self.paginate("/api/search", {"type": kind, **params}, page_size=min(page_size, 5000))

    def folders(self, parent_uid: str | None = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """The folders directly under ``parent_uid`` (the root when ``None``): ``id``, ``uid``, ``title``."""
        params = {"parentUid": parent_uid} if parent_uid else {}
        return self.paginate("/api/folders", params, page_size=page_size)

    def walk_folders(self, page_size: int = 1000, max_depth: int = 64) -> Iterator[dict[str, Any]]:
        """Every folder, parents before children (breadth first), with ``parentUid`` (``None`` at the root).

        On a Grafana without nested folders ``parentUid`` is ignored by the server: every folder is then a
        root folder, each seen once.
        """
        seen: set[str] = set()
        level: list[str | None] = [None]
        for _ in range(max_depth + 1):
            next_level: list[str] = []
            for parent in level:
                for hit in self.folders(parent, page_size):
                    uid = hit.get("uid")
                    if not uid or uid in seen:
                        continue
                    seen.add(uid)
                    next_level.append(uid)
                    yield {**hit, "parentUid": hit.get("parentUid") or parent}
            if not next_level:
                return
            level = next_level

    def library_elements(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every library element (panels, kind 1, and variables, kind 2), from ``/api/library-elements``."""
        return self.paginate(
            "/api/library-elements",
            page_size=page_size,
            size_param="perPage",
            items=lambda body: ((body or {}).get("result") or {}).get("elements") or [],
        )

    def dashboard(self, uid: str) -> dict[str, Any] | None:
        """``GET /api/dashboards/uid/:uid`` (``dashboard`` and ``meta``), ``None`` if it no longer exists."""
        return self.get_optional(f"/api/dashboards/uid/{quote(uid, safe='')}")

    def dashboard_any(self, uid: str) -> dict[str, Any] | None:
        """The dashboard, whatever its schema: ``{dashboard, meta}`` from the classic API, or for a schema-v2
        dashboard of Grafana 12 (which the classic API refuses with HTTP 406, naming its ``/apis/...`` URL) the
        resource that URL serves: ``{apiVersion, kind, metadata, spec}``. ``None`` if it no longer exists."""
        try:
            return self.dashboard(uid)
        except GrafanaError as exc:
            found = V2_REDIRECT.search(str(exc)) if exc.status == 406 else None
            if found is None:
                raise
            return self.get_optional(found.group(1))

    def folder(self, uid: str) -> dict[str, Any] | None:
        """``GET /api/folders/:uid``, ``None`` if it no longer exists."""
        return self.get_optional(f"/api/folders/{quote(uid, safe='')}")


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause of a requests error (``[Errno 111] Connection refused``...), with its type."""
    cause: BaseException = exc
    for _ in range(10):
        inner = getattr(cause, "reason", None) or (
            cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        )
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    text = str(cause)
    if ": " in text and type(cause).__name__ in ("NewConnectionError", "NameResolutionError"):
        text = text.split(": ", 1)[1]  # drop the "<connection object at 0x...>: " prefix
    return f"{type(exc).__name__}: {text}"


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or "(empty body)"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(body)[:300]


#: the URL Grafana 12 names when its classic dashboard API refuses a schema-v2 dashboard (pkg/api/dashboard.go)
V2_REDIRECT = re.compile(r"use (/apis/dashboard\.grafana\.app/[^\s]+/namespaces/[^\s/]+/dashboards/[^\s/]+) instead")

#: Grafana's errors about an alerting object's provenance (a 403 or 409 that no permission cures)
PROVENANCE_MESSAGE_IDS = ("alerting.notifications.invalidProvenance", "alerting.provenanceMismatch")


def _hint(response: requests.Response, conn_id: str) -> str:
    status = response.status_code
    try:
        message_id = (response.json() or {}).get("messageId")
    except (ValueError, AttributeError):
        message_id = None
    if message_id in PROVENANCE_MESSAGE_IDS:
        return (" (the object is provisioned (its provenance is api, as Terraform leaves it, or file) and Grafana "
                "lets only the same way of provisioning change it; no permission changes that)")
    if status == 401:
        return f" (the credentials of connection {conn_id!r} were refused: check its token or login/password)"
    if status == 403:
        return f" (connection {conn_id!r} lacks a permission: it needs an Admin service account or user)"
    return ""
