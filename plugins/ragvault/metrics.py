"""Backup health as Prometheus metrics, pushed to a Pushgateway with the official client library.

Optional: with no connection ``connections.pushgateway`` (``pushgateway_default``: an ``http`` connection whose
host, port and schema, or a full URL in its host, are the Pushgateway's; login and password for basic auth) nothing
is pushed. A push that fails is logged and never fails the task that pushes it.

What is pushed (job ``ragvault_backup``; each component in a group of its own, ``{bucket, component}``, so that one
component's failure leaves the others' figures, and its own last success, in place):

``ragvault_backup_last_success_timestamp_seconds``  when the component was last part of a committed backup
``ragvault_backup_duration_seconds``                its tasks' time in that backup (summed over its items)
``ragvault_backup_stored_bytes``                    the bytes its artifacts take in the bucket
``ragvault_backup_items`` / ``ragvault_backup_artifacts``  what that backup holds of it
``ragvault_backup_mode_info{mode}``                 1 for the mode it was backed up in (capture, interval, kept...)
``ragvault_backup_failed``                          1 after a task of the component failed, 0 once it is backed up
``ragvault_backup_last_failure_timestamp_seconds``  when a task of the component last failed

and for the bucket (group ``{bucket}``): ``ragvault_backup_last_complete_timestamp_seconds``, the backup date it
wrote (``ragvault_backup_last_complete_date_timestamp_seconds``), ``ragvault_bucket_complete_backups`` and
``ragvault_bucket_stored_bytes``; retention (job ``ragvault_retention``): ``ragvault_retention_removed_dates``,
``ragvault_retention_removed_bytes``, ``ragvault_retention_kept_dates`` and
``ragvault_retention_last_run_timestamp_seconds``; restore drills (job ``ragvault_drill``, group ``{bucket}``):
``ragvault_drill_last_run_timestamp_seconds``, ``ragvault_drill_last_success_timestamp_seconds`` (left as it was
by a drill that fails), ``ragvault_drill_passed``, ``ragvault_drill_backup_date_timestamp_seconds``, and per
component ``ragvault_drill_component_passed{component}``, ``ragvault_drill_items{component}``,
``ragvault_drill_duration_seconds{component}``; restores (job ``ragvault_restore``, after verify_restore):
``ragvault_restore_last_run_timestamp_seconds``, ``ragvault_restore_passed``,
``ragvault_restore_backup_date_timestamp_seconds`` and per component ``ragvault_restore_items_equal{component}``;
``ragvault verify`` (job ``ragvault_verify``): ``ragvault_verify_last_run_timestamp_seconds``,
``ragvault_verify_passed``, ``ragvault_verify_artifacts_read``, ``ragvault_verify_bytes_read`` and the date it
checked (``ragvault_verify_backup_date_timestamp_seconds``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

BACKUP_JOB, RETENTION_JOB, DRILL_JOB = "ragvault_backup", "ragvault_retention", "ragvault_drill"
RESTORE_JOB, VERIFY_JOB = "ragvault_restore", "ragvault_verify"
BACKUP_DAG = "intelligence_backup"


class Pushgateway:
    """Where metrics go: the Pushgateway of the settings' connection, or nowhere (``url`` None).

    :param settings: the ragvault settings (``connections.pushgateway`` names the Airflow connection).
    """

    def __init__(self, settings) -> None:
        self.bucket = settings.bucket
        self.conn_id = settings.conn_id("pushgateway")
        self.url, self._auth = self._resolve()

    def _resolve(self) -> tuple[str | None, tuple[str, str] | None]:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            log.info("no connection %s: backup metrics are not pushed", self.conn_id)
            return None, None
        host = conn.host or ""
        if "://" in host:
            url = host.rstrip("/")
        else:
            scheme = conn.schema if conn.schema in ("http", "https") else "http"
            url = f"{scheme}://{host}:{conn.port or 9091}"
        return url, ((conn.login, conn.password or "") if conn.login else None)

    def _handler(self) -> Callable[..., Any]:
        from prometheus_client.exposition import basic_auth_handler, default_handler

        if self._auth is None:
            return default_handler

        def handler(url, method, timeout, headers, data):
            return basic_auth_handler(url, method, timeout, headers, data, self._auth[0], self._auth[1])
        return handler

    def push(self, job: str, grouping: dict[str, str], gauges: dict[str, tuple[str, float, dict[str, str]]]) -> bool:
        """Add ``gauges`` (``name: (help, value, labels)``) to the group ``{job, bucket, **grouping}``, replacing
        those metric names only (the group's other metrics stay). False when nothing was pushed."""
        if self.url is None:
            return False
        from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

        registry = CollectorRegistry()
        for name, (text, value, labels) in gauges.items():
            gauge = Gauge(name, text, list(labels), registry=registry)
            (gauge.labels(**labels) if labels else gauge).set(value)
        try:
            pushadd_to_gateway(self.url, job=job, registry=registry, grouping_key={"bucket": self.bucket, **grouping},
                               timeout=10, handler=self._handler())
        except Exception as exc:  # metrics must never fail a backup
            log.warning("could not push metrics to the Pushgateway %s (connection %s): %s: %s", self.url,
                        self.conn_id, type(exc).__name__, exc)
            return False
        return True


def _date_seconds(date: str) -> float:
    return dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp()


def push_backup(settings, manifest: dict[str, Any], catalog: list[dict[str, Any]] | None = None,
                now: float | None = None) -> int:
    """Push a committed backup's figures (``manifest``), per component and for the bucket; returns the groups
    pushed. ``catalog`` (``ragvault.catalog.list_backups``) adds the bucket's totals."""
    gateway = Pushgateway(settings)
    if gateway.url is None:
        return 0
    now = time.time() if now is None else now
    sizes: dict[str, list[int]] = {}
    for artifact in manifest["artifacts"]:
        totals = sizes.setdefault(artifact["component"], [0, 0])
        totals[0] += int(artifact.get("size") or 0)
        totals[1] += 1
    pushed = 0
    for name, section in manifest["components"].items():
        mode = section.get("mode") or "capture"
        if mode == "skipped" or not section.get("items"):
            continue
        stored, artifacts = sizes.get(name, [0, 0])
        seconds = sum(float(i.get("seconds") or 0) for i in section["items"].values())
        gauges = {
            "ragvault_backup_last_success_timestamp_seconds": (
                "When the component was last part of a committed backup", now, {}),
            "ragvault_backup_stored_bytes": ("Bytes its artifacts take in the bucket", stored, {}),
            "ragvault_backup_items": ("Items (collections, databases...) of it in the backup",
                                      len(section["items"]), {}),
            "ragvault_backup_artifacts": ("Artifacts of it in the backup", artifacts, {}),
            "ragvault_backup_mode_info": ("1 for the mode the component was backed up in", 1, {"mode": mode}),
            "ragvault_backup_failed": ("1 after a task of the component failed, 0 once it is backed up", 0, {}),
        }
        if mode != "kept":  # a kept part was not backed up by this run: its duration is not this run's
            gauges["ragvault_backup_duration_seconds"] = ("Time its tasks took in the backup", seconds, {})
        pushed += gateway.push(BACKUP_JOB, {"component": name}, gauges)
    bucket = {
        "ragvault_backup_last_complete_timestamp_seconds": ("When a backup was last committed", now, {}),
        "ragvault_backup_last_complete_date_timestamp_seconds": (
            "The date folder of the last committed backup, as midnight UTC", _date_seconds(manifest["backup_date"]),
            {}),
    }
    if catalog is not None:
        bucket["ragvault_bucket_complete_backups"] = ("Complete backups in the bucket",
                                                      sum(1 for e in catalog if e["complete"]), {})
        bucket["ragvault_bucket_stored_bytes"] = ("Bytes the backups take in the bucket",
                                                  sum(e["size"] or 0 for e in catalog), {})
    pushed += gateway.push(BACKUP_JOB, {}, bucket)
    return pushed


def push_failure(settings, component: str, now: float | None = None) -> bool:
    """Mark ``component`` failed (its last success stays what it was)."""
    now = time.time() if now is None else now
    return Pushgateway(settings).push(BACKUP_JOB, {"component": component}, {
        "ragvault_backup_failed": ("1 after a task of the component failed, 0 once it is backed up", 1, {}),
        "ragvault_backup_last_failure_timestamp_seconds": ("When a task of the component last failed", now, {}),
    })


def push_retention(settings, outcome: dict[str, Any], now: float | None = None) -> bool:
    """Push what a retention run removed and kept."""
    decisions = outcome["decisions"]
    return Pushgateway(settings).push(RETENTION_JOB, {}, {
        "ragvault_retention_removed_dates": ("Dates the last retention run removed", len(outcome["removed"]), {}),
        "ragvault_retention_removed_bytes": ("Bytes the last retention run removed", outcome["bytes"], {}),
        "ragvault_retention_kept_dates": ("Dates the last retention run kept",
                                          sum(1 for d in decisions.values() if d["keep"]), {}),
        "ragvault_retention_last_run_timestamp_seconds": ("When retention last ran", time.time() if now is None
                                                          else now, {}),
    })


def push_drill(settings, outcome: dict[str, Any], now: float | None = None) -> bool:
    """Push a restore drill's result (``ragvault.drill.record_drill``'s)."""
    now = time.time() if now is None else now
    gauges = {
        "ragvault_drill_last_run_timestamp_seconds": ("When a restore drill last ran", now, {}),
        "ragvault_drill_passed": ("1 when the last restore drill found the backup whole, else 0",
                                  1 if outcome["passed"] else 0, {}),
        "ragvault_drill_backup_date_timestamp_seconds": ("The backup date the last drill restored, as midnight UTC",
                                                         _date_seconds(outcome["date"]), {}),
    }
    if outcome["passed"]:
        gauges["ragvault_drill_last_success_timestamp_seconds"] = ("When a restore drill last passed", now, {})
    pushed = Pushgateway(settings).push(DRILL_JOB, {}, gauges)
    for name, result in outcome["components"].items():
        Pushgateway(settings).push(DRILL_JOB, {"component": name}, {
            "ragvault_drill_component_passed": ("1 when the component's part of the last drill was equal to the "
                                                "backup", 0 if result["problems"] else 1, {}),
            "ragvault_drill_items": ("Items of the component the last drill restored", result["items"], {}),
            "ragvault_drill_duration_seconds": ("Time the component's drill took", result["seconds"], {}),
        })
    return pushed


def push_restore(settings, date: str, rows: list[dict[str, Any]], passed: bool, now: float | None = None) -> bool:
    """Push a restore's post-restore verification (``rows``: one ``row`` of ``ragvault.operators.verify_restored`` per
    component)."""
    now = time.time() if now is None else now
    gateway = Pushgateway(settings)
    pushed = gateway.push(RESTORE_JOB, {}, {
        "ragvault_restore_last_run_timestamp_seconds": ("When a restore last finished", now, {}),
        "ragvault_restore_passed": ("1 when the last restore came back equal to its backup, else 0",
                                    1 if passed else 0, {}),
        "ragvault_restore_backup_date_timestamp_seconds": ("The backup date the last restore brought back, as "
                                                           "midnight UTC", _date_seconds(date), {}),
    })
    for row in rows:
        gateway.push(RESTORE_JOB, {"component": row["component"]}, {
            "ragvault_restore_items_equal": ("Items of the component the last restore brought back equal",
                                             row["equal"], {}),
        })
    return pushed


def push_verify(settings, result: dict[str, Any], now: float | None = None) -> bool:
    """Push a ``ragvault verify`` of one date (``ragvault.catalog.verify``'s result)."""
    now = time.time() if now is None else now
    return Pushgateway(settings).push(VERIFY_JOB, {}, {
        "ragvault_verify_last_run_timestamp_seconds": ("When ragvault verify last checked a backup", now, {}),
        "ragvault_verify_passed": ("1 when the last ragvault verify found the backup sound, else 0",
                                   1 if result["ok"] else 0, {}),
        "ragvault_verify_artifacts_read": ("Artifacts the last verify read back whole", result["read"], {}),
        "ragvault_verify_bytes_read": ("Bytes the last verify read back", result["read_bytes"], {}),
        "ragvault_verify_backup_date_timestamp_seconds": ("The backup date the last verify checked, as midnight "
                                                          "UTC", _date_seconds(result["date"]), {}),
    })


class FailureMetricsNotifier(BaseNotifier):
    """On a failed task of a component (``<component>.<task>``) of the backup DAG, set its
    ``ragvault_backup_failed`` to 1 (a failed restore says nothing of the backups)."""

    def notify(self, context: dict[str, Any]) -> None:
        from ragvault.components import REGISTRY
        from ragvault.config import load_settings

        ti = context.get("ti") or context.get("task_instance")
        if getattr(ti, "dag_id", None) != BACKUP_DAG:
            return
        task_id = getattr(ti, "task_id", "") or ""
        component = task_id.split(".", 1)[0] if "." in task_id else None
        if component not in REGISTRY:
            return
        try:
            push_failure(load_settings(), component)
        except Exception as exc:  # a lost metric must not mask the failure itself
            log.warning("could not push the failure metric of %s: %s", component, exc)
