"""Failure notifications: a JSON message to a webhook (Slack-compatible ``text``) when a task fails.

Configured with ``notifications.webhook_conn_id`` in the settings: an Airflow ``http`` connection whose host
(and schema/port/path, or a full URL in host) is the webhook endpoint; an optional token in its password is
sent as ``Authorization: Bearer``. With nothing configured, failures are only in Airflow's own logs and UI.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from airflow.sdk import BaseHook, BaseNotifier

from ragvault.config import load_settings

log = logging.getLogger(__name__)


def webhook_url(conn) -> str:
    host = conn.host or ""
    if "://" in host:
        return host
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.lstrip('/')}" if conn.schema and conn.schema not in ("http", "https") else ""
    scheme = conn.schema if conn.schema in ("http", "https") else "https"
    return f"{scheme}://{host}{port}{path}"


class WebhookFailureNotifier(BaseNotifier):
    """Post what failed to a webhook: the DAG, the run, the component and item, the error and the log URL.

    :param webhook_conn_id: the http connection of the webhook; default ``notifications.webhook_conn_id`` of
        the settings (nothing is sent when neither is set).
    :param timeout: seconds allowed for the POST; a notification that cannot be delivered is logged, never
        raised (it must not hide the failure it reports).
    """

    template_fields = ("webhook_conn_id",)

    def __init__(self, webhook_conn_id: str | None = None, timeout: int = 10):
        super().__init__()
        self.webhook_conn_id = webhook_conn_id
        self.timeout = timeout

    @staticmethod
    def message(context: dict[str, Any]) -> dict[str, Any]:
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        task_id = getattr(ti, "task_id", "?")
        component = task_id.split(".", 1)[0] if "." in task_id else None
        map_index = getattr(ti, "map_index", -1)
        item = getattr(ti, "rendered_map_index", None) or (map_index if map_index not in (None, -1) else None)
        error = context.get("exception")
        payload = {
            "dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
            "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
            "task_id": task_id,
            "component": component,
            "item": item,
            "try_number": getattr(ti, "try_number", None),
            "error": f"{type(error).__name__}: {error}" if error else None,
            "log_url": getattr(ti, "log_url", None),
        }
        what = f"{component}[{item}]" if component and item is not None else component or task_id
        payload["text"] = (f"ragvault: {payload['dag_id']} failed at {what} (run {payload['run_id']}): "
                           f"{payload['error'] or 'see the log'} - {payload['log_url']}")
        return payload

    def notify(self, context: dict[str, Any]) -> None:
        conn_id = self.webhook_conn_id or load_settings().data.get("notifications", {}).get("webhook_conn_id")
        if not conn_id:
            return
        payload = self.message(context)
        try:
            conn = BaseHook.get_connection(conn_id)
            headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
            response = requests.post(webhook_url(conn), json=payload, headers=headers, timeout=self.timeout)
            response.raise_for_status()
            log.info("failure notification sent to %s", conn_id)
        except Exception as exc:  # a lost notification must not mask the failure itself
            log.warning("could not send the failure notification to %s: %s", conn_id, exc)
