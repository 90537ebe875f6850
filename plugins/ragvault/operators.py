"""The operators the DAGs are wired from. Each is thin: it reads the settings, builds what it needs in
``execute()`` and hands the work to a component, the repository or the ingestion control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

from ragvault.components import ComponentError, get_component
from ragvault.components.base import BackupContext
from ragvault.config import Settings, load_settings
from ragvault.ingestion import IngestionControl
from ragvault.repository import BackupRepository, ItemResult, check_date


def run_info(context: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity, as recorded in the manifest."""

    def iso(value):
        return value.isoformat() if value is not None else None

    dag_run = context.get("dag_run")
    return {
        "dag_id": getattr(dag_run, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None),
        "run_type": str(getattr(dag_run, "run_type", "") or "") or None,
        "logical_date": iso(context.get("logical_date")),
        "data_interval_start": iso(context.get("data_interval_start")),
        "data_interval_end": iso(context.get("data_interval_end")),
    }


def _at(component) -> str:
    try:
        endpoint = component.endpoint()
    except Exception:  # the endpoint only decorates the message; the real error follows it
        endpoint = ""
    return f" at {endpoint}" if endpoint else ""


class _SettingsMixin:
    config_path: str | None

    def settings(self) -> Settings:
        return load_settings(self.config_path)

    def repository(self, settings: Settings) -> BackupRepository:
        repo = BackupRepository.from_connection(settings.conn_id("s3"), settings.bucket)
        repo.check_bucket()
        return repo


class ListItemsOperator(_SettingsMixin, BaseOperator):
    """List what a component will back up item by item (Qdrant collections, Mongo databases...).

    The returned list feeds the component's mapped backup task.

    :param component: the component's name (``qdrant``, ``mongodb``...).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#e8f4fd"

    def __init__(self, *, component: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component
        self.config_path = config_path

    def execute(self, context) -> list[str]:
        component = get_component(self.component)(self.settings())
        try:
            items = component.list_items()
        except Exception as exc:
            raise ComponentError(self.component, None, f"could not list {component.item_noun}s"
                                 f"{_at(component)}: {type(exc).__name__}: {exc}") from exc
        self.log.info("%s: %d %s(s) to back up: %s", self.component, len(items), component.item_noun,
                      ", ".join(items) or "none")
        return items


class BackupComponentOperator(_SettingsMixin, BaseOperator):
    """Back up one item of a component (or the whole component) into ``<date>/<component>/``.

    Streams the artifacts to the bucket and returns only their keys, sizes, checksums and counts, which
    :class:`CommitManifestOperator` gathers into the manifest.

    :param component: the component's name.
    :param item: the item (collection, database...) for components backed up item by item; usually
        mapped from :class:`ListItemsOperator`'s output.
    :param backup_date: the backup's date folder, ``YYYY-MM-DD`` (templated; default the run's ``ds``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("item", "backup_date", "config_path")
    ui_color = "#d5f5e3"

    def __init__(
        self,
        *,
        component: str,
        item: str | None = None,
        backup_date: str = "{{ ds }}",
        config_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.component = component
        self.item = item
        self.backup_date = backup_date
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        date = check_date(self.backup_date)
        repo = self.repository(settings)
        if repo.discard_manifest(date):
            self.log.info("backup %s is being rewritten: its old manifest is removed until this run commits", date)
        ctx = BackupContext(repo=repo, date=date, component=self.component, run=run_info(context), log=self.log)
        component = get_component(self.component)(settings)
        try:
            result = component.backup(ctx, self.item)
        except ComponentError:
            raise
        except Exception as exc:
            raise ComponentError(self.component, self.item,
                                 f"backup failed{_at(component)}: {type(exc).__name__}: {exc}") from exc
        self.log.info("%s[%s]: %s; %d artifact(s), %d bytes", self.component, result.item,
                      ", ".join(f"{k}={v}" for k, v in result.counts.items()), len(result.artifacts),
                      sum(a.size for a in result.artifacts))
        return result.to_dict()


class CommitManifestOperator(_SettingsMixin, BaseOperator):
    """Close a backup: check every artifact is in the bucket, prune leftovers, write ``manifest.json`` last.

    :param results_from: component name -> task id of its backup task (mapped or not) whose return values
        are the :class:`~ragvault.repository.ItemResult` s to record.
    :param backup_date: the backup's date folder (templated; default the run's ``ds``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("backup_date", "config_path")
    ui_color = "#fdebd0"

    def __init__(
        self,
        *,
        results_from: Mapping[str, str],
        backup_date: str = "{{ ds }}",
        config_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.results_from = dict(results_from)
        self.backup_date = backup_date
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        date = check_date(self.backup_date)
        repo = self.repository(settings)
        results: list[ItemResult] = []
        for component, task_id in self.results_from.items():
            values = context["ti"].xcom_pull(task_ids=[task_id])
            found = [ItemResult.from_dict(v) for v in values if v]
            if not found:
                self.log.info("%s: nothing was backed up (no items)", component)
            results += found
        manifest = repo.build_manifest(date, results, run_info(context))
        for component in self.results_from:
            manifest["components"].setdefault(component, {"source_version": None, "captured_at": None,
                                                          "counts": {}, "items": {}})
        keep = {a["key"] for a in manifest["artifacts"]} | {repo.manifest_key(date)}
        for obj in repo.list_keys(f"{date}/"):
            if obj["Key"] not in keep:
                self.log.info("removing %s: left by an earlier run of %s, not part of this backup", obj["Key"], date)
                repo.client.delete_object(Bucket=repo.bucket, Key=obj["Key"])
        key = repo.commit_manifest(manifest)
        total = sum(a["size"] for a in manifest["artifacts"])
        for name, comp in manifest["components"].items():
            self.log.info("%-10s %s", name, ", ".join(f"{k}={v}" for k, v in comp["counts"].items()) or "empty")
        self.log.info("backup %s complete: %d artifacts, %d bytes, s3://%s/%s",
                      date, len(manifest["artifacts"]), total, repo.bucket, key)
        return {"manifest": key, "artifacts": len(manifest["artifacts"]), "bytes": total}


class PauseIngestionOperator(_SettingsMixin, BaseOperator):
    """Pause ingestion (configured DAGs and/or flags) before the stores are copied; see ``ragvault.ingestion``.

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#fadbd8"

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        return IngestionControl(self.settings(), self.log).pause(owner=context["dag_run"].run_id)


class ResumeIngestionOperator(_SettingsMixin, BaseOperator):
    """Put ingestion back exactly as it was before the pause (runs as a teardown, so also after failures).

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#fadbd8"

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context) -> dict[str, Any]:
        return IngestionControl(self.settings(), self.log).resume()
