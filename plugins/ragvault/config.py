"""Settings: one YAML file (``include/ragvault.yaml`` or ``$RAGVAULT_CONFIG``) merged over built-in defaults."""

from __future__ import annotations

import copy
import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

CONFIG_ENV = "RAGVAULT_CONFIG"
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "include" / "ragvault.yaml"

DEFAULTS: dict[str, Any] = {
    "bucket": "inteligencia-backups",
    "connections": {
        "s3": "minio_s3",
        "mongo": "mongo_default",
        "redis": "redis_default",
        "qdrant": "qdrant_default",
        "airflow_api": "airflow_api",
        "prometheus": "prometheus_default",
        "grafana": "grafana_default",
        "langsmith": "langsmith_default",
        "encryption": "ragvault_encryption",
        # optional: without this connection no metrics are pushed
        "pushgateway": "pushgateway_default",
    },
    "schedule": {"cron": "0 2 * * *", "timezone": "UTC", "start_date": "2025-01-01"},
    "retries": 2,
    "retry_delay_seconds": 60,
    "max_retry_delay_seconds": 900,
    "notifications": {"webhook_conn_id": None},
    "lock": {"wait_seconds": 3600, "lease_seconds": 600},
    "transfer": {"part_size_mib": 8, "concurrency": 4},
    "encryption": {"scope": "secrets"},
    "object_lock": {"mode": None, "days": None},
    "drill": {"schedule": "0 4 * * 0", "components": [], "sample": 100,
              "connections": {"qdrant": "qdrant_drill", "mongo": "mongo_drill", "redis": "redis_drill"}},
    "backfill": {"state_parts": "skip"},
    "retention": {"enabled": False, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2,
                  "min_age_days": 3, "incomplete_after_days": 7},
    "ingestion": {
        "pause_dag_ids": [],
        "drain_timeout_seconds": 1800,
        "flag": {"redis_key": None, "variable": None},
    },
    "components": {
        "qdrant": {"enabled": True, "include": [], "exclude": [], "scroll_batch": 256, "upsert_batch": 256,
                   "upsert_parallel": 4, "peer_urls": {}},
        "mongodb": {
            "enabled": True,
            "include_databases": [],
            "exclude_databases": ["admin", "local", "config"],
            "include_collections": [],
            "exclude_collections": ["*.system.*"],
            "interval_collections": {},
            "mongodump_path": None,
            "read_preference": None,
        },
        "redis": {"enabled": True, "aof_dir": None, "restore_method": "auto", "replication_advertise_host": None,
                  "replication_listen_host": None, "replication_accept_seconds": 15},
        "langchain": {"enabled": True, "config_dir": None, "include": [], "exclude": [], "max_file_mib": 16},
        "langsmith": {
            "enabled": True,
            "projects": [],
            "exclude_projects": [],
            "feedback_batch": 100,
            "timeout_seconds": 60,
            "max_retries": 5,
            "backoff_seconds": 0.5,
            "max_backoff_seconds": 30,
            "restore_batch": 100,
            "verify_sample": 100,
        },
        "gpt": {
            "enabled": True,
            "model_config_path": None,
            "model_config_variable": None,
            "system_prompts_path": None,
            "system_prompts_variable": None,
            "weights_dir": None,
            "weights_include": [],
            "weights_exclude": [],
            "max_document_mib": 16,
        },
        "infra": {
            "enabled": True,
            "compose_path": None,
            "env_path": None,
            "etl_scripts_dir": None,
            "etl_include": [],
            "etl_exclude": [],
            "extra_files": [],
        },
        "prometheus": {"enabled": True, "data_dir": None, "config_dir": None, "config_file": None,
                       "encrypt_config": "auto", "verify_selectors": None, "reload_timeout_seconds": 150},
        "grafana": {
            "enabled": True,
            "config_path": None,
            "database": "sqlite",
            "db_path": None,
            "encrypt": True,
            "page_size": 1000,
            "timeout_seconds": 60,
            "retries": 3,
            "sqlite_busy_timeout_seconds": 60,
            "tmp_dir": None,
            "restore_files": False,
            "alerting_provenance": "none",
        },
    },
}


