#!/usr/bin/env python3
"""A Grafana HTTP API emulator whose whole state lives in a real SQLite ``grafana.db``.

Grafana itself cannot run in the development stack, so this server answers the part of Grafana 11/12's HTTP
API that ragvault backs up and restores, with Grafana's response shapes, status codes and ``{"message": ...}``
error bodies:

* ``/api/health``, ``/api/org``;
* folders, nested ones included (``/api/folders``), and ``/api/search``;
* dashboards (``/api/dashboards/db``, ``/api/dashboards/uid/:uid``), a ``dashboard_version`` row per save;
* data sources (``/api/datasources``), ``secureJsonData`` kept in the database and only reported as
  ``secureJsonFields``;
* library panels (``/api/library-elements``);
* the alerting provisioning API (``/api/v1/provisioning/...``: alert rules, rule groups, contact points,
  notification policies, mute timings, templates), honouring ``X-Disable-Provenance``;
* service accounts and their tokens (``/api/serviceaccounts``), enough to mint tokens as on a real Grafana.

Every object is stored in Grafana's own tables (``dashboard``, ``folder``, ``data_source``,
``library_element``, ``alert_rule``, ``alert_configuration``, ``provenance_type``, ``user``, ``api_key``...)
with the main columns of Grafana's schema, so a backup that copies ``grafana.db`` (SQLite online backup API)
finds the dashboards, data sources and alerting configuration where it would on a real Grafana. Secrets
(``secure_json_data``, contact point ``secureSettings``) are stored base64-encoded, not encrypted: this is a
development server. A minimal ``grafana.ini`` is written beside the database on first start.

Authentication: ``Authorization: Bearer <service account token>`` or HTTP basic auth with the admin user
(created on first start from ``--admin-user``/``--admin-password``, password hashed like Grafana does).

Run it::

    python include/devstack/grafana_emulator.py --host 127.0.0.1 --port 13000 --data-dir DIR --token TOKEN

or, from tests, ``make_server(host, port, data_dir, token=...)`` and ``serve_forever()`` in a thread.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import sqlite3
import string
import threading
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("grafana_emulator")

GRAFANA_VERSION = "11.6.0"
ORG_ID = 1
ORG_NAME = "Main Org."
MAX_UID_LENGTH = 40
SEARCH_DEFAULT_LIMIT = 1000
SEARCH_MAX_LIMIT = 5000
LIBRARY_DEFAULT_PER_PAGE = 100
DEFAULT_RULE_INTERVAL_SECONDS = 60
BASE_RULE_INTERVAL_SECONDS = 10
MAX_TREE_DEPTH = 64  # bound on every walk up or down the folder tree
REDACTED = "[REDACTED]"
DEFAULT_RECEIVER = "grafana-default-email"
PROVENANCE_API = "api"
PROVENANCE_NONE = ""
NO_DATA_STATES = ("Alerting", "NoData", "OK", "KeepLast")
EXEC_ERR_STATES = ("Alerting", "Error", "OK", "KeepLast")

UID_PATTERN = re.compile(r"^[a-zA-Z0-9\-_]*$")
TOKEN_PATTERN = re.compile(r"^glsa_([A-Za-z0-9]{32})_([0-9a-f]{8})$")

# Settings of each contact point type that Grafana keeps in ``secureSettings`` and shows as [REDACTED].
SECURE_CONTACT_POINT_FIELDS: dict[str, tuple[str, ...]] = {
    "alertmanager": ("basicAuthPassword",),
    "dingding": ("url",),
    "discord": ("url",),
    "googlechat": ("url",),
    "kafka": ("password",),
    "line": ("token",),
    "mqtt": ("password",),
    "oncall": ("password", "authorization_credentials"),
    "opsgenie": ("apiKey",),
    "pagerduty": ("integrationKey",),
    "pushover": ("userKey", "apiToken"),
    "sensugo": ("apiKey",),
    "slack": ("url", "token"),
    "telegram": ("bottoken",),
    "threema": ("api_secret",),
    "victorops": ("url",),
    "webex": ("bot_token",),
    "webhook": ("password", "authorization_credentials"),
    "wecom": ("url", "secret"),
}

# Contact point types with no secure field (channels_config.GetSecretKeysForContactPointType knows them too).
PLAIN_CONTACT_POINT_TYPES = ("email", "teams", "sns", "jira")
SLACK_API_URL = "https://slack.com/api/chat.postMessage"


def integration_error(name: str, uid: str, kind: str, reason: str) -> ApiError:
    """ErrValidation as the provisioning API answers it (400, ``invalid object specification: ...``), wrapping
    grafana/alerting's IntegrationValidationError text."""
    return ApiError(
        400,
        f'invalid object specification: failed to validate integration "{name}" (UID {uid}) of type "{kind}": '
        f"{reason}",
    )


# Core data source plugins: the name and small logo their plugin.json gives (public/app/plugins/datasource/*);
# Grafana leaves typeLogoUrl empty for a type whose plugin is not installed.
TYPE_NAMES = {"prometheus": "Prometheus", "loki": "Loki", "tempo": "Tempo", "elasticsearch": "Elasticsearch"}
TYPE_LOGOS = {
    "prometheus": "public/app/plugins/datasource/prometheus/img/prometheus_logo.svg",
    "loki": "public/app/plugins/datasource/loki/img/loki_icon.svg",
    "tempo": "public/app/plugins/datasource/tempo/img/tempo_logo.svg",
    "elasticsearch": "public/app/plugins/datasource/elasticsearch/img/elasticsearch.svg",
}


def type_logo_url(kind: str) -> str:
    return TYPE_LOGOS.get(kind, "")


def validate_integration(name: str, uid: str, kind: str, settings: dict) -> None:
    """What Grafana checks before it stores a contact point (``ValidateContactPoint`` in
    pkg/services/ngalert/provisioning/contactpoints.go, which builds the receiver with grafana/alerting): the type
    must be known, and the settings valid for it (secrets included, ``[REDACTED]`` already replaced by the stored
    secret on an update). Settings are checked here for the types ragvault's tests use, from grafana/alerting's
    receivers: slack (receivers/slack/config.go), webhook (receivers/webhook/config.go), email
    (receivers/email/config.go)."""
    if kind not in SECURE_CONTACT_POINT_FIELDS and kind not in PLAIN_CONTACT_POINT_TYPES:
        raise integration_error(name, uid, kind, f"notifier {kind} is not supported")

    def text(key: str) -> str:
        value = settings.get(key)
        return value.strip() if isinstance(value, str) else ""

    if kind == "slack":
        url = text("url") or text("endpointUrl") or SLACK_API_URL
        if url == SLACK_API_URL and not text("recipient"):
            raise integration_error(name, uid, kind, "recipient must be specified when using the Slack chat API")
        if url == SLACK_API_URL and not text("token"):
            raise integration_error(name, uid, kind, "token must be specified when using the Slack chat API")
    elif kind == "webhook" and not text("url"):
        raise integration_error(name, uid, kind, "required field 'url' is not specified")
    elif kind == "email" and not text("addresses"):
        raise integration_error(name, uid, kind, "could not find addresses in settings")


