"""Pausing ingestion while a backup (or restore) runs, and restoring exactly the state it was in before.

Two mechanisms, either or both (``ingestion`` in the configuration):

* DAGs paused through the Airflow REST API (``pause_dag_ids``), then their queued and running task
  instances drained, so no ETL writes while the stores are copied;
* a cooperative flag that ETL code outside Airflow checks: a Redis key and/or an Airflow Variable.

Before changing anything, the state found is saved in the Airflow Variable ``ragvault_ingestion_state``.
Resume reads it back and restores it: a DAG that was paused before the backup stays paused, a flag that
was already set keeps its old value. A retry of the pause finds the saved state and keeps it, so it never
mistakes its own pause for the user's. With nothing configured, both steps say so and do nothing.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from airflow.sdk import Variable

from ragvault.config import Settings
from ragvault.hooks.airflow_api import AirflowApiHook
from ragvault.hooks.redis import RedisHook
from ragvault.repository import utcnow_iso

STATE_VARIABLE = "ragvault_ingestion_state"
POLL_SECONDS = 5


class IngestionError(RuntimeError):
    """Ingestion could not be paused (or resumed) as configured."""


class IngestionControl:
    """Pause and resume what writes into the stack.

    :param settings: the ragvault settings (``ingestion`` and ``connections``).
    :param log: where progress goes (the task's log).
    """

    def __init__(self, settings: Settings, log: logging.Logger | None = None):
        self.settings = settings
        self.config = settings.ingestion
        self.log = log or logging.getLogger(__name__)
        flag = self.config.get("flag") or {}
        self.dag_ids: list[str] = list(self.config.get("pause_dag_ids") or [])
        self.redis_key: str | None = flag.get("redis_key")
        self.variable: str | None = flag.get("variable")

    @property
    def configured(self) -> bool:
        return bool(self.dag_ids or self.redis_key or self.variable)

    def _api(self) -> AirflowApiHook:
        return AirflowApiHook(airflow_api_conn_id=self.settings.conn_id("airflow_api"))

    def _redis(self):
        conn_id = (self.config.get("flag") or {}).get("redis_conn_id") or self.settings.conn_id("redis")
        return RedisHook(redis_conn_id=conn_id).key_client()  # the flag's master, on a Redis Cluster

    @staticmethod
    def saved_state() -> dict[str, Any] | None:
        raw = Variable.get(STATE_VARIABLE, default=None)
        return json.loads(raw) if raw else None

    def pause(self, owner: str) -> dict[str, Any]:
        """Pause ingestion on behalf of ``owner`` (a run id); return what was done."""
        if not self.configured:
            self.log.info("ingestion: no DAGs and no flag configured (ingestion.pause_dag_ids / ingestion.flag): "
                          "nothing to pause")
            return {"paused": False}
        state = self.saved_state()
        if state is not None:
            self.log.info("ingestion: keeping the state saved by %s at %s (a retry, or a run that did not resume)",
                          state.get("owner"), state.get("saved_at"))
            if state.get("owner") != owner:
                # that run died holding the lock, which this run took over: its resume is now this run's
                state = {**state, "owner": owner, "taken_over_from": state.get("owner")}
                Variable.set(STATE_VARIABLE, json.dumps(state), description="ragvault: ingestion state before pause")
        else:
            api = self._api() if self.dag_ids else None
            state = {
                "owner": owner,
                "saved_at": utcnow_iso(),
                "dags": {dag_id: api.is_paused(dag_id) for dag_id in self.dag_ids},
                "redis_flag": None,
                "variable_flag": None,
            }
            if self.redis_key:
                previous = self._redis().get(self.redis_key)
                state["redis_flag"] = {"key": self.redis_key,
                                       "previous": previous.decode() if previous is not None else None}
            if self.variable:
                state["variable_flag"] = {"name": self.variable,
                                          "previous": Variable.get(self.variable, default=None)}
            Variable.set(STATE_VARIABLE, json.dumps(state), description="ragvault: ingestion state before pause")

        try:
            self._apply(owner, state)
        except Exception:
            # resume_ingestion is a teardown, and Airflow does not run a teardown whose setup (this task)
            # failed: put back here what this attempt changed. A retry saves the state again and starts over.
            self.log.error("ingestion: pause failed; putting ingestion back as it was before raising")
            try:
                self.resume()
            except Exception:
                self.log.exception("ingestion: could not put ingestion back; the state saved in Variable %r "
                                   "is kept for the next resume", STATE_VARIABLE)
            raise
        return {"paused": True, "dags": self.dag_ids, "redis_key": self.redis_key, "variable": self.variable}

    def _apply(self, owner: str, state: dict[str, Any]) -> None:
        """Set the flags, pause the DAGs and wait for their running tasks to finish."""
        if self.redis_key:
            self._redis().set(self.redis_key, json.dumps({"paused_by": owner, "since": utcnow_iso()}))
            self.log.info("ingestion: flag set in Redis key %r", self.redis_key)
        if self.variable:
            Variable.set(self.variable, "true")
            self.log.info("ingestion: flag set in Airflow Variable %r", self.variable)
        if self.dag_ids:
            api = self._api()
            for dag_id in self.dag_ids:
                if state["dags"].get(dag_id):
                    self.log.info("ingestion: DAG %s was already paused", dag_id)
                api.set_paused(dag_id, True)
                self.log.info("ingestion: DAG %s paused", dag_id)
            self._drain(api)

    def _drain(self, api: AirflowApiHook) -> None:
        timeout = float(self.config.get("drain_timeout_seconds", 1800))
        deadline = time.monotonic() + timeout
        while True:
            active = {dag_id: api.active_task_instances(dag_id) for dag_id in self.dag_ids}
            busy = {d: n for d, n in active.items() if n}
            if not busy:
                self.log.info("ingestion: no queued or running tasks left in %s", ", ".join(self.dag_ids))
                return
            if time.monotonic() >= deadline:
                raise IngestionError(
                    f"ingestion did not drain within {timeout:.0f}s: still active "
                    + ", ".join(f"{d} ({n} task instances)" for d, n in busy.items())
                )
            self.log.info("ingestion: waiting for %s", ", ".join(f"{d} ({n} active)" for d, n in busy.items()))
            time.sleep(POLL_SECONDS)

    def resume(self) -> dict[str, Any]:
        """Put everything back as the saved state says, then forget the saved state."""
        state = self.saved_state()
        if state is None:
            self.log.info("ingestion: nothing was paused, nothing to resume")
            return {"resumed": False}
        if state["dags"]:
            api = self._api()
            for dag_id, was_paused in state["dags"].items():
                if was_paused:
                    self.log.info("ingestion: DAG %s was paused before the backup and stays paused", dag_id)
                else:
                    api.set_paused(dag_id, False)
                    self.log.info("ingestion: DAG %s unpaused", dag_id)
        flag = state.get("redis_flag")
        if flag:
            if flag["previous"] is None:
                self._redis().delete(flag["key"])
            else:
                self._redis().set(flag["key"], flag["previous"])
            self.log.info("ingestion: Redis flag %r restored", flag["key"])
        flag = state.get("variable_flag")
        if flag:
            if flag["previous"] is None:
                Variable.delete(flag["name"])
            else:
                Variable.set(flag["name"], flag["previous"])
            self.log.info("ingestion: Variable flag %r restored", flag["name"])
        Variable.delete(STATE_VARIABLE)
        return {"resumed": True, "dags": sorted(d for d, p in state["dags"].items() if not p)}