# Every component may name the Celery queue of its tasks (``Settings.task_args``): the workers that reach its files
for _section in DEFAULTS["components"].values():
    _section["queue"] = None


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or holds a wrong value."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def select(names: Iterable[str], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    """Keep the names matching any ``include`` pattern (all when empty) and no ``exclude`` pattern, sorted."""
    include, exclude = list(include or ()), list(exclude or ())
    return sorted(
        n
        for n in names
        if (not include or any(fnmatch.fnmatchcase(n, p) for p in include))
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    )


@dataclass(frozen=True)
class Settings:
    """The merged configuration, with typed accessors for what the DAGs and operators need."""

    data: dict[str, Any]
    source: str

    @property
    def bucket(self) -> str:
        return self.data["bucket"]

    def conn_id(self, name: str) -> str:
        try:
            return self.data["connections"][name]
        except KeyError:
            raise ConfigError(f"{self.source}: no connection id configured for {name!r}") from None

    def component(self, name: str) -> dict[str, Any]:
        return self.data["components"].get(name, {})

    def enabled(self, name: str) -> bool:
        return bool(self.component(name).get("enabled", True))

    def task_args(self, name: str) -> dict[str, Any]:
        """What every task of component ``name`` is made with in the DAGs: ``queue`` when the component's
        settings name one (``components.<name>.queue``: the Celery queue of the workers that can reach its
        files or servers), else nothing (Airflow's default queue)."""
        queue = self.component(name).get("queue")
        if queue is None:
            return {}
        if not isinstance(queue, str) or not queue.strip():
            raise ConfigError(f"{self.source}: components.{name}.queue must be a queue name, not {queue!r}")
        return {"queue": queue.strip()}

    @property
    def transfer(self) -> dict[str, int]:
        """``part_size_mib`` (5 or more) and ``concurrency`` (parts in flight per artifact, 1 or more)."""
        transfer = self.data["transfer"]
        try:
            part_size, concurrency = int(transfer["part_size_mib"]), int(transfer["concurrency"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: transfer.part_size_mib and transfer.concurrency must be numbers "
                              f"({exc})") from None
        if part_size < 5 or concurrency < 1:
            raise ConfigError(f"{self.source}: transfer.part_size_mib must be at least 5 (S3's smallest part) and "
                              f"transfer.concurrency at least 1, not {part_size} and {concurrency}")
        return {"part_size_mib": part_size, "concurrency": concurrency}

    @property
    def encryption_scope(self) -> str:
        """``secrets`` (only artifacts that hold secrets are encrypted) or ``all`` (every artifact is)."""
        scope = str((self.data.get("encryption") or {}).get("scope") or "secrets").lower()
        if scope not in ("secrets", "all"):
            raise ConfigError(f"{self.source}: encryption.scope is {scope!r}: expected secrets or all")
        return scope

    @property
    def object_lock(self):
        """The object-lock settings (:class:`ragvault.immutability.ObjectLock`); ``mode`` null: no lock."""
        from ragvault.immutability import ObjectLock

        try:
            lock = ObjectLock.from_settings(self.data.get("object_lock"))
            if lock.enabled:
                lock.lock_days(self.retention)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: object_lock: {exc}") from None
        return lock

    @property
    def retention(self):
        """The retention policy (:class:`ragvault.retention.Policy`); ``enabled`` False keeps every backup."""
        from ragvault.retention import Policy

        try:
            return Policy.from_settings(self.data["retention"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: retention: {exc}") from None

    @property
    def ingestion(self) -> dict[str, Any]:
        return self.data["ingestion"]

    @property
    def schedule(self) -> dict[str, Any]:
        return self.data["schedule"]

    def default_args(self) -> dict[str, Any]:
        from ragvault.metrics import FailureMetricsNotifier
        from ragvault.notifications import WebhookFailureNotifier

        return {
            "owner": "ragvault",
            "on_failure_callback": [WebhookFailureNotifier(), FailureMetricsNotifier()],
            "retries": int(self.data["retries"]),
            "retry_delay": timedelta(seconds=int(self.data["retry_delay_seconds"])),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(seconds=int(self.data["max_retry_delay_seconds"])),
        }


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the configuration file (``path``, else ``$RAGVAULT_CONFIG``, else ``include/ragvault.yaml``).

    A missing default file is not an error (the defaults apply); a missing file that was asked for is.
    """
    explicit = path or os.environ.get(CONFIG_ENV)
    config_path = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    override: dict[str, Any] = {}
    if config_path.exists():
        try:
            override = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from exc
        if not isinstance(override, dict):
            raise ConfigError(f"{config_path}: expected a mapping at the top level")
    elif explicit:
        raise ConfigError(f"configuration file {config_path} (from {CONFIG_ENV} or argument) does not exist")
    return Settings(data=_merge(DEFAULTS, override), source=str(config_path))