SCHEMA = """
CREATE TABLE IF NOT EXISTS `org` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `version` INTEGER NOT NULL, `name` TEXT NOT NULL,
    `address1` TEXT NULL, `address2` TEXT NULL, `city` TEXT NULL, `state` TEXT NULL, `zip_code` TEXT NULL,
    `country` TEXT NULL, `billing_email` TEXT NULL, `created` DATETIME NOT NULL, `updated` DATETIME NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_org_name` ON `org` (`name`);

CREATE TABLE IF NOT EXISTS `user` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `version` INTEGER NOT NULL, `login` TEXT NOT NULL,
    `email` TEXT NOT NULL, `name` TEXT NULL, `password` TEXT NULL, `salt` TEXT NULL, `rands` TEXT NULL,
    `company` TEXT NULL, `org_id` INTEGER NOT NULL, `is_admin` INTEGER NOT NULL,
    `email_verified` INTEGER NULL, `theme` TEXT NULL, `created` DATETIME NOT NULL,
    `updated` DATETIME NOT NULL,
    `help_flags1` INTEGER NOT NULL DEFAULT 0, `last_seen_at` DATETIME NULL,
    `is_disabled` INTEGER NOT NULL DEFAULT 0, `is_service_account` INTEGER DEFAULT 0, `uid` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_user_login` ON `user` (`login`);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_user_email` ON `user` (`email`);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_user_uid` ON `user` (`uid`);

CREATE TABLE IF NOT EXISTS `org_user` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `user_id` INTEGER NOT NULL,
    `role` TEXT NOT NULL, `created` DATETIME NOT NULL, `updated` DATETIME NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_org_user_org_id_user_id` ON `org_user` (`org_id`, `user_id`);

CREATE TABLE IF NOT EXISTS `api_key` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `name` TEXT NOT NULL,
    `key` TEXT NOT NULL, `role` TEXT NOT NULL, `created` DATETIME NOT NULL, `updated` DATETIME NOT NULL,
    `expires` INTEGER NULL, `service_account_id` INTEGER NULL, `last_used_at` DATETIME NULL,
    `is_revoked` INTEGER NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_api_key_key` ON `api_key` (`key`);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_api_key_org_id_name` ON `api_key` (`org_id`, `name`);

CREATE TABLE IF NOT EXISTS `dashboard` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `version` INTEGER NOT NULL, `slug` TEXT NOT NULL,
    `title` TEXT NOT NULL, `data` TEXT NOT NULL, `org_id` INTEGER NOT NULL, `created` DATETIME NOT NULL,
    `updated` DATETIME NOT NULL, `updated_by` INTEGER NULL, `created_by` INTEGER NULL, `gnet_id` INTEGER NULL,
    `plugin_id` TEXT NULL, `folder_id` INTEGER NOT NULL DEFAULT 0, `is_folder` INTEGER NOT NULL DEFAULT 0,
    `has_acl` INTEGER NOT NULL DEFAULT 0, `uid` TEXT NULL, `is_public` INTEGER NOT NULL DEFAULT 0,
    `deleted` DATETIME NULL, `folder_uid` TEXT NULL, `api_version` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_dashboard_org_id_uid` ON `dashboard` (`org_id`, `uid`);
CREATE INDEX IF NOT EXISTS `IDX_dashboard_org_id_folder_uid` ON `dashboard` (`org_id`, `folder_uid`);

CREATE TABLE IF NOT EXISTS `dashboard_tag` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `dashboard_id` INTEGER NOT NULL, `term` TEXT NOT NULL,
    `dashboard_uid` TEXT NULL, `org_id` INTEGER NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS `IDX_dashboard_tag_dashboard_id` ON `dashboard_tag` (`dashboard_id`);

CREATE TABLE IF NOT EXISTS `dashboard_version` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `dashboard_id` INTEGER NOT NULL,
    `parent_version` INTEGER NOT NULL, `restored_from` INTEGER NOT NULL, `version` INTEGER NOT NULL,
    `created` DATETIME NOT NULL, `created_by` INTEGER NOT NULL, `message` TEXT NOT NULL, `data` TEXT NULL,
    `api_version` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_dashboard_version_dashboard_id_version`
    ON `dashboard_version` (`dashboard_id`, `version`);

CREATE TABLE IF NOT EXISTS `folder` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `uid` TEXT NOT NULL, `org_id` INTEGER NOT NULL,
    `title` TEXT NOT NULL, `description` TEXT NULL, `parent_uid` TEXT NULL, `created` DATETIME NOT NULL,
    `updated` DATETIME NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_folder_uid_org_id` ON `folder` (`uid`, `org_id`);

CREATE TABLE IF NOT EXISTS `data_source` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `version` INTEGER NOT NULL,
    `type` TEXT NOT NULL, `name` TEXT NOT NULL, `access` TEXT NOT NULL, `url` TEXT NOT NULL,
    `password` TEXT NULL, `user` TEXT NULL, `database` TEXT NULL, `basic_auth` INTEGER NOT NULL,
    `basic_auth_user` TEXT NULL, `basic_auth_password` TEXT NULL, `is_default` INTEGER NOT NULL,
    `json_data` TEXT NULL, `created` DATETIME NOT NULL, `updated` DATETIME NOT NULL,
    `with_credentials` INTEGER NOT NULL DEFAULT 0, `secure_json_data` TEXT NULL, `read_only` INTEGER NULL,
    `uid` TEXT NOT NULL DEFAULT 0, `is_prunable` INTEGER NULL DEFAULT 0, `api_version` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_data_source_org_id_name` ON `data_source` (`org_id`, `name`);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_data_source_org_id_uid` ON `data_source` (`org_id`, `uid`);

CREATE TABLE IF NOT EXISTS `library_element` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `folder_id` INTEGER NOT NULL,
    `uid` TEXT NOT NULL, `name` TEXT NOT NULL, `kind` INTEGER NOT NULL, `type` TEXT NOT NULL,
    `description` TEXT NOT NULL, `model` TEXT NOT NULL, `created` DATETIME NOT NULL,
    `created_by` INTEGER NOT NULL,
    `updated` DATETIME NOT NULL, `updated_by` INTEGER NOT NULL, `version` INTEGER NOT NULL,
    `folder_uid` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_library_element_org_id_uid` ON `library_element` (`org_id`, `uid`);

CREATE TABLE IF NOT EXISTS `library_element_connection` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `element_id` INTEGER NOT NULL, `kind` INTEGER NOT NULL,
    `connection_id` INTEGER NOT NULL, `created` DATETIME NOT NULL, `created_by` INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_library_element_connection_element_id_kind_connection_id`
    ON `library_element_connection` (`element_id`, `kind`, `connection_id`);

CREATE TABLE IF NOT EXISTS `alert_rule` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `title` TEXT NOT NULL,
    `condition` TEXT NOT NULL, `data` TEXT NOT NULL, `updated` DATETIME NOT NULL,
    `interval_seconds` INTEGER NOT NULL DEFAULT 60, `version` INTEGER NOT NULL DEFAULT 0,
    `uid` TEXT NOT NULL DEFAULT 0, `namespace_uid` TEXT NOT NULL, `rule_group` TEXT NOT NULL,
    `no_data_state` TEXT NOT NULL DEFAULT 'NoData', `exec_err_state` TEXT NOT NULL DEFAULT 'Alerting',
    `for` INTEGER NOT NULL DEFAULT 0, `annotations` TEXT NULL, `labels` TEXT NULL,
    `rule_group_idx` INTEGER NOT NULL DEFAULT 1, `is_paused` INTEGER NOT NULL DEFAULT 0,
    `notification_settings` TEXT NULL, `record` TEXT NULL, `metadata` TEXT NULL,
    `keep_firing_for` INTEGER NOT NULL DEFAULT 0, `missing_series_evals_to_resolve` INTEGER NULL,
    `updated_by` TEXT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_alert_rule_org_id_uid` ON `alert_rule` (`org_id`, `uid`);
CREATE INDEX IF NOT EXISTS `IDX_alert_rule_org_id_namespace_uid_rule_group`
    ON `alert_rule` (`org_id`, `namespace_uid`, `rule_group`);

CREATE TABLE IF NOT EXISTS `alert_configuration` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `alertmanager_configuration` TEXT NOT NULL,
    `configuration_version` TEXT NOT NULL, `created_at` INTEGER NOT NULL,
    `default` INTEGER NOT NULL DEFAULT 0,
    `org_id` INTEGER NOT NULL DEFAULT 0, `configuration_hash` TEXT NOT NULL DEFAULT 'not-yet-calculated');
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_alert_configuration_org_id` ON `alert_configuration` (`org_id`);

CREATE TABLE IF NOT EXISTS `provenance_type` (
    `id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `org_id` INTEGER NOT NULL, `record_key` TEXT NOT NULL,
    `record_type` TEXT NOT NULL, `provenance` TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS `UQE_provenance_type_record_type_record_key_org_id`
    ON `provenance_type` (`record_type`, `record_key`, `org_id`);
"""


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error answer: ``status`` and a JSON body (``{"message": ...}`` unless given), or no body."""

    def __init__(
        self, code: int, message: str | None = None, *, body: Any = None, empty: bool = False, **extra: Any
    ) -> None:
        super().__init__(message or f"HTTP {code}")
        self.status = code
        if empty:
            self.body = None
        elif body is not None:
            self.body = body
        else:
            self.body = {"message": message or "", **extra}


def errutil_error(status: int, message_id: str, message: str | None = None) -> ApiError:
    """An error shaped like Grafana's ``errutil`` errors (message, messageId, statusCode)."""
    default = {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Conflict"}.get(status, "Error")
    return ApiError(
        status, body={"message": message or default, "messageId": message_id, "statusCode": status}
    )


def provenance_error(stored: str, requested: str) -> ApiError:
    return errutil_error(
        403,
        "alerting.notifications.invalidProvenance",
        f"Resource with provenance status '{stored}' cannot be managed via API that handles resources with "
        f"provenance status '{requested}'. You must use appropriate API to manage this resource",
    )


def check_provenance(stored: str, requested: str) -> None:
    """Grafana's rule: a resource without provenance may be taken by anyone, otherwise it must not change."""
    if stored not in (PROVENANCE_NONE, requested):
        raise provenance_error(stored, requested)


#: Kubernetes-style dashboard API (Grafana 12): the group's URL, the namespace of org 1 (Grafana's namespace mapper:
#: "default" for org 1, "org-N" for the others) and the schema-v2 versions served
K8S_DASHBOARDS = "/apis/dashboard.grafana.app"
NAMESPACE = "default"
K8S_V2_VERSIONS = ("v2alpha1", "v2beta1")


def k8s_status(code: int, reason: str, message: str, name: str | None = None) -> ApiError:
    """A Kubernetes ``Status`` error body, as Grafana's /apis answer."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if name:
        body["details"] = {"name": name, "group": "dashboard.grafana.app", "kind": "dashboards"}
    return ApiError(code, body=body)


def rule_provenance_mismatch(operation: str, provided: str, stored: str) -> ApiError:
    """``errProvenanceMismatch`` of Grafana's alert rule provisioning service
    (pkg/services/ngalert/provisioning/alert_rules.go): 409 ``alerting.provenanceMismatch``."""
    return errutil_error(409, "alerting.provenanceMismatch",
                         f"cannot {operation} with provided provenance '{provided}', needs '{stored}'")


def can_update_provenance_in_rule_group(stored: str, provided: str) -> bool:
    """``validation.CanUpdateProvenanceInRuleGroup`` (pkg/services/ngalert/provisioning/validation): replacing a
    rule group may keep the provenance, take rules without one, or reset ``api`` (and ``converted_prometheus``)
    to none; ``file`` stays ``file``."""
    if stored in (provided, PROVENANCE_NONE):
        return True
    return provided == PROVENANCE_NONE and stored in (PROVENANCE_API, "converted_prometheus")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def db_time(moment: dt.datetime | None = None) -> str:
    """Grafana's (xorm's) SQLite DATETIME text, in UTC."""
    return (moment or utcnow()).strftime("%Y-%m-%d %H:%M:%S")


def api_time(value: str | None) -> str:
    """A stored DATETIME as the RFC 3339 text Grafana's API answers with."""
    if not value:
        return "0001-01-01T00:00:00Z"
    try:
        moment = dt.datetime.strptime(value[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    """A short random uid in the style of Grafana's generated ones (14 chars, starting with a letter)."""
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice("abcdef") + "".join(secrets.choice(alphabet) for _ in range(13))


def validate_uid(uid: str, invalid: str = "uid contains illegal characters") -> None:
    if not UID_PATTERN.match(uid):
        raise ApiError(400, invalid)
    if len(uid) > MAX_UID_LENGTH:
        raise ApiError(400, "uid too long, max 40 characters")


def slugify(title: str) -> str:
    """A URL slug like Grafana's: lower-case ASCII words joined by dashes (a hash when nothing is left)."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    return slug or hashlib.sha1(title.encode()).hexdigest()[:8]


def dashboard_url(uid: str, slug: str) -> str:
    return f"/d/{uid}/{slug}"


def folder_url(uid: str, title: str) -> str:
    return f"/dashboards/f/{uid}/{slugify(title)}"


def jloads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def jdumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def unb64(value: str) -> str:
    try:
        return base64.b64decode(value.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return value


def encode_password(password: str, salt: str) -> str:
    """Grafana's ``util.EncodePassword``: hex PBKDF2-SHA256, 10000 rounds, 50 bytes."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 10000, 50).hex()


def random_string(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def token_hash(token: str) -> str:
    """The ``api_key.key`` value of a token: SHA-256 of a ``glsa_`` token's secret part, else of the token."""
    match = TOKEN_PATTERN.match(token)
    return hashlib.sha256((match.group(1) if match else token).encode()).hexdigest()


def new_service_account_token() -> str:
    secret = random_string(32)
    return f"glsa_{secret}_{zlib.crc32(('glsa_' + secret).encode()):08x}"


def avatar_url(email: str) -> str:
    return "/avatar/" + hashlib.md5(email.strip().lower().encode()).hexdigest()


_DURATION_UNITS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
)
_DURATION_PATTERN = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)


def parse_duration(value: Any, what: str = "duration") -> int:
    """A Prometheus duration text (``"5m"``, ``"1h30m"``, ``"0s"``) as nanoseconds."""
    if value is None or value == "":
        return 0
    if not isinstance(value, str):
        raise ApiError(400, f'invalid {what}: expected a duration string such as "5m", got {value!r}')
    if value == "0":
        return 0
    match = _DURATION_PATTERN.match(value)
    if not match or not any(match.groups()):
        raise ApiError(400, f"invalid {what}: not a valid duration string: {value!r}")
    millis = sum(int(group) * mult for group, (_, mult) in zip(match.groups(), _DURATION_UNITS, strict=True) if group)
    return millis * 1_000_000


def format_duration(nanos: int) -> str:
    """Nanoseconds as Prometheus' ``model.Duration`` prints them."""
    millis = int(nanos // 1_000_000)
    if millis == 0:
        return "0s"
    out = ""
    for unit, mult in _DURATION_UNITS:
        if unit in ("y", "w") and millis % mult:
            continue
        count, millis = divmod(millis, mult)
        if count:
            out += f"{count}{unit}"
    return out


EXPRESSION_DATASOURCE_UIDS = ("__expr__", "-100")  # expr.DatasourceUID and its legacy id
DEFAULT_MAX_DATA_POINTS = 43200  # models.defaultMaxDataPoints: 12 hours at 1 s
DEFAULT_INTERVAL_MS = 1000  # models.defaultIntervalMS


def go_seconds(seconds: Any) -> str:
    """Seconds as Go's ``time.Duration.String`` prints them (``10m0s``, ``1h0m0s``, ``0s``)."""
    total = int(seconds or 0)
    if total == 0:
        return "0s"
    sign, total = ("-", -total) if total < 0 else ("", total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def pre_save_query(query: dict) -> dict:
    """An alert query as Grafana stores it: ``AlertQuery.PreSave`` (pkg/services/ngalert/models/alert_query.go).

    ``queryType`` is taken from the model when the model has one; the model gains ``maxDataPoints`` 43200 and
    ``intervalMs`` 1000 when they are missing, zero or not numbers; a data source query (not an expression)
    needs ``relativeTimeRange.from`` > ``to`` (400 ``alerting.alert-rule.invalidRelativeTime``).
    """
    model = copy.deepcopy(query.get("model"))
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise ApiError(400, "invalid alert rule: failed to unmarshal query model")
    query_type = str(query.get("queryType") or "")
    if "queryType" in model:
        if not isinstance(model["queryType"], str):
            raise ApiError(400, f"failed to set query type to query model: failed to get queryType from query "
                                f"model: {model['queryType']}")
        query_type = model["queryType"]
    for key, default in (("maxDataPoints", DEFAULT_MAX_DATA_POINTS), ("intervalMs", DEFAULT_INTERVAL_MS)):
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
            model[key] = default
    span = query.get("relativeTimeRange") or {}
    if not isinstance(span, dict):
        raise ApiError(400, "invalid alert rule: relativeTimeRange must be an object")
    start, end = span.get("from") or 0, span.get("to") or 0
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"invalid alert rule: invalid duration {value}")  # Duration.UnmarshalJSON
    # the AlertQuery struct: these five keys and no others
    query = {
        "refId": str(query.get("refId") or ""),
        "queryType": query_type,
        "relativeTimeRange": {"from": start, "to": end},
        "datasourceUid": str(query.get("datasourceUid") or ""),
        "model": model,
    }
    if query["datasourceUid"] not in EXPRESSION_DATASOURCE_UIDS and not start > end:
        raise errutil_error(
            400,
            "alerting.alert-rule.invalidRelativeTime",
            f"Invalid alert rule query {query.get('refId')}: invalid relative time range "
            f"[From: {go_seconds(start)}, To: {go_seconds(end)}]",
        )
    return query


def sync_fields_with_model(model: dict, element_type: str = "", description: str = "") -> tuple[dict, str, str]:
    """``syncFieldsWithModel`` (pkg/services/libraryelements/database.go): the model's ``type`` and
    ``description`` win when present; when absent the element's (empty for a new one, the stored ones on a
    PATCH) are written into the model. Returns the model as stored, and the element's type and description."""
    model = dict(model)
    for key, current in (("type", element_type), ("description", description)):
        value = model.get(key)
        if value is None:
            model[key] = current
        elif not isinstance(value, str):  # Go's unchecked type assertion panics; the recovery answers 500
            raise ApiError(500, "Internal Server Error")
    return model, model["type"], model["description"]


def walk_routes(route: dict | None) -> Iterator[dict]:
    """Every route of a notification policy tree, depth first (the tree is bounded by its JSON)."""
    stack = [route] if isinstance(route, dict) else []
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in node.get("routes") or [] if isinstance(child, dict))


MATCH_TYPES = ("=", "!=", "=~", "!~")  # labels.MatchType order: MatchEqual, MatchNotEqual, MatchRegexp, ...
ROUTE_DURATIONS = ("group_wait", "group_interval", "repeat_interval")


def normalize_route(node: Any, depth: int = 0) -> dict:
    """A notification policy as Grafana writes it back: the ``Route`` struct of grafana/alerting's
    definition/compat.go marshalled by encoding/json.

    Keys in struct order, empty ones left out (every field is ``omitempty``: ``continue: false`` disappears),
    durations re-printed by Prometheus' ``model.Duration`` (``24h`` becomes ``1d``, ``168h`` ``1w``),
    ``object_matchers`` with surrounding quotes trimmed from values and sorted (``ObjectMatchers.UnmarshalJSON``
    sorts by name, value, type), unknown keys dropped.
    """
    if not isinstance(node, dict):
        raise ApiError(400, "invalid object specification: a route must be an object")
    if depth > MAX_TREE_DEPTH:
        raise ApiError(400, "invalid object specification: the policy tree is too deep")
    out: dict[str, Any] = {}
    if node.get("receiver"):
        out["receiver"] = str(node["receiver"])
    if node.get("group_by"):
        out["group_by"] = [str(label) for label in node["group_by"]]
    for key in ("match", "match_re"):
        if node.get(key):
            out[key] = dict(node[key])
    if node.get("matchers"):
        out["matchers"] = list(node["matchers"])
    if node.get("object_matchers"):
        matchers = []
        for matcher in node["object_matchers"]:
            if not isinstance(matcher, list) or len(matcher) != 3:
                raise ApiError(400, "invalid object specification: a matcher is [name, operator, value]")
            name, operator, value = (str(part) for part in matcher)
            if operator not in MATCH_TYPES:
                raise ApiError(400, f'unsupported match type "{operator}" in matcher')
            value = value.removeprefix('"').removesuffix('"')
            matchers.append([name, operator, value])
        matchers.sort(key=lambda matcher: (matcher[0], matcher[2], MATCH_TYPES.index(matcher[1])))
        out["object_matchers"] = matchers
    for key in ("mute_time_intervals", "active_time_intervals"):
        if node.get(key):
            out[key] = [str(name) for name in node[key]]
    if node.get("continue"):
        out["continue"] = True
    if node.get("routes"):
        out["routes"] = [normalize_route(child, depth + 1) for child in node["routes"]]
    for key in ROUTE_DURATIONS:
        if node.get(key) not in (None, ""):
            out[key] = format_duration(parse_duration(node[key], key))
    if node.get("provenance"):
        out["provenance"] = str(node["provenance"])
    return out


def strip_route_provenance(route: dict) -> dict:
    route = copy.deepcopy(route)
    for node in walk_routes(route):
        node.pop("provenance", None)
    return route


# ------------------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Any
    raw_body: bytes
    identity: dict = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """All values of a repeated query parameter, comma-separated lists split."""
        out: list[str] = []
        for value in self.query.get(name, []):
            out.extend(part for part in value.split(",") if part != "")
        return out

    def int_arg(self, name: str, default: int) -> int:
        value = self.arg(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"invalid value for {name}: {value!r}") from None

    def bool_arg(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        if not self.raw_body.strip():
            return {}
        try:
            return json.loads(self.raw_body)
        except ValueError:
            raise ApiError(400, "bad request data") from None

    def json_object(self) -> dict:
        body = self.json()
        if not isinstance(body, dict):
            raise ApiError(400, "bad request data")
        return body

    @property
    def provenance(self) -> str:
        """``""`` when the request carries ``X-Disable-Provenance`` (whatever its value), else ``"api"``."""
        return PROVENANCE_NONE if "X-Disable-Provenance" in self.headers else PROVENANCE_API

    @property
    def user_id(self) -> int:
        return int(self.identity.get("id") or 0)


# ------------------------------------------------------------------------------------------------------------
# State: grafana.db and the API semantics on top of it
# ------------------------------------------------------------------------------------------------------------


class GrafanaState:
    """Grafana's objects in ``<data_dir>/grafana.db``; every public method runs inside :meth:`transaction`."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        token: str | None = None,
        admin_user: str = "admin",
        admin_password: str = "admin",
        hide_version: bool = False,
    ) -> None:
        self.hide_version = hide_version
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "grafana.db"
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        with self.transaction():
            self.db.executescript(SCHEMA)
        with self.transaction():
            self._bootstrap(admin_user, admin_password, token)
        self._write_ini()

    # -- plumbing --------------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Serialise access and commit on success, roll back on any error."""
        with self.lock, self.db:
            yield self.db

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def insert(self, table: str, values: dict[str, Any]) -> int:
        columns = ", ".join(f"`{name}`" for name in values)
        marks = ", ".join("?" for _ in values)
        cursor = self.db.execute(
            f"INSERT INTO `{table}` ({columns}) VALUES ({marks})", tuple(values.values())
        )
        return int(cursor.lastrowid)

    def update(self, table: str, row_id: int, values: dict[str, Any]) -> None:
        assignments = ", ".join(f"`{name}` = ?" for name in values)
        self.db.execute(f"UPDATE `{table}` SET {assignments} WHERE id = ?", (*values.values(), row_id))

    def _write_ini(self) -> None:
        ini = self.data_dir / "grafana.ini"
        if ini.exists():
            return
        ini.write_text(
            "; Grafana configuration of the ragvault development stack (Grafana HTTP API emulator).\n"
            "[paths]\n"
            f"data = {self.data_dir}\n\n"
            "[database]\n"
            "type = sqlite3\n"
            "path = grafana.db\n"
            + ("\n[auth.anonymous]\nhide_version = true\n" if self.hide_version else "")
        )

    def _bootstrap(self, admin_user: str, admin_password: str, token: str | None) -> None:
        now = db_time()
        if not self.one("SELECT id FROM org WHERE id = ?", ORG_ID):
            self.insert(
                "org",
                {
                    "id": ORG_ID,
                    "version": 0,
                    "name": ORG_NAME,
                    "address1": "",
                    "address2": "",
                    "city": "",
                    "state": "",
                    "zip_code": "",
                    "country": "",
                    "billing_email": "",
                    "created": now,
                    "updated": now,
                },
            )
        if not self.one("SELECT id FROM `user` WHERE is_service_account = 0 AND is_admin = 1"):
            salt = random_string(10)
            user_id = self.insert(
                "user",
                {
                    "version": 0,
                    "login": admin_user,
                    "email": "admin@localhost",
                    "name": "",
                    "password": encode_password(admin_password, salt),
                    "salt": salt,
                    "rands": random_string(10),
                    "company": "",
                    "org_id": ORG_ID,
                    "is_admin": 1,
                    "email_verified": 0,
                    "theme": "",
                    "created": now,
                    "updated": now,
                    "help_flags1": 0,
                    "last_seen_at": now,
                    "is_disabled": 0,
                    "is_service_account": 0,
                    "uid": new_uid(),
                },
            )
            self.insert(
                "org_user",
                {"org_id": ORG_ID, "user_id": user_id, "role": "Admin", "created": now, "updated": now},
            )
        if token and not self.one("SELECT id FROM api_key WHERE `key` = ?", token_hash(token)):
            account = self.one("SELECT id FROM `user` WHERE login = ?", "sa-1-ragvault")
            account_id = account["id"] if account else self._create_service_account("ragvault", "Admin")["id"]
            self._create_token(
                account_id, f"ragvault-{hashlib.sha256(token.encode()).hexdigest()[:8]}", token
            )
        if not self.one("SELECT id FROM alert_configuration WHERE org_id = ?", ORG_ID):
            self._am_store(self._am_default(), created=True)

    # -- identity --------------------------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> dict:
        """The user or service account behind an Authorization header; 401 otherwise."""
        if not header:
            raise ApiError(401, "Unauthorized")
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            row = self.one(
                "SELECT u.id, u.login, u.name, u.email, u.is_service_account, k.expires, k.is_revoked "
                "FROM api_key k JOIN `user` u ON u.id = k.service_account_id WHERE k.`key` = ?",
                token_hash(credentials),
            )
            if (
                row is None
                or row["is_revoked"]
                or (row["expires"] and row["expires"] < int(utcnow().timestamp()))
            ):
                raise ApiError(401, "Invalid API key")
            return dict(row)
        if scheme.lower() == "basic" and credentials:
            try:
                login, _, password = base64.b64decode(credentials).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ApiError(401, "Invalid username or password") from None
            row = self.one(
                "SELECT * FROM `user` WHERE (login = ? OR email = ?) AND is_service_account = 0", login, login
            )
            if (
                row is None
                or row["is_disabled"]
                or not secrets.compare_digest(
                    encode_password(password, row["salt"] or ""), row["password"] or ""
                )
            ):
                raise ApiError(401, "Invalid username or password")
            return {key: row[key] for key in ("id", "login", "name", "email", "is_service_account")}
        raise ApiError(401, "Unauthorized")

    def _login_of(self, user_id: int | None) -> str:
        row = self.one("SELECT login FROM `user` WHERE id = ?", user_id or 0)
        return row["login"] if row else "Anonymous"

    def _user_brief(self, user_id: int | None) -> dict:
        row = self.one("SELECT id, login, email FROM `user` WHERE id = ?", user_id or 0)
        if row is None:
            return {"id": 0, "name": "", "avatarUrl": ""}
        return {"id": row["id"], "name": row["login"], "avatarUrl": avatar_url(row["email"])}

    def _create_service_account(self, name: str, role: str, disabled: bool = False) -> dict:
        login = f"sa-{ORG_ID}-{slugify(name)}"
        if self.one("SELECT id FROM `user` WHERE login = ?", login):
            raise ApiError(400, "service account already exists")
        now = db_time()
        account_id = self.insert(
            "user",
            {
                "version": 0,
                "login": login,
                "email": login,
                "name": name,
                "password": "",
                "salt": "",
                "rands": random_string(10),
                "company": "",
                "org_id": ORG_ID,
                "is_admin": 0,
                "email_verified": 0,
                "theme": "",
                "created": now,
                "updated": now,
                "help_flags1": 0,
                "last_seen_at": now,
                "is_disabled": int(disabled),
                "is_service_account": 1,
                "uid": new_uid(),
            },
        )
        self.insert(
            "org_user",
            {"org_id": ORG_ID, "user_id": account_id, "role": role, "created": now, "updated": now},
        )
        return {
            "id": account_id,
            "uid": self.one("SELECT uid FROM `user` WHERE id = ?", account_id)["uid"],
            "name": name,
            "login": login,
            "orgId": ORG_ID,
            "isDisabled": disabled,
            "role": role,
            "tokens": 0,
            "avatarUrl": avatar_url(login),
        }

    def _create_token(self, account_id: int, name: str, token: str, seconds_to_live: int = 0) -> int:
        if self.one("SELECT id FROM api_key WHERE org_id = ? AND name = ?", ORG_ID, name):
            raise ApiError(409, "service account token with given name already exists in the organization")
        now = db_time()
        expires = int(utcnow().timestamp()) + seconds_to_live if seconds_to_live > 0 else None
        return self.insert(
            "api_key",
            {
                "org_id": ORG_ID,
                "name": name,
                "key": token_hash(token),
                "role": "Viewer",
                "created": now,
                "updated": now,
                "expires": expires,
                "service_account_id": account_id,
                "is_revoked": 0,
            },
        )

    # -- misc ------------------------------------------------------------------------------------------------

    def health(self, _req: Request) -> tuple[int, Any]:
        """apiHealthHandler (pkg/api/http_server.go): ``database`` first; ``version`` and ``commit`` only
        without ``[auth.anonymous] hide_version``; 503 with ``database: failing`` when the database does not
        answer."""
        try:
            self.one("SELECT 1")
            database, status = "ok", 200
        except sqlite3.Error:
            database, status = "failing", 503
        answer = {"database": database}
        if not self.hide_version:
            answer.update(version=GRAFANA_VERSION, commit="ragvault-emulator")
        return status, answer

    def get_org(self, _req: Request) -> tuple[int, Any]:
        row = self.one("SELECT * FROM org WHERE id = ?", ORG_ID)
        return 200, {
            "id": row["id"],
            "name": row["name"],
            "address": {
                "address1": row["address1"] or "",
                "address2": row["address2"] or "",
                "city": row["city"] or "",
                "zipCode": row["zip_code"] or "",
                "state": row["state"] or "",
                "country": row["country"] or "",
            },
        }

    def create_service_account(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        name = str(body.get("name") or "").strip()
        if not name:
            raise ApiError(400, "service account name is required")
        role = body.get("role") or "Viewer"
        if role not in ("None", "Viewer", "Editor", "Admin"):
            raise ApiError(400, f"invalid role: {role}")
        return 201, self._create_service_account(name, role, bool(body.get("isDisabled")))

    def create_service_account_token(self, req: Request) -> tuple[int, Any]:
        account = self.one(
            "SELECT id FROM `user` WHERE id = ? AND is_service_account = 1",
            req.params["id"] if req.params["id"].isdigit() else -1,
        )
        if account is None:
            raise ApiError(404, "service account not found")
        body = req.json_object()
        name = str(body.get("name") or "").strip()
        if not name:
            raise ApiError(400, "token name is required")
        token = new_service_account_token()
        token_id = self._create_token(account["id"], name, token, int(body.get("secondsToLive") or 0))
        return 200, {"id": token_id, "name": name, "key": token}

    # -- folders ---------------------------------------------------------------------------------------------

    def _folder(self, uid: str | None) -> sqlite3.Row | None:
        if not uid:
            return None
        return self.one(
            "SELECT f.*, d.version AS version, d.created_by AS created_by, d.updated_by AS updated_by "
            "FROM folder f LEFT JOIN dashboard d ON d.id = f.id WHERE f.uid = ? AND f.org_id = ?",
            uid,
            ORG_ID,
        )

    def _require_folder(self, uid: str) -> sqlite3.Row:
        row = self._folder(uid)
        if row is None:
            raise ApiError(404, "folder not found")
        return row

    def _folder_ancestors(self, row: sqlite3.Row) -> list[sqlite3.Row]:
        """The folders above ``row``, from the root down to its parent."""
        chain: list[sqlite3.Row] = []
        parent_uid = row["parent_uid"]
        seen = {row["uid"]}
        while parent_uid and len(chain) < MAX_TREE_DEPTH and parent_uid not in seen:
            parent = self._folder(parent_uid)
            if parent is None:
                break
            seen.add(parent_uid)
            chain.append(parent)
            parent_uid = parent["parent_uid"]
        return list(reversed(chain))

    def _folder_subtree(self, uid: str) -> list[str]:
        """``uid`` and the uids of every folder below it."""
        found, frontier = [uid], [uid]
        for _ in range(MAX_TREE_DEPTH):
            if not frontier:
                break
            marks = ",".join("?" for _ in frontier)
            frontier = [
                r["uid"]
                for r in self.all(
                    f"SELECT uid FROM folder WHERE org_id = ? AND parent_uid IN ({marks})", ORG_ID, *frontier
                )
                if r["uid"] not in found
            ]
            found.extend(frontier)
        return found

    def _folder_dto(self, row: sqlite3.Row, with_parents: bool = True) -> dict:
        dto = {
            "id": row["id"],
            "uid": row["uid"],
            "orgId": row["org_id"],
            "title": row["title"],
            "url": folder_url(row["uid"], row["title"]),
            "hasAcl": False,
            "canSave": True,
            "canEdit": True,
            "canAdmin": True,
            "canDelete": True,
            "canCreate": True,
            "createdBy": self._login_of(row["created_by"]),
            "created": api_time(row["created"]),
            "updatedBy": self._login_of(row["updated_by"]),
            "updated": api_time(row["updated"]),
            "version": row["version"] or 1,
        }
        # dtos.Folder (pkg/api/dtos/folder.go) has no description: Grafana stores it and never returns it here
        if row["parent_uid"]:
            dto["parentUid"] = row["parent_uid"]
            if with_parents:
                dto["parents"] = [
                    self._folder_dto(parent, with_parents=False) for parent in self._folder_ancestors(row)
                ]
        return dto

    def _check_folder_title(self, title: str, parent_uid: str | None, exclude_uid: str | None = None) -> None:
        clash = self.one(
            "SELECT uid FROM folder WHERE org_id = ? AND title = ? AND parent_uid IS ? AND uid != ?",
            ORG_ID,
            title,
            parent_uid or None,
            exclude_uid or "",
        )
        if clash:
            raise ApiError(409, "a folder with the same name already exists in the current location")

    def list_folders(self, req: Request) -> tuple[int, Any]:
        parent_uid = req.arg("parentUid") or None
        if parent_uid:
            self._require_folder(parent_uid)
        limit = max(1, req.int_arg("limit", SEARCH_DEFAULT_LIMIT))
        page = max(1, req.int_arg("page", 1))
        rows = self.all(
            "SELECT * FROM folder WHERE org_id = ? AND parent_uid IS ? "
            "ORDER BY title COLLATE NOCASE, id LIMIT ? OFFSET ?",
            ORG_ID,
            parent_uid,
            limit,
            (page - 1) * limit,
        )
        hits = []
        for row in rows:
            hit = {"id": row["id"], "uid": row["uid"], "title": row["title"]}
            if row["parent_uid"]:
                hit["parentUid"] = row["parent_uid"]
            hits.append(hit)
        return 200, hits

    def get_folder(self, req: Request) -> tuple[int, Any]:
        return 200, self._folder_dto(self._require_folder(req.params["uid"]))

    def create_folder(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        title = str(body.get("title") or "").strip()
        if not title:
            raise ApiError(400, "folder title cannot be empty")
        uid = str(body.get("uid") or "") or new_uid()
        validate_uid(uid, "invalid uid for folder provided")
        if self._folder(uid) or self.one(
            "SELECT id FROM dashboard WHERE org_id = ? AND uid = ?", ORG_ID, uid
        ):
            raise ApiError(409, "a folder/dashboard with the same uid already exists")
        parent_uid = str(body.get("parentUid") or "") or None
        parent = self._require_folder(parent_uid) if parent_uid else None
        self._check_folder_title(title, parent_uid)
        now = db_time()
        data = {"title": title, "uid": uid, "version": 1}
        folder_id = self.insert(
            "dashboard",
            {
                "version": 1,
                "slug": slugify(title),
                "title": title,
                "data": jdumps(data),
                "org_id": ORG_ID,
                "created": now,
                "updated": now,
                "created_by": req.user_id,
                "updated_by": req.user_id,
                "folder_id": parent["id"] if parent else 0,
                "is_folder": 1,
                "has_acl": 0,
                "uid": uid,
                "folder_uid": parent_uid,
            },
        )
        data["id"] = folder_id
        self.update("dashboard", folder_id, {"data": jdumps(data)})
        self.insert(
            "folder",
            {
                "id": folder_id,
                "uid": uid,
                "org_id": ORG_ID,
                "title": title,
                "description": str(body.get("description") or ""),
                "parent_uid": parent_uid,
                "created": now,
                "updated": now,
            },
        )
        return 200, self._folder_dto(self._folder(uid))

    def update_folder(self, req: Request) -> tuple[int, Any]:
        row = self._require_folder(req.params["uid"])
        body = req.json_object()
        if not body.get("overwrite") and body.get("version") != row["version"]:
            raise ApiError(412, "the folder has been changed by someone else", status="version-mismatch")
        title = str(body.get("title") or "").strip() or row["title"]
        self._check_folder_title(title, row["parent_uid"], exclude_uid=row["uid"])
        description = body.get("description", row["description"])
        now = db_time()
        version = (row["version"] or 1) + 1
        data = {"title": title, "uid": row["uid"], "id": row["id"], "version": version}
        self.update("folder", row["id"], {"title": title, "description": description, "updated": now})
        self.update(
            "dashboard",
            row["id"],
            {
                "title": title,
                "slug": slugify(title),
                "version": version,
                "data": jdumps(data),
                "updated": now,
                "updated_by": req.user_id,
            },
        )
        return 200, self._folder_dto(self._folder(row["uid"]))

    def move_folder(self, req: Request) -> tuple[int, Any]:
        row = self._require_folder(req.params["uid"])
        body = req.json_object()
        parent_uid = str(body.get("parentUid") or "") or None
        parent = self._require_folder(parent_uid) if parent_uid else None
        if parent_uid and parent_uid in self._folder_subtree(row["uid"]):
            raise ApiError(
                400, "failed to move folder: a folder cannot be moved under itself or its descendants"
            )
        self._check_folder_title(row["title"], parent_uid, exclude_uid=row["uid"])
        now = db_time()
        self.update("folder", row["id"], {"parent_uid": parent_uid, "updated": now})
        self.update(
            "dashboard",
            row["id"],
            {
                "folder_uid": parent_uid,
                "folder_id": parent["id"] if parent else 0,
                "updated": now,
                "updated_by": req.user_id,
            },
        )
        return 200, self._folder_dto(self._folder(row["uid"]))

    def delete_folder(self, req: Request) -> tuple[int, Any]:
        row = self._require_folder(req.params["uid"])
        subtree = self._folder_subtree(row["uid"])
        marks = ",".join("?" for _ in subtree)
        rules = self.all(
            f"SELECT uid FROM alert_rule WHERE org_id = ? AND namespace_uid IN ({marks})", ORG_ID, *subtree
        )
        if rules and not req.bool_arg("forceDeleteRules"):
            raise ApiError(400, "folder cannot be deleted: folder contains alert rules")
        dashboards = [
            r["id"]
            for r in self.all(
                f"SELECT id FROM dashboard WHERE org_id = ? AND is_folder = 0 AND folder_uid IN ({marks})",
                ORG_ID,
                *subtree,
            )
        ]
        elements = [
            r["id"]
            for r in self.all(
                f"SELECT id FROM library_element WHERE org_id = ? AND folder_uid IN ({marks})",
                ORG_ID,
                *subtree,
            )
        ]
        if elements:
            element_marks = ",".join("?" for _ in elements)
            outside = [
                c["connection_id"]
                for c in self.all(
                    "SELECT connection_id FROM library_element_connection "
                    f"WHERE element_id IN ({element_marks})",
                    *elements,
                )
                if c["connection_id"] not in dashboards
            ]
            if outside:
                raise ApiError(403, "folder contains library elements that are linked in dashboards")
        for rule in rules:
            self._delete_rule_row(rule["uid"])
        for element_id in elements:
            self.db.execute("DELETE FROM library_element_connection WHERE element_id = ?", (element_id,))
            self.db.execute("DELETE FROM library_element WHERE id = ?", (element_id,))
        for dashboard_id in dashboards:
            self._delete_dashboard_rows(dashboard_id)
        self.db.execute(
            f"DELETE FROM dashboard WHERE org_id = ? AND is_folder = 1 AND uid IN ({marks})",
            (ORG_ID, *subtree),
        )
        self.db.execute(f"DELETE FROM folder WHERE org_id = ? AND uid IN ({marks})", (ORG_ID, *subtree))
        return 200, {"message": "Folder deleted", "id": row["id"], "title": row["title"]}

    # -- search ----------------------------------------------------------------------------------------------

    def search(self, req: Request) -> tuple[int, Any]:
        query = (req.arg("query") or "").strip().lower()
        kind = req.arg("type") or ""
        tags = req.args("tag")
        folder_uids = req.args("folderUIDs") + req.args("folderUid")
        folder_ids = req.args("folderIds")
        dashboard_uids = set(req.args("dashboardUIDs") + req.args("dashboardUID"))
        dashboard_ids = {int(value) for value in req.args("dashboardIds") if value.isdigit()}
        limit = max(1, req.int_arg("limit", SEARCH_DEFAULT_LIMIT))
        if limit > SEARCH_MAX_LIMIT:  # pkg/api/search.go (Search): refused, not capped
            raise ApiError(422, f"Limit is above maximum allowed ({SEARCH_MAX_LIMIT}), use page parameter to "
                                "access hits beyond limit")
        page = max(1, req.int_arg("page", 1))
        if req.bool_arg("starred"):
            return 200, []  # nobody stars anything here

        folders = {row["uid"]: row for row in self.all("SELECT * FROM folder WHERE org_id = ?", ORG_ID)}
        wanted_parents: set[str | None] | None = None
        if folder_uids or folder_ids:
            wanted_parents = {None if uid == "general" else uid for uid in folder_uids}
            by_id = {row["id"]: uid for uid, row in folders.items()}
            wanted_parents |= {
                None if value == "0" else by_id.get(int(value), "?")
                for value in folder_ids
                if value.isdigit()
            }

        def parent_fields(parent_uid: str | None) -> dict:
            parent = folders.get(parent_uid or "")
            if parent is None:
                return {}
            return {
                "folderId": parent["id"],
                "folderUid": parent["uid"],
                "folderTitle": parent["title"],
                "folderUrl": folder_url(parent["uid"], parent["title"]),
            }

        def keep(uid: str, row_id: int, title: str, parent_uid: str | None) -> bool:
            return (
                (not query or query in title.lower())
                and (wanted_parents is None or parent_uid in wanted_parents)
                and (not dashboard_uids or uid in dashboard_uids)
                and (not dashboard_ids or row_id in dashboard_ids)
            )

        hits: list[tuple[tuple, dict]] = []
        if kind in ("", "dash-folder") and not tags:
            for row in folders.values():
                if keep(row["uid"], row["id"], row["title"], row["parent_uid"]):
                    slug = slugify(row["title"])
                    hit = {
                        "id": row["id"],
                        "uid": row["uid"],
                        "orgId": ORG_ID,
                        "title": row["title"],
                        "uri": f"db/{slug}",
                        "url": folder_url(row["uid"], row["title"]),
                        "slug": slug,
                        "type": "dash-folder",
                        "tags": [],
                        "isStarred": False,
                        **parent_fields(row["parent_uid"]),
                        "sortMeta": 0,
                        "isDeleted": False,
                    }
                    hits.append(((0, row["title"].lower(), row["id"]), hit))
        if kind in ("", "dash-db"):
            for row in self.all(
                "SELECT id, uid, title, slug, data, folder_uid FROM dashboard "
                "WHERE org_id = ? AND is_folder = 0 AND deleted IS NULL",
                ORG_ID,
            ):
                if not keep(row["uid"], row["id"], row["title"], row["folder_uid"]):
                    continue
                dashboard_tags = [str(tag) for tag in jloads(row["data"], {}).get("tags") or []]
                if any(tag not in dashboard_tags for tag in tags):
                    continue
                hit = {
                    "id": row["id"],
                    "uid": row["uid"],
                    "orgId": ORG_ID,
                    "title": row["title"],
                    "uri": f"db/{row['slug']}",
                    "url": dashboard_url(row["uid"], row["slug"]),
                    "slug": row["slug"],
                    "type": "dash-db",
                    "tags": dashboard_tags,
                    "isStarred": False,
                    **parent_fields(row["folder_uid"]),
                    "sortMeta": 0,
                    "isDeleted": False,
                }
                hits.append(((1, row["title"].lower(), row["id"]), hit))
        hits.sort(key=lambda pair: pair[0])
        start = (page - 1) * limit
        return 200, [hit for _, hit in hits[start : start + limit]]

    # -- dashboards ------------------------------------------------------------------------------------------

    def _dashboard(self, uid: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM dashboard WHERE org_id = ? AND uid = ? AND is_folder = 0", ORG_ID, uid)

    def _delete_dashboard_rows(self, dashboard_id: int) -> None:
        self.db.execute("DELETE FROM dashboard_tag WHERE dashboard_id = ?", (dashboard_id,))
        self.db.execute("DELETE FROM dashboard_version WHERE dashboard_id = ?", (dashboard_id,))
        self.db.execute(
            "DELETE FROM library_element_connection WHERE kind = 1 AND connection_id = ?", (dashboard_id,)
        )
        self.db.execute("DELETE FROM dashboard WHERE id = ?", (dashboard_id,))

    @staticmethod
    def _library_panel_uids(dashboard: dict) -> set[str]:
        """The uids of the library panels a dashboard uses (rows' nested panels included)."""
        found: set[str] = set()
        stack = list(dashboard.get("panels") or [])
        for _ in range(100_000):
            if not stack:
                break
            panel = stack.pop()
            if not isinstance(panel, dict):
                continue
            library_panel = panel.get("libraryPanel")
            if isinstance(library_panel, dict) and library_panel.get("uid"):
                found.add(str(library_panel["uid"]))
            stack.extend(panel.get("panels") or [])
        return found

    def save_dashboard(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        dashboard = body.get("dashboard")
        if not isinstance(dashboard, dict):
            raise ApiError(400, "bad request data: dashboard is required")
        title = str(dashboard.get("title") or "").strip()
        if not title:
            raise ApiError(400, "Dashboard title cannot be empty", status="empty-name")
        message = str(body.get("message") or "")
        if len(message) > 500:
            raise ApiError(400, "message too long, max 500 characters")
        overwrite = bool(body.get("overwrite"))

        folder_uid = str(body.get("folderUid") or "") or None
        if folder_uid is None and body.get("folderId"):
            by_id = self.one("SELECT uid FROM folder WHERE org_id = ? AND id = ?", ORG_ID, body["folderId"])
            if by_id is None:
                raise ApiError(404, "Folder not found")
            folder_uid = by_id["uid"]
        folder = self._folder(folder_uid) if folder_uid else None
        if folder_uid and folder is None:
            raise ApiError(404, "Folder not found")

        uid = str(dashboard.get("uid") or "") or None
        if uid:
            validate_uid(uid)
        dashboard_id = dashboard.get("id")
        existing = None
        if uid:
            existing = self.one("SELECT * FROM dashboard WHERE org_id = ? AND uid = ?", ORG_ID, uid)
            if existing is not None and existing["is_folder"]:
                raise ApiError(400, "Dashboard cannot be changed to a folder")
            if existing is not None and dashboard_id and existing["id"] != dashboard_id:
                raise ApiError(400, "A dashboard with the same uid already exists")
        elif dashboard_id:
            existing = self.one(
                "SELECT * FROM dashboard WHERE org_id = ? AND id = ? AND is_folder = 0", ORG_ID, dashboard_id
            )
            if existing is None:
                raise ApiError(404, "Dashboard not found", status="not-found")
        if existing is not None and not overwrite and dashboard.get("version") != existing["version"]:
            raise ApiError(412, "The dashboard has been changed by someone else", status="version-mismatch")

        clash = self.one(
            "SELECT * FROM dashboard WHERE org_id = ? AND is_folder = 0 AND title = ? "
            "AND folder_uid IS ? AND id != ?",
            ORG_ID,
            title,
            folder_uid,
            existing["id"] if existing is not None else 0,
        )
        if clash is not None:
            if not overwrite or existing is not None:
                raise ApiError(
                    412, "A dashboard with the same name in the folder already exists", status="name-exists"
                )
            existing = clash  # Grafana's overwrite takes over the dashboard holding that title

        now = db_time()
        version = existing["version"] + 1 if existing is not None else 1
        uid = existing["uid"] if existing is not None else (uid or new_uid())
        slug = slugify(title)
        data = dict(dashboard, title=title, uid=uid, version=version)
        values = {
            "version": version,
            "slug": slug,
            "title": title,
            "org_id": ORG_ID,
            "updated": now,
            "updated_by": req.user_id,
            "folder_id": folder["id"] if folder else 0,
            "is_folder": 0,
            "uid": uid,
            "folder_uid": folder_uid,
        }
        if existing is not None:
            dashboard_id = existing["id"]
            data["id"] = dashboard_id
            self.update("dashboard", dashboard_id, {**values, "data": jdumps(data)})
        else:
            dashboard_id = self.insert(
                "dashboard", {**values, "data": "{}", "created": now, "created_by": req.user_id, "has_acl": 0}
            )
            data["id"] = dashboard_id
            self.update("dashboard", dashboard_id, {"data": jdumps(data)})

        self.db.execute("DELETE FROM dashboard_tag WHERE dashboard_id = ?", (dashboard_id,))
        for tag in dict.fromkeys(str(tag) for tag in data.get("tags") or []):
            self.insert(
                "dashboard_tag",
                {"dashboard_id": dashboard_id, "term": tag, "dashboard_uid": uid, "org_id": ORG_ID},
            )
        self.insert(
            "dashboard_version",
            {
                "dashboard_id": dashboard_id,
                "parent_version": existing["version"] if existing is not None else 0,
                "restored_from": 0,
                "version": version,
                "created": now,
                "created_by": req.user_id,
                "message": message,
                "data": jdumps(data),
            },
        )
        # pkg/api/dashboard.go (postDashboard): library panels are connected after the dashboard is saved;
        # connectElementsToDashboardID (pkg/services/libraryelements/database.go) fails on the first uid that
        # is not a library element and its transaction keeps the old connections: the dashboard stays saved,
        # the answer is 500.
        elements = [
            self.one("SELECT id FROM library_element WHERE org_id = ? AND uid = ?", ORG_ID, element_uid)
            for element_uid in sorted(self._library_panel_uids(data))
        ]
        if any(element is None for element in elements):
            return 500, {"message": "Error while connecting library panels"}
        self.db.execute(
            "DELETE FROM library_element_connection WHERE kind = 1 AND connection_id = ?", (dashboard_id,)
        )
        for element in elements:
            self.insert(
                "library_element_connection",
                {
                    "element_id": element["id"],
                    "kind": 1,
                    "connection_id": dashboard_id,
                    "created": now,
                    "created_by": req.user_id,
                },
            )
        return 200, {
            "id": dashboard_id,
            "uid": uid,
            "url": dashboard_url(uid, slug),
            "status": "success",
            "version": version,
            "slug": slug,
            "folderUid": folder_uid or "",
        }

    def get_dashboard(self, req: Request) -> tuple[int, Any]:
        row = self._dashboard(req.params["uid"])
        if row is None:
            raise ApiError(404, "Dashboard not found", status="not-found")
        if str(row["api_version"] or "").startswith("v2"):  # pkg/api/dashboard.go GetDashboard
            raise ApiError(406, f"dashboard api version not supported, use {K8S_DASHBOARDS}/{row['api_version']}/"
                                f"namespaces/{NAMESPACE}/dashboards/{row['uid']} instead")
        data = dict(jloads(row["data"], {}), id=row["id"], uid=row["uid"], version=row["version"])
        folder = self._folder(row["folder_uid"])
        meta = {
            "type": "db",
            "canSave": True,
            "canEdit": True,
            "canAdmin": True,
            "canStar": True,
            "canDelete": True,
            "slug": row["slug"],
            "url": dashboard_url(row["uid"], row["slug"]),
            "expires": "0001-01-01T00:00:00Z",
            "created": api_time(row["created"]),
            "updated": api_time(row["updated"]),
            "updatedBy": self._login_of(row["updated_by"]),
            "createdBy": self._login_of(row["created_by"]),
            "version": row["version"],
            "hasAcl": False,
            "isFolder": False,
            "folderId": folder["id"] if folder else 0,
            "folderUid": folder["uid"] if folder else "",
            "folderTitle": folder["title"] if folder else "General",
            "folderUrl": folder_url(folder["uid"], folder["title"]) if folder else "",
            "provisioned": False,
            "provisionedExternalId": "",
            "annotationsPermissions": {
                "dashboard": {"canAdd": True, "canEdit": True, "canDelete": True},
                "organization": {"canAdd": True, "canEdit": True, "canDelete": True},
            },
            "isStarred": False,
        }
        return 200, {"dashboard": data, "meta": meta}

    def delete_dashboard(self, req: Request) -> tuple[int, Any]:
        row = self._dashboard(req.params["uid"])
        if row is None:
            raise ApiError(404, "Dashboard not found", status="not-found")
        self._delete_dashboard_rows(row["id"])
        return 200, {"title": row["title"], "message": f"Dashboard {row['title']} deleted", "id": row["id"]}

    # -- data sources ----------------------------------------------------------------------------------------

    # -- dashboards as Kubernetes-style resources (/apis/dashboard.grafana.app/...), Grafana 12 ----------------
    # Only schema-v2 dashboards (v2alpha1, v2beta1) are served here: the conversion Grafana does between
    # versions is not emulated, and is refused rather than answered with made-up data.

    def _k8s_version(self, req: Request) -> str:
        version = req.params["version"]
        if version not in K8S_V2_VERSIONS:
            raise k8s_status(400, "BadRequest", f"dashboard API version {version} is not emulated "
                                                f"(only {', '.join(K8S_V2_VERSIONS)})", req.params.get("name"))
        if req.params["namespace"] != NAMESPACE:
            raise k8s_status(404, "NotFound", f"namespace {req.params['namespace']} not found (org 1 is "
                                              f"{NAMESPACE})", req.params.get("name"))
        return version

    def _dashboard_resource(self, row: sqlite3.Row) -> dict:
        annotations = {"grafana.app/createdBy": f"user:{self._login_of(row['created_by'])}",
                       "grafana.app/updatedBy": f"user:{self._login_of(row['updated_by'])}",
                       "grafana.app/updatedTimestamp": api_time(row["updated"])}
        if row["folder_uid"]:
            annotations["grafana.app/folder"] = row["folder_uid"]
        return {
            "kind": "Dashboard",
            "apiVersion": f"dashboard.grafana.app/{row['api_version']}",
            "metadata": {
                "name": row["uid"],
                "namespace": NAMESPACE,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"dashboard/{row['id']}")),
                "resourceVersion": str(row["version"]),
                "generation": row["version"],
                "creationTimestamp": api_time(row["created"]),
                "annotations": annotations,
                "labels": {"grafana.app/deprecatedInternalID": str(row["id"])},
            },
            "spec": jloads(row["data"], {}),
            "status": {},
        }

    def get_dashboard_resource(self, req: Request) -> tuple[int, Any]:
        version = self._k8s_version(req)
        row = self._dashboard(req.params["name"])
        if row is None:
            raise k8s_status(404, "NotFound", f'dashboards.dashboard.grafana.app "{req.params["name"]}" not found',
                             req.params["name"])
        if row["api_version"] != version:
            raise k8s_status(400, "BadRequest", f"dashboard {row['uid']} is stored as {row['api_version'] or 'v1'}: "
                                                f"conversion to {version} is not emulated", row["uid"])
        return 200, self._dashboard_resource(row)

    def _resource_body(self, req: Request, version: str) -> tuple[dict, dict, str, str | None]:
        body = req.json_object()
        if body.get("apiVersion") != f"dashboard.grafana.app/{version}" or body.get("kind") != "Dashboard":
            raise k8s_status(400, "BadRequest", f"the object's apiVersion/kind ({body.get('apiVersion')}, "
                                                f"{body.get('kind')}) is not dashboard.grafana.app/{version} Dashboard")
        metadata, spec = body.get("metadata") or {}, body.get("spec")
        if not isinstance(spec, dict) or not str(spec.get("title") or "").strip():
            raise k8s_status(400, "BadRequest", "spec.title is required")
        name = str(metadata.get("name") or "")
        if not name:
            raise k8s_status(400, "BadRequest", "metadata.name is required")
        validate_uid(name)
        folder_uid = str((metadata.get("annotations") or {}).get("grafana.app/folder") or "") or None
        if folder_uid and self._folder(folder_uid) is None:
            raise k8s_status(400, "BadRequest", f"folder {folder_uid} not found")
        return metadata, spec, name, folder_uid

    def _write_resource(self, req: Request, version: str, spec: dict, name: str, folder_uid: str | None,
                        existing: sqlite3.Row | None) -> sqlite3.Row:
        now = db_time()
        number = existing["version"] + 1 if existing is not None else 1
        title = str(spec["title"]).strip()
        folder = self._folder(folder_uid) if folder_uid else None
        values = {"version": number, "slug": slugify(title), "title": title, "org_id": ORG_ID, "updated": now,
                  "updated_by": req.user_id, "folder_id": folder["id"] if folder else 0, "is_folder": 0,
                  "uid": name, "folder_uid": folder_uid, "api_version": version, "data": jdumps(spec)}
        if existing is not None:
            self.update("dashboard", existing["id"], values)
            dashboard_id = existing["id"]
        else:
            dashboard_id = self.insert("dashboard", {**values, "created": now, "created_by": req.user_id,
                                                     "has_acl": 0})
        self.insert("dashboard_version", {
            "dashboard_id": dashboard_id, "parent_version": number - 1, "restored_from": 0, "version": number,
            "created": now, "created_by": req.user_id, "message": "", "data": jdumps(spec), "api_version": version})
        return self._dashboard(name)

    def create_dashboard_resource(self, req: Request) -> tuple[int, Any]:
        version = self._k8s_version(req)
        _metadata, spec, name, folder_uid = self._resource_body(req, version)
        if self._dashboard(name) is not None:
            raise k8s_status(409, "AlreadyExists", f'dashboards.dashboard.grafana.app "{name}" already exists', name)
        return 201, self._dashboard_resource(self._write_resource(req, version, spec, name, folder_uid, None))

    def update_dashboard_resource(self, req: Request) -> tuple[int, Any]:
        version = self._k8s_version(req)
        metadata, spec, name, folder_uid = self._resource_body(req, version)
        if name != req.params["name"]:
            raise k8s_status(400, "BadRequest", "the name of the object does not match the name on the URL", name)
        existing = self._dashboard(name)
        if existing is None:
            raise k8s_status(404, "NotFound", f'dashboards.dashboard.grafana.app "{name}" not found', name)
        sent = metadata.get("resourceVersion")
        if sent and str(sent) != str(existing["version"]):
            raise k8s_status(409, "Conflict", f'Operation cannot be fulfilled on dashboards.dashboard.grafana.app '
                                              f'"{name}": the object has been modified; please apply your changes to '
                                              "the latest version and try again", name)
        return 200, self._dashboard_resource(self._write_resource(req, version, spec, name, folder_uid, existing))

    def _datasource(self, column: str, value: Any) -> sqlite3.Row:
        row = self.one(f"SELECT * FROM data_source WHERE org_id = ? AND `{column}` = ?", ORG_ID, value)
        if row is None:
            raise ApiError(404, "Data source not found")
        return row

    @staticmethod
    def _datasource_dto(row: sqlite3.Row) -> dict:
        """dtos.DataSource (pkg/api/dtos/datasource.go): no password fields (they went to secureJsonData), the
        plugin's logo as typeLogoUrl."""
        secure = jloads(row["secure_json_data"], {})
        return {
            "id": row["id"],
            "uid": row["uid"],
            "orgId": row["org_id"],
            "name": row["name"],
            "type": row["type"],
            "typeLogoUrl": type_logo_url(row["type"]),
            "access": row["access"],
            "url": row["url"],
            "user": row["user"] or "",
            "database": row["database"] or "",
            "basicAuth": bool(row["basic_auth"]),
            "basicAuthUser": row["basic_auth_user"] or "",
            "withCredentials": bool(row["with_credentials"]),
            "isDefault": bool(row["is_default"]),
            "jsonData": jloads(row["json_data"], {}),
            "secureJsonFields": {key: True for key in secure},
            "version": row["version"],
            "readOnly": bool(row["read_only"]),
            "apiVersion": row["api_version"] or "",
        }

    def list_datasources(self, _req: Request) -> tuple[int, Any]:
        out = []
        for row in self.all(
            "SELECT * FROM data_source WHERE org_id = ? ORDER BY name COLLATE NOCASE", ORG_ID
        ):
            out.append(
                {
                    "id": row["id"],
                    "uid": row["uid"],
                    "orgId": row["org_id"],
                    "name": row["name"],
                    "type": row["type"],
                    "typeName": TYPE_NAMES.get(row["type"], row["type"]),
                    "typeLogoUrl": type_logo_url(row["type"]),
                    "access": row["access"],
                    "url": row["url"],
                    "user": row["user"] or "",
                    "database": row["database"] or "",
                    "basicAuth": bool(row["basic_auth"]),
                    "isDefault": bool(row["is_default"]),
                    "jsonData": jloads(row["json_data"], {}),
                    "readOnly": bool(row["read_only"]),
                }
            )
        return 200, out

    def get_datasource(self, req: Request) -> tuple[int, Any]:
        return 200, self._datasource_dto(self._datasource("uid", req.params["uid"]))

    def get_datasource_by_name(self, req: Request) -> tuple[int, Any]:
        return 200, self._datasource_dto(self._datasource("name", req.params["name"]))

    def _datasource_values(self, body: dict, secure: dict[str, str]) -> dict:
        """Column values of a create/update body; plain passwords go to the secure data (Grafana 9+)."""
        name = str(body.get("name") or "").strip()
        if not name:
            raise ApiError(400, "Required data source name")
        kind = str(body.get("type") or "").strip()
        if not kind:
            raise ApiError(400, "Required data source type")
        given = body.get("secureJsonData") or {}
        if not isinstance(given, dict):
            raise ApiError(400, "bad request data: secureJsonData must be an object")
        for legacy, key in (("password", "password"), ("basicAuthPassword", "basicAuthPassword")):
            if body.get(legacy):
                given.setdefault(key, body[legacy])
        secure.update({key: b64(str(value)) for key, value in given.items() if value is not None})
        json_data = body.get("jsonData")
        return {
            "name": name,
            "type": kind,
            "access": str(body.get("access") or "proxy"),
            "url": str(body.get("url") or ""),
            "user": str(body.get("user") or ""),
            "database": str(body.get("database") or ""),
            "basic_auth": int(bool(body.get("basicAuth"))),
            "basic_auth_user": str(body.get("basicAuthUser") or ""),
            "with_credentials": int(bool(body.get("withCredentials"))),
            "is_default": int(bool(body.get("isDefault"))),
            "json_data": jdumps(json_data if isinstance(json_data, dict) else {}),
            "password": "",
            "basic_auth_password": "",
            "secure_json_data": jdumps(secure),
            "api_version": body.get("apiVersion") or "",
        }

    def _check_datasource_unique(self, name: str, uid: str, exclude_id: int = 0) -> None:
        if self.one(
            "SELECT id FROM data_source WHERE org_id = ? AND name = ? AND id != ?", ORG_ID, name, exclude_id
        ):
            raise ApiError(409, "data source with the same name already exists")
        if self.one(
            "SELECT id FROM data_source WHERE org_id = ? AND uid = ? AND id != ?", ORG_ID, uid, exclude_id
        ):
            raise ApiError(409, "data source with the same uid already exists")

    def create_datasource(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        values = self._datasource_values(body, {})
        uid = str(body.get("uid") or "") or new_uid()
        validate_uid(uid)
        self._check_datasource_unique(values["name"], uid)
        if values["is_default"]:
            self.db.execute("UPDATE data_source SET is_default = 0 WHERE org_id = ?", (ORG_ID,))
        now = db_time()
        ds_id = self.insert(
            "data_source",
            {
                **values,
                "org_id": ORG_ID,
                "uid": uid,
                "version": 1,
                "created": now,
                "updated": now,
                "read_only": 0,
                "is_prunable": 0,
            },
        )
        dto = self._datasource_dto(self._datasource("id", ds_id))
        return 200, {"datasource": dto, "id": ds_id, "message": "Datasource added", "name": dto["name"]}

    def update_datasource(self, req: Request) -> tuple[int, Any]:
        row = self._datasource("uid", req.params["uid"])
        if row["read_only"]:
            raise ApiError(403, "Cannot update read-only data source")
        body = req.json_object()
        if body.get("version") and int(body["version"]) < row["version"]:
            raise ApiError(
                409, "Datasource has already been updated by someone else. Please reload and try again"
            )
        values = self._datasource_values(body, jloads(row["secure_json_data"], {}))
        uid = str(body.get("uid") or "") or row["uid"]
        validate_uid(uid)
        self._check_datasource_unique(values["name"], uid, exclude_id=row["id"])
        if values["is_default"]:
            self.db.execute("UPDATE data_source SET is_default = 0 WHERE org_id = ?", (ORG_ID,))
        self.update(
            "data_source",
            row["id"],
            {**values, "uid": uid, "version": row["version"] + 1, "updated": db_time()},
        )
        dto = self._datasource_dto(self._datasource("id", row["id"]))
        return 200, {"datasource": dto, "id": row["id"], "message": "Datasource updated", "name": dto["name"]}

    def delete_datasource(self, req: Request) -> tuple[int, Any]:
        row = self._datasource("uid", req.params["uid"])
        if row["read_only"]:
            raise ApiError(403, "Cannot delete read-only data source")
        self.db.execute("DELETE FROM data_source WHERE id = ?", (row["id"],))
        return 200, {"message": "Data source deleted", "id": row["id"]}

    # -- library elements ------------------------------------------------------------------------------------

    def _library_element(self, uid: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM library_element WHERE org_id = ? AND uid = ?", ORG_ID, uid)
        if row is None:
            raise ApiError(404, "library element could not be found")
        return row

    def _library_element_dto(self, row: sqlite3.Row) -> dict:
        folder = self._folder(row["folder_uid"])
        connections = self.one(
            "SELECT COUNT(*) AS n FROM library_element_connection WHERE element_id = ?", row["id"]
        )["n"]
        return {
            "id": row["id"],
            "orgId": row["org_id"],
            "folderId": row["folder_id"],
            "folderUid": row["folder_uid"] or "",
            "uid": row["uid"],
            "name": row["name"],
            "kind": row["kind"],
            "type": row["type"],
            "description": row["description"],
            "model": jloads(row["model"], {}),
            "version": row["version"],
            "meta": {
                "folderName": folder["title"] if folder else "General",
                "folderUid": row["folder_uid"] or "",
                "connectedDashboards": connections,
                "created": api_time(row["created"]),
                "updated": api_time(row["updated"]),
                "createdBy": self._user_brief(row["created_by"]),
                "updatedBy": self._user_brief(row["updated_by"]),
            },
        }

    def _library_folder(self, body: dict, default: str | None) -> tuple[str | None, int]:
        if "folderUid" in body:
            folder_uid = str(body.get("folderUid") or "") or None
        elif body.get("folderId"):
            by_id = self.one("SELECT uid FROM folder WHERE org_id = ? AND id = ?", ORG_ID, body["folderId"])
            if by_id is None:
                raise ApiError(404, "folder not found")
            folder_uid = by_id["uid"]
        else:
            folder_uid = default
        folder = self._require_folder(folder_uid) if folder_uid else None
        return folder_uid, folder["id"] if folder else 0

    def _check_library_unique(
        self, uid: str, name: str, kind: int, folder_uid: str | None, exclude_id: int = 0
    ):
        if self.one(
            "SELECT id FROM library_element WHERE org_id = ? AND id != ? AND (uid = ? OR "
            "(name = ? AND kind = ? AND folder_uid IS ?))",
            ORG_ID,
            exclude_id,
            uid,
            name,
            kind,
            folder_uid,
        ):
            raise ApiError(400, "library element with that name or uid already exists")

    def list_library_elements(self, req: Request) -> tuple[int, Any]:
        per_page = max(1, req.int_arg("perPage", LIBRARY_DEFAULT_PER_PAGE))
        page = max(1, req.int_arg("page", 1))
        search = (req.arg("searchString") or "").lower()
        kind = req.int_arg("kind", 0)
        types = set(req.args("typeFilter"))
        exclude = req.arg("excludeUid") or ""
        folder_uids = set(req.args("folderFilterUIDs"))
        folder_ids = {int(value) for value in req.args("folderFilter") if value.lstrip("-").isdigit()}
        descending = req.arg("sortDirection") == "alpha-desc"
        rows = [
            row
            for row in self.all("SELECT * FROM library_element WHERE org_id = ?", ORG_ID)
            if (not search or search in row["name"].lower() or search in row["description"].lower())
            and (not kind or row["kind"] == kind)
            and (not types or row["type"] in types)
            and row["uid"] != exclude
            and (not folder_uids or (row["folder_uid"] or "general") in folder_uids)
            and (not folder_ids or row["folder_id"] in folder_ids)
        ]
        rows.sort(key=lambda row: (row["name"].lower(), row["id"]), reverse=descending)
        start = (page - 1) * per_page
        return 200, {
            "result": {
                "totalCount": len(rows),
                "page": page,
                "perPage": per_page,
                "elements": [self._library_element_dto(row) for row in rows[start : start + per_page]],
            }
        }

    def get_library_element(self, req: Request) -> tuple[int, Any]:
        return 200, {"result": self._library_element_dto(self._library_element(req.params["uid"]))}

    def create_library_element(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        model = body.get("model")
        if not isinstance(model, dict):
            raise ApiError(400, "bad request data: model must be a JSON object")
        kind = body.get("kind")
        if kind not in (1, 2):
            raise ApiError(400, "kind must be 1 (panel) or 2 (variable)")
        name = str(body.get("name") or model.get("title") or "").strip()
        if not name:
            raise ApiError(400, "library element name cannot be empty")
        uid = str(body.get("uid") or "") or new_uid()
        validate_uid(uid)
        folder_uid, folder_id = self._library_folder(body, None)
        self._check_library_unique(uid, name, kind, folder_uid)
        model, element_type, description = sync_fields_with_model(model)
        now = db_time()
        element_id = self.insert(
            "library_element",
            {
                "org_id": ORG_ID,
                "folder_id": folder_id,
                "folder_uid": folder_uid,
                "uid": uid,
                "name": name,
                "kind": kind,
                "type": element_type,
                "description": description,
                "model": jdumps(model),
                "created": now,
                "created_by": req.user_id,
                "updated": now,
                "updated_by": req.user_id,
                "version": 1,
            },
        )
        row = self.one("SELECT * FROM library_element WHERE id = ?", element_id)
        return 200, {"result": self._library_element_dto(row)}

    def patch_library_element(self, req: Request) -> tuple[int, Any]:
        row = self._library_element(req.params["uid"])
        body = req.json_object()
        if body.get("version") != row["version"]:
            raise ApiError(412, "the library element has been changed by someone else")
        model = body.get("model")
        if model is not None and not isinstance(model, dict):
            raise ApiError(400, "bad request data: model must be a JSON object")
        model = model if model is not None else jloads(row["model"], {})
        kind = body.get("kind") or row["kind"]
        if kind != row["kind"]:
            raise ApiError(400, "library element kind cannot be changed")
        name = str(body.get("name") or "").strip() or row["name"]
        uid = str(body.get("uid") or "") or row["uid"]
        validate_uid(uid)
        folder_uid, folder_id = self._library_folder(body, row["folder_uid"])
        self._check_library_unique(uid, name, kind, folder_uid, exclude_id=row["id"])
        model, element_type, description = sync_fields_with_model(model, row["type"], row["description"])
        self.update(
            "library_element",
            row["id"],
            {
                "uid": uid,
                "name": name,
                "folder_uid": folder_uid,
                "folder_id": folder_id,
                "type": element_type,
                "description": description,
                "model": jdumps(model),
                "updated": db_time(),
                "updated_by": req.user_id,
                "version": row["version"] + 1,
            },
        )
        return 200, {"result": self._library_element_dto(self._library_element(uid))}

    def delete_library_element(self, req: Request) -> tuple[int, Any]:
        row = self._library_element(req.params["uid"])
        if self.one("SELECT id FROM library_element_connection WHERE element_id = ?", row["id"]):
            raise ApiError(403, "the library element has connections")
        self.db.execute("DELETE FROM library_element WHERE id = ?", (row["id"],))
        return 200, {"message": "Library element deleted", "id": row["id"]}

    # -- provenance ------------------------------------------------------------------------------------------

    def _provenance(self, record_type: str, key: str) -> str:
        row = self.one(
            "SELECT provenance FROM provenance_type WHERE org_id = ? AND record_type = ? AND record_key = ?",
            ORG_ID,
            record_type,
            key,
        )
        return row["provenance"] if row else PROVENANCE_NONE

    def _set_provenance(self, record_type: str, key: str, provenance: str) -> None:
        self._drop_provenance(record_type, key)
        if provenance:
            self.insert(
                "provenance_type",
                {"org_id": ORG_ID, "record_key": key, "record_type": record_type, "provenance": provenance},
            )

    def _drop_provenance(self, record_type: str, key: str) -> None:
        self.db.execute(
            "DELETE FROM provenance_type WHERE org_id = ? AND record_type = ? AND record_key = ?",
            (ORG_ID, record_type, key),
        )

    # -- alert rules -----------------------------------------------------------------------------------------

    def _rule_row(self, uid: str) -> sqlite3.Row | None:
        return self.one("SELECT * FROM alert_rule WHERE org_id = ? AND uid = ?", ORG_ID, uid)

    def _rule_dto(self, row: sqlite3.Row) -> dict:
        dto: dict[str, Any] = {
            "id": row["id"],
            "uid": row["uid"],
            "orgID": row["org_id"],
            "folderUID": row["namespace_uid"],
            "ruleGroup": row["rule_group"],
            "title": row["title"],
            "condition": row["condition"],
            "data": jloads(row["data"], []),
            "updated": api_time(row["updated"]),
            "noDataState": row["no_data_state"],
            "execErrState": row["exec_err_state"],
            "for": format_duration(row["for"]),
        }
        for key in ("annotations", "labels"):
            value = jloads(row[key], {})
            if value:
                dto[key] = value
        provenance = self._provenance("alertRule", row["uid"])
        if provenance:
            dto["provenance"] = provenance
        dto["isPaused"] = bool(row["is_paused"])
        # ProvisionedAlertRule (pkg/services/ngalert/api/tooling/definitions/provisioning_alert_rules.go):
        # keep_firing_for, notification_settings and record carry no omitempty: always present, null when unset.
        dto["keep_firing_for"] = format_duration(row["keep_firing_for"] or 0)
        dto["notification_settings"] = jloads(row["notification_settings"], None) or None
        dto["record"] = jloads(row["record"], None) or None
        if row["missing_series_evals_to_resolve"] is not None:
            dto["missingSeriesEvalsToResolve"] = row["missing_series_evals_to_resolve"]
        return dto

    def _parse_rule(self, body: Any, folder_uid: str | None = None, group: str | None = None) -> dict:
        """Validated column values of a ProvisionedAlertRule body (path values override folder and group)."""
        if not isinstance(body, dict):
            raise ApiError(400, "bad request data")
        folder_uid = folder_uid or str(body.get("folderUID") or body.get("folderUid") or "")
        group = group or str(body.get("ruleGroup") or "")
        title = str(body.get("title") or "").strip()
        if not title or len(title) > 190:
            raise ApiError(400, "invalid alert rule: title is required and must be at most 190 characters")
        if not group or len(group) > 190:
            raise ApiError(
                400, "invalid alert rule: rule group name is required and must be at most 190 characters"
            )
        if not folder_uid:
            raise ApiError(400, "invalid alert rule: folderUID is required")
        if self._folder(folder_uid) is None:
            raise ApiError(400, f"invalid alert rule: folder with uid '{folder_uid}' does not exist")
        data = body.get("data")
        if not isinstance(data, list) or not data or not all(isinstance(query, dict) for query in data):
            raise ApiError(400, "invalid alert rule: at least one query or expression is required in data")
        data = [pre_save_query(query) for query in data]
        record = body.get("record") or None
        condition = str(body.get("condition") or "")
        no_data = str(body.get("noDataState") or "")
        exec_err = str(body.get("execErrState") or "")
        if record is None:
            ref_ids = [str(query.get("refId")) for query in data]
            if condition not in ref_ids:
                raise ApiError(
                    400,
                    f"invalid alert rule: condition {condition} does not exist, must be one of "
                    f"[{' '.join(ref_ids)}]",
                )
            if no_data not in NO_DATA_STATES:
                raise ApiError(400, f"invalid alert rule: unknown NoDataState '{no_data}'")
            if exec_err not in EXEC_ERR_STATES:
                raise ApiError(400, f"invalid alert rule: unknown ExecErrState '{exec_err}'")
        uid = str(body.get("uid") or "")
        if uid:
            validate_uid(
                uid, "invalid alert rule: cannot create rule with UID: uid contains illegal characters"
            )
        for key in ("annotations", "labels"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                raise ApiError(400, f"invalid alert rule: {key} must be an object")
        missing = body.get("missingSeriesEvalsToResolve")
        return {
            "uid": uid,
            "title": title,
            "namespace_uid": folder_uid,
            "rule_group": group,
            "condition": condition,
            "data": jdumps(data),
            "no_data_state": no_data or "NoData",
            "exec_err_state": exec_err or "Alerting",
            "for": parse_duration(body.get("for"), "for"),
            "keep_firing_for": parse_duration(body.get("keep_firing_for"), "keep_firing_for"),
            "annotations": jdumps(body.get("annotations") or {}),
            "labels": jdumps(body.get("labels") or {}),
            "is_paused": int(bool(body.get("isPaused"))),
            "notification_settings": jdumps(body["notification_settings"])
            if body.get("notification_settings")
            else None,
            "record": jdumps(record) if record else None,
            "missing_series_evals_to_resolve": int(missing) if missing is not None else None,
        }

    def _group_interval(self, folder_uid: str, group: str) -> int | None:
        row = self.one(
            "SELECT interval_seconds FROM alert_rule WHERE org_id = ? AND namespace_uid = ? AND "
            "rule_group = ? LIMIT 1",
            ORG_ID,
            folder_uid,
            group,
        )
        return row["interval_seconds"] if row else None

    def _next_group_index(self, folder_uid: str, group: str) -> int:
        row = self.one(
            "SELECT MAX(rule_group_idx) AS idx FROM alert_rule WHERE org_id = ? AND namespace_uid = ? "
            "AND rule_group = ?",
            ORG_ID,
            folder_uid,
            group,
        )
        return (row["idx"] or 0) + 1

    def _insert_rule(
        self, values: dict, interval: int, index: int, provenance: str, user: str
    ) -> sqlite3.Row:
        uid = values["uid"] or new_uid()
        if self._rule_row(uid):
            raise ApiError(
                400,
                "failed to create alert rule: a conflicting alert rule is found: rule UID under "
                "the same organisation should be unique",
            )
        self.insert(
            "alert_rule",
            {
                **values,
                "uid": uid,
                "org_id": ORG_ID,
                "updated": db_time(),
                "interval_seconds": interval,
                "version": 1,
                "rule_group_idx": index,
                "updated_by": user,
            },
        )
        self._set_provenance("alertRule", uid, provenance)
        return self._rule_row(uid)

    def _update_rule(
        self, row: sqlite3.Row, values: dict, interval: int, index: int, provenance: str, user: str,
        checked: bool = False,
    ) -> sqlite3.Row:
        if not checked:
            check_provenance(self._provenance("alertRule", row["uid"]), provenance)
        self.update(
            "alert_rule",
            row["id"],
            {
                **values,
                "uid": row["uid"],
                "updated": db_time(),
                "interval_seconds": interval,
                "version": row["version"] + 1,
                "rule_group_idx": index,
                "updated_by": user,
            },
        )
        self._set_provenance("alertRule", row["uid"], provenance)
        return self._rule_row(row["uid"])

    def _delete_rule_row(self, uid: str) -> None:
        self.db.execute("DELETE FROM alert_rule WHERE org_id = ? AND uid = ?", (ORG_ID, uid))
        self._drop_provenance("alertRule", uid)

    def list_alert_rules(self, _req: Request) -> tuple[int, Any]:
        rows = self.all("SELECT * FROM alert_rule WHERE org_id = ? ORDER BY id", ORG_ID)
        return 200, [self._rule_dto(row) for row in rows]

    def get_alert_rule(self, req: Request) -> tuple[int, Any]:
        row = self._rule_row(req.params["uid"])
        if row is None:
            raise ApiError(404, empty=True)
        return 200, self._rule_dto(row)

    def create_alert_rule(self, req: Request) -> tuple[int, Any]:
        values = self._parse_rule(req.json())
        interval = self._group_interval(values["namespace_uid"], values["rule_group"])
        index = self._next_group_index(values["namespace_uid"], values["rule_group"])
        row = self._insert_rule(
            values,
            interval or DEFAULT_RULE_INTERVAL_SECONDS,
            index,
            req.provenance,
            str(req.identity.get("login") or ""),
        )
        return 201, self._rule_dto(row)

    def update_alert_rule(self, req: Request) -> tuple[int, Any]:
        row = self._rule_row(req.params["uid"])
        if row is None:
            raise ApiError(404, empty=True)
        values = self._parse_rule(req.json())
        same_group = (values["namespace_uid"], values["rule_group"]) == (
            row["namespace_uid"],
            row["rule_group"],
        )
        if same_group:
            interval, index = row["interval_seconds"], row["rule_group_idx"]
        else:
            interval = (
                self._group_interval(values["namespace_uid"], values["rule_group"]) or row["interval_seconds"]
            )
            index = self._next_group_index(values["namespace_uid"], values["rule_group"])
        # AlertRuleService.UpdateAlertRule (pkg/services/ngalert/provisioning/alert_rules.go) refuses a change of
        # a stored provenance with a plain error, which RoutePutAlertRule answers 500
        stored = self._provenance("alertRule", row["uid"])
        if stored not in (PROVENANCE_NONE, req.provenance):
            return 500, {"message": f"cannot change provenance from '{stored}' to '{req.provenance}'"}
        row = self._update_rule(
            row, values, interval, index, req.provenance, str(req.identity.get("login") or ""), checked=True
        )
        return 200, self._rule_dto(row)

    def delete_alert_rule(self, req: Request) -> tuple[int, Any]:
        row = self._rule_row(req.params["uid"])
        if row is not None:
            stored = self._provenance("alertRule", row["uid"])  # AlertRuleService.DeleteAlertRule
            if stored not in (req.provenance, PROVENANCE_NONE):
                raise rule_provenance_mismatch("delete", req.provenance, stored)
            self._delete_rule_row(row["uid"])
        return 204, None

    def _group_rows(self, folder_uid: str, group: str) -> list[sqlite3.Row]:
        return self.all(
            "SELECT * FROM alert_rule WHERE org_id = ? AND namespace_uid = ? AND rule_group = ? "
            "ORDER BY rule_group_idx, id",
            ORG_ID,
            folder_uid,
            group,
        )

    def get_rule_group(self, req: Request) -> tuple[int, Any]:
        folder_uid, group = req.params["folder_uid"], req.params["group"]
        rows = self._group_rows(folder_uid, group)
        if not rows:
            raise errutil_error(404, "alerting.rule-group.notFound", "rule group not found")
        return 200, {
            "title": group,
            "folderUid": folder_uid,
            "interval": rows[0]["interval_seconds"],
            "rules": [self._rule_dto(row) for row in rows],
        }

    def put_rule_group(self, req: Request) -> tuple[int, Any]:
        folder_uid, group = req.params["folder_uid"], req.params["group"]
        body = req.json_object()
        interval = body.get("interval")
        if not isinstance(interval, int) or interval <= 0 or interval % BASE_RULE_INTERVAL_SECONDS:
            raise ApiError(
                400,
                f"invalid alert rule: interval ({interval}s) should be non-zero and divided exactly "
                f"by scheduler interval: {BASE_RULE_INTERVAL_SECONDS}s",
            )
        rules = body.get("rules") or []
        if not isinstance(rules, list):
            raise ApiError(400, "bad request data: rules must be a list")
        if self._folder(folder_uid) is None:
            raise ApiError(400, f"invalid alert rule: folder with uid '{folder_uid}' does not exist")
        parsed = [self._parse_rule(rule, folder_uid, group) for rule in rules]
        uids = [values["uid"] for values in parsed if values["uid"]]
        if len(uids) != len(set(uids)):
            raise ApiError(400, "invalid alert rule: rule UIDs of a group must be unique")
        user = str(req.identity.get("login") or "")
        # AlertRuleService.persistDelta: every rule deleted or updated is checked first (one transaction)
        existing_rows = {values["uid"]: self._rule_row(values["uid"]) for values in parsed if values["uid"]}
        doomed = [row for row in self._group_rows(folder_uid, group) if row["uid"] not in uids]
        for operation, rows in (("delete", doomed), ("update", [r for r in existing_rows.values() if r])):
            for row in rows:
                stored = self._provenance("alertRule", row["uid"])
                if not can_update_provenance_in_rule_group(stored, req.provenance):
                    raise rule_provenance_mismatch(operation, req.provenance, stored)
        for row in doomed:
            self._delete_rule_row(row["uid"])
        for index, values in enumerate(parsed, start=1):
            existing = existing_rows.get(values["uid"])
            if existing is not None:
                self._update_rule(existing, values, interval, index, req.provenance, user, checked=True)
            else:
                self._insert_rule(values, interval, index, req.provenance, user)
        return 200, dict(body, title=group, folderUid=folder_uid)

    def delete_rule_group(self, req: Request) -> tuple[int, Any]:
        rows = self._group_rows(req.params["folder_uid"], req.params["group"])
        for row in rows:
            check_provenance(self._provenance("alertRule", row["uid"]), req.provenance)
        for row in rows:
            self._delete_rule_row(row["uid"])
        return 204, None

    # -- alertmanager configuration --------------------------------------------------------------------------

    @staticmethod
    def _am_default() -> dict:
        return {
            "alertmanager_config": {
                "route": {"receiver": DEFAULT_RECEIVER, "group_by": ["grafana_folder", "alertname"]},
                "templates": None,
                "receivers": [GrafanaState._default_receiver()],
            },
            "template_files": {},
        }

    @staticmethod
    def _default_receiver() -> dict:
        return {
            "name": DEFAULT_RECEIVER,
            "grafana_managed_receiver_configs": [
                {
                    "uid": new_uid(),
                    "name": DEFAULT_RECEIVER,
                    "type": "email",
                    "disableResolveMessage": False,
                    "settings": {"addresses": "<example@email.com>"},
                    "secureSettings": {},
                }
            ],
        }

    def _am_load(self) -> dict:
        row = self.one("SELECT alertmanager_configuration FROM alert_configuration WHERE org_id = ?", ORG_ID)
        config = jloads(row["alertmanager_configuration"] if row else None, None) or self._am_default()
        config.setdefault("template_files", {})
        am = config.setdefault("alertmanager_config", {})
        am.setdefault("route", {"receiver": DEFAULT_RECEIVER})
        am["receivers"] = am.get("receivers") or []
        return config

    def _am_store(self, config: dict, created: bool = False) -> None:
        text = jdumps(config)
        values = {
            "alertmanager_configuration": text,
            "configuration_version": "v1",
            "created_at": int(utcnow().timestamp()),
            "default": int(created),
            "org_id": ORG_ID,
            "configuration_hash": hashlib.md5(text.encode()).hexdigest(),
        }
        row = self.one("SELECT id FROM alert_configuration WHERE org_id = ?", ORG_ID)
        if row is None:
            self.insert("alert_configuration", values)
        else:
            self.update("alert_configuration", row["id"], values)

    @staticmethod
    def _integrations(config: dict) -> Iterator[tuple[dict, dict]]:
        for receiver in config["alertmanager_config"]["receivers"]:
            for integration in receiver.get("grafana_managed_receiver_configs") or []:
                yield receiver, integration

    @staticmethod
    def _receiver_referenced(config: dict, name: str) -> bool:
        return any(
            node.get("receiver") == name for node in walk_routes(config["alertmanager_config"]["route"])
        )

    def _receiver_used_by_rules(self, name: str) -> bool:
        for row in self.all(
            "SELECT notification_settings FROM alert_rule WHERE org_id = ? AND "
            "notification_settings IS NOT NULL",
            ORG_ID,
        ):
            settings = jloads(row["notification_settings"], None)
            for item in settings if isinstance(settings, list) else [settings]:
                if isinstance(item, dict) and item.get("receiver") == name:
                    return True
        return False

    def _interval_used_by_rules(self, name: str) -> bool:
        for row in self.all(
            "SELECT notification_settings FROM alert_rule WHERE org_id = ? AND "
            "notification_settings IS NOT NULL",
            ORG_ID,
        ):
            settings = jloads(row["notification_settings"], None)
            for item in settings if isinstance(settings, list) else [settings]:
                if isinstance(item, dict) and name in (item.get("mute_time_intervals") or []) + (
                    item.get("active_time_intervals") or []
                ):
                    return True
        return False

    # -- contact points --------------------------------------------------------------------------------------

    def _contact_point_dto(self, receiver: dict, integration: dict, decrypt: bool = False) -> dict:
        settings = dict(integration.get("settings") or {})
        for key, value in (integration.get("secureSettings") or {}).items():
            settings[key] = unb64(value) if decrypt else REDACTED
        dto = {
            "uid": integration["uid"],
            "name": receiver["name"],
            "type": integration["type"],
            "settings": settings,
            "disableResolveMessage": bool(integration.get("disableResolveMessage")),
        }
        provenance = self._provenance("contactPoint", integration["uid"])
        if provenance:
            dto["provenance"] = provenance
        return dto

    @staticmethod
    def _validate_contact_point(body: dict) -> tuple[str, str, dict]:
        name = str(body.get("name") or "").strip()
        kind = str(body.get("type") or "").strip()
        settings = body.get("settings")
        if not name:
            raise ApiError(400, "invalid object specification: name is missing")
        if not kind:
            raise ApiError(400, "invalid object specification: type is missing")
        if not isinstance(settings, dict):
            raise ApiError(400, "invalid object specification: settings is missing or not an object")
        return name, kind, settings

    @staticmethod
    def _split_secrets(kind: str, settings: dict, stored: dict[str, str] | None) -> tuple[dict, dict]:
        """Plain settings and base64 secure settings. On an update (``stored`` given) a ``[REDACTED]`` value keeps
        the stored secret; on a create there is none, and Grafana stores the text itself
        (RemoveSecretsForContactPoint keeps every non-empty value)."""
        plain, secure = dict(settings), {}
        for key in SECURE_CONTACT_POINT_FIELDS.get(kind, ()):
            value = plain.pop(key, None)
            if value == REDACTED and stored is not None:
                if key in stored:
                    secure[key] = stored[key]
            elif value not in (None, ""):
                secure[key] = b64(str(value))
        return plain, secure

    @staticmethod
    def _attach_integration(config: dict, name: str, integration: dict) -> None:
        receivers = config["alertmanager_config"]["receivers"]
        for receiver in receivers:
            if receiver["name"] == name:
                receiver.setdefault("grafana_managed_receiver_configs", []).append(integration)
                return
        receivers.append({"name": name, "grafana_managed_receiver_configs": [integration]})

    def list_contact_points(self, req: Request) -> tuple[int, Any]:
        name = req.arg("name")
        config = self._am_load()
        return 200, [
            self._contact_point_dto(receiver, integration)
            for receiver, integration in self._integrations(config)
            if not name or receiver["name"] == name
        ]

    def export_contact_points(self, req: Request) -> tuple[int, Any]:
        """The provisioning-file export (``decrypt=true`` reveals secrets); always JSON, which is valid YAML."""
        name = req.arg("name")
        decrypt = req.bool_arg("decrypt")
        config = self._am_load()
        exported = []
        for receiver in config["alertmanager_config"]["receivers"]:
            if name and receiver["name"] != name:
                continue
            entries = []
            for integration in receiver.get("grafana_managed_receiver_configs") or []:
                dto = self._contact_point_dto(receiver, integration, decrypt=decrypt)
                entries.append(
                    {
                        "uid": dto["uid"],
                        "type": dto["type"],
                        "settings": dto["settings"],
                        "disableResolveMessage": dto["disableResolveMessage"],
                    }
                )
            exported.append({"orgId": ORG_ID, "name": receiver["name"], "receivers": entries})
        return 200, {"apiVersion": 1, "contactPoints": exported}

    def create_contact_point(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        name, kind, settings = self._validate_contact_point(body)
        uid = str(body.get("uid") or "") or new_uid()
        validate_uid(uid, "invalid object specification: uid contains illegal characters")
        validate_integration(name, uid, kind, settings)  # a "[REDACTED]" text is a value like any other here
        config = self._am_load()
        if any(integration["uid"] == uid for _, integration in self._integrations(config)):
            raise ApiError(
                400, f"invalid object specification: contact point with uid '{uid}' already exists"
            )
        plain, secure = self._split_secrets(kind, settings, None)
        integration = {
            "uid": uid,
            "name": name,
            "type": kind,
            "disableResolveMessage": bool(body.get("disableResolveMessage")),
            "settings": plain,
            "secureSettings": secure,
        }
        self._attach_integration(config, name, integration)
        self._am_store(config)
        self._set_provenance("contactPoint", uid, req.provenance)
        created = {
            "uid": uid,
            "name": name,
            "type": kind,
            "settings": settings,
            "disableResolveMessage": bool(body.get("disableResolveMessage")),
        }
        if req.provenance:
            created["provenance"] = req.provenance
        return 202, created

    def update_contact_point(self, req: Request) -> tuple[int, Any]:
        uid = req.params["uid"]
        body = req.json_object()
        name, kind, settings = self._validate_contact_point(body)
        config = self._am_load()
        found = next(((r, i) for r, i in self._integrations(config) if i["uid"] == uid), None)
        if found is None:
            raise ApiError(404, "contact point not found")
        old_receiver, integration = found
        stored_secrets = integration.get("secureSettings") or {} if integration["type"] == kind else {}
        # UpdateContactPoint: "[REDACTED]" takes the stored secret, then the merged settings are validated
        merged = {
            key: unb64(stored_secrets[key]) if value == REDACTED and key in stored_secrets else value
            for key, value in settings.items()
        }
        validate_integration(name, uid, kind, merged)
        check_provenance(self._provenance("contactPoint", uid), req.provenance)
        plain, secure = self._split_secrets(kind, settings, stored_secrets)
        integration.update(
            {
                "name": name,
                "type": kind,
                "settings": plain,
                "secureSettings": secure,
                "disableResolveMessage": bool(body.get("disableResolveMessage")),
            }
        )
        if old_receiver["name"] != name:
            old_receiver["grafana_managed_receiver_configs"].remove(integration)
            self._attach_integration(config, name, integration)
            if not old_receiver["grafana_managed_receiver_configs"]:
                # the last integration left: the receiver was renamed, and the policies follow it
                config["alertmanager_config"]["receivers"].remove(old_receiver)
                for node in walk_routes(config["alertmanager_config"]["route"]):
                    if node.get("receiver") == old_receiver["name"]:
                        node["receiver"] = name
        self._am_store(config)
        self._set_provenance("contactPoint", uid, req.provenance)
        return 202, {"message": "contactpoint updated"}

    def delete_contact_point(self, req: Request) -> tuple[int, Any]:
        uid = req.params["uid"]
        config = self._am_load()
        found = next(((r, i) for r, i in self._integrations(config) if i["uid"] == uid), None)
        if found is not None:
            receiver, integration = found
            if len(receiver["grafana_managed_receiver_configs"]) == 1:
                if self._receiver_referenced(config, receiver["name"]):
                    raise errutil_error(
                        409,
                        "alerting.notifications.contact-points.referenced",
                        "Contact point is currently referenced by a notification policy.",
                    )
                if self._receiver_used_by_rules(receiver["name"]):
                    raise errutil_error(
                        409,
                        "alerting.notifications.contact-points.used-by-rule",
                        "Contact point is currently used in the notification settings of one or "
                        "many alert rules.",
                    )
                config["alertmanager_config"]["receivers"].remove(receiver)
            else:
                receiver["grafana_managed_receiver_configs"].remove(integration)
            self._am_store(config)
            self._drop_provenance("contactPoint", uid)
        return 202, {"message": "contactpoint deleted"}

    # -- notification policies -------------------------------------------------------------------------------

    def get_policies(self, _req: Request) -> tuple[int, Any]:
        route = copy.deepcopy(self._am_load()["alertmanager_config"]["route"])
        provenance = self._provenance("route", "")
        if provenance:
            route["provenance"] = provenance
        return 200, route

    def put_policies(self, req: Request) -> tuple[int, Any]:
        body = req.json_object()
        if not body.get("receiver"):
            raise ApiError(400, "invalid object specification: root route must specify a default receiver")
        config = self._am_load()
        check_provenance(self._provenance("route", ""), req.provenance)
        am = config["alertmanager_config"]
        receivers = {receiver["name"] for receiver in am["receivers"]}
        intervals = {
            item.get("name")
            for item in (am.get("mute_time_intervals") or []) + (am.get("time_intervals") or [])
        }
        route = normalize_route(strip_route_provenance(body))
        for node in walk_routes(route):
            if node.get("receiver") and node["receiver"] not in receivers:
                raise ApiError(
                    400, f"invalid object specification: receiver '{node['receiver']}' does not exist"
                )
            for name in (node.get("mute_time_intervals") or []) + (node.get("active_time_intervals") or []):
                if name not in intervals:
                    raise ApiError(
                        400, f"invalid object specification: mute time interval '{name}' does not exist"
                    )
        am["route"] = route
        self._am_store(config)
        self._set_provenance("route", "", req.provenance)
        return 202, {"message": "policies updated"}

    def reset_policies(self, _req: Request) -> tuple[int, Any]:
        config = self._am_load()
        am = config["alertmanager_config"]
        am["route"] = copy.deepcopy(self._am_default()["alertmanager_config"]["route"])
        if not any(receiver["name"] == DEFAULT_RECEIVER for receiver in am["receivers"]):
            am["receivers"].append(self._default_receiver())
        self._am_store(config)
        self._drop_provenance("route", "")
        return 202, am["route"]

    # -- mute timings ----------------------------------------------------------------------------------------

    @staticmethod
    def _interval_lists(config: dict) -> list[list]:
        """Mute timings live in ``mute_time_intervals`` (and, as newer Grafanas write, ``time_intervals``)."""
        am = config["alertmanager_config"]
        for key in ("mute_time_intervals", "time_intervals"):
            if not isinstance(am.get(key), list):
                am[key] = []
        return [am["mute_time_intervals"], am["time_intervals"]]

    def _find_interval(self, config: dict, name: str) -> tuple[list, dict] | None:
        for intervals in self._interval_lists(config):
            for item in intervals:
                if item.get("name") == name:
                    return intervals, item
        return None

    @staticmethod
    def _interval_version(item: dict) -> str:
        return hashlib.sha256(
            jdumps({"name": item.get("name"), "time_intervals": item.get("time_intervals") or []}).encode()
        ).hexdigest()[:16]

    def _mute_timing_dto(self, item: dict) -> dict:
        dto = {
            "name": item.get("name"),
            "time_intervals": item.get("time_intervals") or [],
            "version": self._interval_version(item),
        }
        provenance = self._provenance("muteTimeInterval", item.get("name") or "")
        if provenance:
            dto["provenance"] = provenance
        return dto

    @staticmethod
    def _parse_mute_timing(body: dict, default_name: str | None = None) -> dict:
        name = str(body.get("name") or default_name or "").strip()
        if not name:
            raise errutil_error(
                400,
                "alerting.notifications.time-intervals.invalidFormat",
                "Time interval is in invalid format. Correct the payload and try again.",
            )
        intervals = body.get("time_intervals") or []
        if not isinstance(intervals, list) or not all(isinstance(item, dict) for item in intervals):
            raise errutil_error(
                400,
                "alerting.notifications.time-intervals.invalidFormat",
                "Time interval is in invalid format. Correct the payload and try again.",
            )
        return {"name": name, "time_intervals": intervals}

    def list_mute_timings(self, _req: Request) -> tuple[int, Any]:
        config = self._am_load()
        return 200, [
            self._mute_timing_dto(item) for intervals in self._interval_lists(config) for item in intervals
        ]

    def get_mute_timing(self, req: Request) -> tuple[int, Any]:
        found = self._find_interval(self._am_load(), req.params["name"])
        if found is None:
            raise errutil_error(404, "alerting.notifications.time-intervals.notFound")
        return 200, self._mute_timing_dto(found[1])

    def create_mute_timing(self, req: Request) -> tuple[int, Any]:
        item = self._parse_mute_timing(req.json_object())
        config = self._am_load()
        if self._find_interval(config, item["name"]) is not None:
            raise errutil_error(
                400,
                "alerting.notifications.time-intervals.nameExists",
                "Time interval with this name already exists. Use a different name or update existing one.",
            )
        self._interval_lists(config)[0].append(item)
        self._am_store(config)
        self._set_provenance("muteTimeInterval", item["name"], req.provenance)
        return 201, self._mute_timing_dto(item)

    def update_mute_timing(self, req: Request) -> tuple[int, Any]:
        name = req.params["name"]
        body = req.json_object()
        config = self._am_load()
        found = self._find_interval(config, name)
        if found is None:
            raise errutil_error(404, "alerting.notifications.time-intervals.notFound")
        intervals, item = found
        if body.get("version") and body["version"] != self._interval_version(item):
            raise errutil_error(
                409,
                "alerting.notifications.conflict",
                "provided version does not match the current version of the resource",
            )
        check_provenance(self._provenance("muteTimeInterval", name), req.provenance)
        updated = self._parse_mute_timing(body, default_name=name)
        if updated["name"] != name:
            if self._find_interval(config, updated["name"]) is not None:
                raise errutil_error(
                    400,
                    "alerting.notifications.time-intervals.nameExists",
                    "Time interval with this name already exists. Use a different name or update "
                    "existing one.",
                )
            for node in walk_routes(config["alertmanager_config"]["route"]):
                for key in ("mute_time_intervals", "active_time_intervals"):
                    if name in (node.get(key) or []):
                        node[key] = [updated["name"] if value == name else value for value in node[key]]
            self._drop_provenance("muteTimeInterval", name)
        intervals[intervals.index(item)] = updated
        self._am_store(config)
        self._set_provenance("muteTimeInterval", updated["name"], req.provenance)
        return 202, self._mute_timing_dto(updated)

    def delete_mute_timing(self, req: Request) -> tuple[int, Any]:
        name = req.params["name"]
        config = self._am_load()
        found = self._find_interval(config, name)
        if found is None:
            return 204, None
        intervals, item = found
        version = req.arg("version")
        if version and version != self._interval_version(item):
            raise errutil_error(
                409,
                "alerting.notifications.conflict",
                "provided version does not match the current version of the resource",
            )
        check_provenance(self._provenance("muteTimeInterval", name), req.provenance)
        in_routes = any(
            name in (node.get("mute_time_intervals") or []) + (node.get("active_time_intervals") or [])
            for node in walk_routes(config["alertmanager_config"]["route"])
        )
        if in_routes or self._interval_used_by_rules(name):
            raise errutil_error(409, "alerting.notifications.time-intervals.used", "Time interval is used")
        intervals.remove(item)
        self._am_store(config)
        self._drop_provenance("muteTimeInterval", name)
        return 204, None

    # -- templates -------------------------------------------------------------------------------------------

    @staticmethod
    def _template_version(content: str) -> str:
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    def _template_dto(self, name: str, content: str) -> dict:
        dto = {"name": name, "template": content}
        provenance = self._provenance("template", name)
        if provenance:
            dto["provenance"] = provenance
        dto["version"] = self._template_version(content)
        return dto

    def list_templates(self, _req: Request) -> tuple[int, Any]:
        files = self._am_load()["template_files"]
        return 200, [self._template_dto(name, files[name]) for name in sorted(files)]

    def get_template(self, req: Request) -> tuple[int, Any]:
        files = self._am_load()["template_files"]
        name = req.params["name"]
        if name not in files:
            raise errutil_error(404, "alerting.notifications.templates.notFound")
        return 200, self._template_dto(name, files[name])

    def put_template(self, req: Request) -> tuple[int, Any]:
        name = req.params["name"]
        body = req.json_object()
        content = str(body.get("template") or "").strip()
        if not content:
            raise errutil_error(
                400,
                "alerting.notifications.templates.invalidFormat",
                "Template is in invalid format. Correct the payload and try again.",
            )
        if not re.search(r"\{\{-?\s*define", content):
            body_lines = "\n".join("  " + line for line in content.split("\n"))
            content = f'{{{{ define "{name}" }}}}\n{body_lines}\n{{{{ end }}}}'
        config = self._am_load()
        files = config["template_files"]
        if name in files:
            if body.get("version") and body["version"] != self._template_version(files[name]):
                raise errutil_error(
                    409,
                    "alerting.notifications.conflict",
                    "provided version does not match the current version of the resource",
                )
            check_provenance(self._provenance("template", name), req.provenance)
        files[name] = content
        self._am_store(config)
        self._set_provenance("template", name, req.provenance)
        return 202, self._template_dto(name, content)

    def delete_template(self, req: Request) -> tuple[int, Any]:
        name = req.params["name"]
        config = self._am_load()
        files = config["template_files"]
        if name in files:
            version = req.arg("version")
            if version and version != self._template_version(files[name]):
                raise errutil_error(
                    409,
                    "alerting.notifications.conflict",
                    "provided version does not match the current version of the resource",
                )
            check_provenance(self._provenance("template", name), req.provenance)
            del files[name]
            self._am_store(config)
            self._drop_provenance("template", name)
        return 204, None


# ------------------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------------------

Handler = Callable[[GrafanaState, Request], tuple[int, Any]]

_ROUTE_TABLE: list[tuple[str, str, Handler, bool]] = [
    # method, path pattern (:name is one path segment), handler, needs authentication
    ("GET", "/api/health", GrafanaState.health, False),
    ("GET", "/api/org", GrafanaState.get_org, True),
    ("POST", "/api/serviceaccounts", GrafanaState.create_service_account, True),
    ("POST", "/api/serviceaccounts/:id/tokens", GrafanaState.create_service_account_token, True),
    ("GET", "/api/folders", GrafanaState.list_folders, True),
    ("POST", "/api/folders", GrafanaState.create_folder, True),
    ("GET", "/api/folders/:uid", GrafanaState.get_folder, True),
    ("PUT", "/api/folders/:uid", GrafanaState.update_folder, True),
    ("DELETE", "/api/folders/:uid", GrafanaState.delete_folder, True),
    ("POST", "/api/folders/:uid/move", GrafanaState.move_folder, True),
    ("GET", "/api/search", GrafanaState.search, True),
    ("POST", "/api/dashboards/db", GrafanaState.save_dashboard, True),
    ("GET", "/api/dashboards/uid/:uid", GrafanaState.get_dashboard, True),
    ("GET", f"{K8S_DASHBOARDS}/:version/namespaces/:namespace/dashboards/:name",
     GrafanaState.get_dashboard_resource, True),
    ("PUT", f"{K8S_DASHBOARDS}/:version/namespaces/:namespace/dashboards/:name",
     GrafanaState.update_dashboard_resource, True),
    ("POST", f"{K8S_DASHBOARDS}/:version/namespaces/:namespace/dashboards",
     GrafanaState.create_dashboard_resource, True),
    ("DELETE", "/api/dashboards/uid/:uid", GrafanaState.delete_dashboard, True),
    ("GET", "/api/datasources", GrafanaState.list_datasources, True),
    ("POST", "/api/datasources", GrafanaState.create_datasource, True),
    ("GET", "/api/datasources/uid/:uid", GrafanaState.get_datasource, True),
    ("PUT", "/api/datasources/uid/:uid", GrafanaState.update_datasource, True),
    ("DELETE", "/api/datasources/uid/:uid", GrafanaState.delete_datasource, True),
    ("GET", "/api/datasources/name/:name", GrafanaState.get_datasource_by_name, True),
    ("GET", "/api/library-elements", GrafanaState.list_library_elements, True),
    ("POST", "/api/library-elements", GrafanaState.create_library_element, True),
    ("GET", "/api/library-elements/:uid", GrafanaState.get_library_element, True),
    ("PATCH", "/api/library-elements/:uid", GrafanaState.patch_library_element, True),
    ("DELETE", "/api/library-elements/:uid", GrafanaState.delete_library_element, True),
    ("GET", "/api/v1/provisioning/alert-rules", GrafanaState.list_alert_rules, True),
    ("POST", "/api/v1/provisioning/alert-rules", GrafanaState.create_alert_rule, True),
    ("GET", "/api/v1/provisioning/alert-rules/:uid", GrafanaState.get_alert_rule, True),
    ("PUT", "/api/v1/provisioning/alert-rules/:uid", GrafanaState.update_alert_rule, True),
    ("DELETE", "/api/v1/provisioning/alert-rules/:uid", GrafanaState.delete_alert_rule, True),
    ("GET", "/api/v1/provisioning/folder/:folder_uid/rule-groups/:group", GrafanaState.get_rule_group, True),
    ("PUT", "/api/v1/provisioning/folder/:folder_uid/rule-groups/:group", GrafanaState.put_rule_group, True),
    (
        "DELETE",
        "/api/v1/provisioning/folder/:folder_uid/rule-groups/:group",
        GrafanaState.delete_rule_group,
        True,
    ),
    ("GET", "/api/v1/provisioning/contact-points", GrafanaState.list_contact_points, True),
    ("POST", "/api/v1/provisioning/contact-points", GrafanaState.create_contact_point, True),
    ("GET", "/api/v1/provisioning/contact-points/export", GrafanaState.export_contact_points, True),
    ("PUT", "/api/v1/provisioning/contact-points/:uid", GrafanaState.update_contact_point, True),
    ("DELETE", "/api/v1/provisioning/contact-points/:uid", GrafanaState.delete_contact_point, True),
    ("GET", "/api/v1/provisioning/policies", GrafanaState.get_policies, True),
    ("PUT", "/api/v1/provisioning/policies", GrafanaState.put_policies, True),
    ("DELETE", "/api/v1/provisioning/policies", GrafanaState.reset_policies, True),
    ("GET", "/api/v1/provisioning/mute-timings", GrafanaState.list_mute_timings, True),
    ("POST", "/api/v1/provisioning/mute-timings", GrafanaState.create_mute_timing, True),
    ("GET", "/api/v1/provisioning/mute-timings/:name", GrafanaState.get_mute_timing, True),
    ("PUT", "/api/v1/provisioning/mute-timings/:name", GrafanaState.update_mute_timing, True),
    ("DELETE", "/api/v1/provisioning/mute-timings/:name", GrafanaState.delete_mute_timing, True),
    ("GET", "/api/v1/provisioning/templates", GrafanaState.list_templates, True),
    ("GET", "/api/v1/provisioning/templates/:name", GrafanaState.get_template, True),
    ("PUT", "/api/v1/provisioning/templates/:name", GrafanaState.put_template, True),
    ("DELETE", "/api/v1/provisioning/templates/:name", GrafanaState.delete_template, True),
]


def _compile(pattern: str) -> re.Pattern:
    regex = re.sub(r":([a-z_]+)", r"(?P<\1>[^/]+)", pattern)
    return re.compile(f"^{regex}$")


ROUTES = [(method, _compile(pattern), handler, auth) for method, pattern, handler, auth in _ROUTE_TABLE]


class GrafanaRequestHandler(BaseHTTPRequestHandler):
    """Routes each request to :class:`GrafanaState` and writes its JSON answer."""

    server: GrafanaHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "grafana-emulator"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no delayed-ACK stalls

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        length = self.headers.get("Content-Length") or "0"
        raw_body = self.rfile.read(int(length)) if length.isdigit() and int(length) > 0 else b""
        try:
            handler, params, auth = self._route(method, path)
            request = Request(
                method, path, params, parse_qs(split.query, keep_blank_values=True), self.headers, raw_body
            )
            with state.transaction():
                if auth:
                    request.identity = state.authenticate(self.headers.get("Authorization"))
                status, payload = handler(state, request)
        except ApiError as error:
            status, payload = error.status, error.body
        except Exception:  # a bug here must still answer like a server, not drop the connection
            log.exception("%s %s failed", method, self.path)
            status, payload = 500, {"message": "Internal Server Error"}
        self._respond(status, payload)

    @staticmethod
    def _route(method: str, path: str) -> tuple[Handler, dict[str, str], bool]:
        path_known = False
        for route_method, regex, handler, auth in ROUTES:
            match = regex.match(path)
            if match:
                if route_method == method:
                    return handler, {key: unquote(value) for key, value in match.groupdict().items()}, auth
                path_known = True
        if path_known:
            raise ApiError(405, "Method Not Allowed")
        raise ApiError(404, "Not found")

    def _respond(self, status: int, payload: Any) -> None:
        self.send_response(status)
        if status == 204 or payload is None:
            if status != 204:
                self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GrafanaHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server owning a :class:`GrafanaState`; ``server_close`` also closes the database."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: GrafanaState) -> None:
        self.state = state
        super().__init__(address, GrafanaRequestHandler)

    def server_close(self) -> None:
        super().server_close()
        self.state.close()


def make_server(
    host: str,
    port: int,
    data_dir: str | os.PathLike,
    token: str | None = None,
    admin_user: str = "admin",
    admin_password: str = "admin",
    hide_version: bool = False,
) -> GrafanaHTTPServer:
    """A ready-to-serve emulator (port 0 picks a free port: see ``server.server_address``)."""
    state = GrafanaState(
        data_dir, token=token, admin_user=admin_user, admin_password=admin_password, hide_version=hide_version
    )
    try:
        return GrafanaHTTPServer((host, port), state)
    except OSError:
        state.close()
        raise


def _default_data_dir() -> Path:
    devstack = os.environ.get("RAGVAULT_DEVSTACK_DIR") or Path(__file__).resolve().parents[2] / ".devstack"
    return Path(devstack) / "grafana" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grafana HTTP API emulator backed by a SQLite grafana.db.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=13000)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=_default_data_dir(),
        help="where grafana.db and grafana.ini live (default: $RAGVAULT_DEVSTACK_DIR/grafana/data)",
    )
    parser.add_argument("--token", help="a service account token accepted as 'Authorization: Bearer TOKEN'")
    parser.add_argument("--admin-user", default="admin", help="admin login created on first start")
    parser.add_argument("--admin-password", default="admin", help="admin password set on first start")
    parser.add_argument(
        "--hide-version", action="store_true", help="as [auth.anonymous] hide_version: /api/health omits the version"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    server = make_server(
        args.host,
        args.port,
        args.data_dir,
        token=args.token,
        admin_user=args.admin_user,
        admin_password=args.admin_password,
        hide_version=args.hide_version,
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info(
        "Grafana emulator on http://%s:%d, database %s", *server.server_address[:2], server.state.db_path
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
