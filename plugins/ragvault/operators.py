"""The operators the DAGs are wired from. Each is thin: it reads the settings, builds what it needs in
``execute()`` and hands the work to a component, the repository or the ingestion control."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, TriggerRule

from ragvault.components import REGISTRY, RESTORE_ORDER, ComponentError, get_component
from ragvault.components.base import BackupContext, RestoreContext
from ragvault.config import Settings, load_settings
from ragvault.ingestion import IngestionControl
from ragvault.lock import BucketLock, lease_seconds
from ragvault.plan import CAPTURE, INTERVAL_ONLY, SKIPPED, BackupPlan, assemble_manifest, make_plan
from ragvault.repository import BackupRepository, ItemResult, RepositoryError, check_date

if TYPE_CHECKING:
    from ragvault.crypto import Cipher


def check_object_lock(settings: Settings, repo: BackupRepository) -> None:
    """A backup run with ``object_lock.mode`` set needs a bucket with object lock: refused before any write."""
    lock = settings.object_lock
    if lock.enabled:
        from ragvault.immutability import check_bucket

        check_bucket(repo, lock)


def run_info(context: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity, as recorded in the manifest."""

    def iso(value):
        return value.isoformat() if value is not None else None

    dag_run = context.get("dag_run")
    run_type = getattr(dag_run, "run_type", None)
    return {
        "dag_id": getattr(dag_run, "dag_id", None),
        "run_id": getattr(dag_run, "run_id", None),
        # the SDK's DagRunType is a str enum whose str() is "DagRunType.BACKFILL": record its value, "backfill"
        "run_type": getattr(run_type, "value", run_type) or None,
        "logical_date": iso(context.get("logical_date")),
        "run_after": iso(getattr(dag_run, "run_after", None)),
        "data_interval_start": iso(context.get("data_interval_start")),
        "data_interval_end": iso(context.get("data_interval_end")),
    }


def run_date(context: Mapping[str, Any]) -> str:
    """The date folder of a run: the day of its logical date (``ds``), in UTC.

    A run triggered without a logical date (``airflow dags trigger``, the REST API with ``logical_date:
    null``) has no ``ds``: its folder is the UTC day it was triggered for (its ``run_after``).
    """
    from datetime import UTC, datetime

    dag_run = context.get("dag_run")
    moment = context.get("logical_date") or getattr(dag_run, "logical_date", None)
    if moment is None:
        moment = getattr(dag_run, "run_after", None) or datetime.now(UTC)
    return moment.astimezone(UTC).date().isoformat()


def _at(component) -> str:
    try:
        endpoint = component.endpoint()
    except Exception:  # the endpoint only decorates the message; the real error follows it
        endpoint = ""
    return f" at {endpoint}" if endpoint else ""


class _RagvaultOperator(BaseOperator):
    """Common ground of ragvault's operators: the settings file and the repository built from it.

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("config_path",)

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def settings(self) -> Settings:
        return load_settings(self.config_path)

    def repository(self, settings: Settings, *, check: bool = True) -> BackupRepository:
        repo = BackupRepository.from_settings(settings)
        if check:
            repo.check_bucket()
        return repo

    def note_run(self, context, note: str) -> None:
        """Put ``note`` on the DAG run (the grid view shows it), through the ``airflow_api`` connection when
        there is one; a failure is only logged."""
        from ragvault.hooks.airflow_api import AirflowApiHook

        dag_run = context["dag_run"]
        try:
            AirflowApiHook(airflow_api_conn_id=self.settings().conn_id("airflow_api")).set_run_note(
                dag_run.dag_id, dag_run.run_id, note)
        except Exception as exc:  # the note is a convenience: the log and XCom say the same
            self.log.info("the run's note was not set (%s: %s): %s", type(exc).__name__, str(exc)[:200], note)

    def lock(self, context, settings: Settings, repo: BackupRepository) -> BucketLock:
        """The bucket's lock as this run sees it (its owner is the run id)."""
        return BucketLock(repo.client, repo.bucket, context["dag_run"].run_id,
                          lease=lease_seconds(settings.data["lock"]))


class _BackupOperator(_RagvaultOperator):
    """Common ground of the backup operators: the run's date and the plan ``plan_backup`` made for it.

    :param backup_date: the backup's date folder, ``YYYY-MM-DD`` (templated; default the run's date: its
        ``ds``, or the day it was triggered for when it has no logical date, see :func:`run_date`).
    :param plan_task_id: the task whose return value is the run's :class:`~ragvault.plan.BackupPlan`; when
        it has none (the operator used on its own), the plan is made here the same way.
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("backup_date", "config_path")

    def __init__(self, *, backup_date: str | None = None, plan_task_id: str | None = "plan_backup",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_date = backup_date
        self.plan_task_id = plan_task_id

    def date(self, context) -> str:
        """The backup's date folder: ``backup_date`` if given, else the run's date (:func:`run_date`)."""
        return check_date(self.backup_date or run_date(context))

    def plan(self, context, settings: Settings, repo: BackupRepository | None = None) -> BackupPlan:
        """The run's plan: ``plan_backup``'s, or one made here (on ``repo``, or a repository built for it)."""
        made = context["ti"].xcom_pull(task_ids=self.plan_task_id) if self.plan_task_id else None
        if made:
            return BackupPlan.from_dict(made)
        return make_plan(repo or self.repository(settings), settings, self.date(context),
                         context["dag_run"].run_id)


class PlanBackupOperator(_BackupOperator):
    """Decide what this run backs up, per component: everything, interval data only, or nothing (kept or
    skipped), from the complete backups already in the bucket and ``backfill.state_parts``; see
    ``ragvault.plan``. Runs after ``pause_ingestion``, which holds the bucket's lock.

    :param backup_date: the backup's date folder (templated; default the run's date).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("plan_task_id", None)
        super().__init__(**kwargs)

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        repo = self.repository(settings)
        date = self.date(context)
        with self.lock(context, settings, repo).keep_alive() as lock:
            # What dead runs left: a commit cut short (its manifest still names staged objects), uploads never
            # completed. This run holds the lock, so no other run is writing.
            repaired = repo.repair(date)
            if repaired:
                self.log.warning("backup %s: cleaned up after a crashed run: %d staged objects moved into place, "
                                 "%d leftover objects removed", date, repaired["moved"], repaired["removed"])
            aborted = repo.abort_stale_uploads(before=lock.acquired_at())
            if aborted:
                self.log.warning("aborted %d incomplete uploads left by dead runs (%s)", len(aborted),
                                 ", ".join(aborted[:5]) + (", ..." if len(aborted) > 5 else ""))
            plan = make_plan(repo, settings, date, context["dag_run"].run_id)
        check_object_lock(settings, repo)
        self.log.info("backup %s: %s", plan.date, plan.reason)
        for name, decision in plan.components.items():
            self.log.info("  %-10s %-8s %s", name, decision["mode"], decision["reason"])
        if plan.staging:
            self.log.info("%s already holds a complete backup: it stays whole until this run commits (objects are "
                          "written under %s/.staging/%s/ and swapped in then)", plan.date, plan.date, plan.staging)
        return plan.to_dict()


class ListItemsOperator(_BackupOperator):
    """List what a component will back up item by item (Qdrant collections, Mongo databases...).

    The returned list feeds the component's mapped backup task. In a run that backs up only interval data,
    the items that hold some; none when the plan skips or keeps the component.

    :param component: the component's name (``qdrant``, ``mongodb``...).
    :param backup_date: the backup's date folder (templated; default the run's date).
    :param plan_task_id: the task whose return value is the run's plan (default ``plan_backup``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, component: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component

    def execute(self, context) -> list[str]:
        settings = self.settings()
        mode = self.plan(context, settings).mode(self.component)
        component = get_component(self.component)(settings)
        if mode not in (CAPTURE, INTERVAL_ONLY):
            self.log.info("%s is %s in this run: nothing to list", self.component, mode)
            return []
        try:
            items = component.list_items()
            if mode == INTERVAL_ONLY:
                items = component.interval_items(items)
        except Exception as exc:
            raise ComponentError(self.component, None, f"could not list {component.item_noun}s"
                                 f"{_at(component)}: {type(exc).__name__}: {exc}") from exc
        self.log.info("%s: %d %s(s) to back up%s: %s", self.component, len(items), component.item_noun,
                      " (interval data only)" if mode == INTERVAL_ONLY else "", ", ".join(items) or "none")
        return items


class BackupComponentOperator(_BackupOperator):
    """Back up one item of a component (or the whole component) into ``<date>/<component>/``.

    Streams the artifacts to the bucket and returns only their keys, sizes, checksums and counts, which
    :class:`CommitManifestOperator` gathers into the manifest.

    :param component: the component's name.
    :param item: the item (collection, database...) for components backed up item by item; usually
        mapped from :class:`ListItemsOperator`'s output.
    :param backup_date: the backup's date folder, ``YYYY-MM-DD`` (templated; default the run's date).
    :param plan_task_id: the task whose return value is the run's plan (default ``plan_backup``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("item", "backup_date", "config_path")
    ui_color = "#d5f5e3"

    def __init__(self, *, component: str, item: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component
        self.item = item

    def scope_cipher(self, settings: Settings) -> Cipher | None:
        """The key every artifact is encrypted with when ``encryption.scope`` is ``all`` (None otherwise); a
        ComponentError saying how to set it when it is missing, before anything is written."""
        if settings.encryption_scope != "all":
            return None
        from ragvault.crypto import EncryptionError, load_cipher

        try:
            cipher = load_cipher(settings)
        except EncryptionError as exc:
            raise ComponentError(self.component, self.item, f"encryption.scope is all, so every artifact is "
                                 f"encrypted, but the backup key is not usable: {exc} (nothing was written)") from None
        self.log.info("%s: every artifact is encrypted (encryption.scope: all) with the key of fingerprint %s",
                      self.component, cipher.key_fingerprint)
        return cipher

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        settings = self.settings()
        date = self.date(context)
        repo = self.repository(settings)
        plan = self.plan(context, settings, repo)
        mode = plan.mode(self.component)
        if mode not in (CAPTURE, INTERVAL_ONLY):
            raise AirflowSkipException(f"{self.component} is {mode} in this run: "
                                       f"{plan.components.get(self.component, {}).get('reason', plan.reason)}")
        ctx = BackupContext(repo=repo, date=date, component=self.component, run=run_info(context), log=self.log,
                            mode=mode, staging=plan.staging, cipher=self.scope_cipher(settings))
        component = get_component(self.component)(settings)
        started = time.monotonic()
        try:
            with self.lock(context, settings, repo).keep_alive():
                result = component.backup(ctx, self.item)
        except (ComponentError, RepositoryError):
            raise
        except Exception as exc:
            raise ComponentError(self.component, self.item,
                                 f"backup failed{_at(component)}: {type(exc).__name__}: {exc}") from exc
        result.seconds = round(time.monotonic() - started, 3)
        self.log.info("%s[%s]: %s; %d artifact(s), %d bytes", self.component, result.item,
                      ", ".join(f"{k}={v}" for k, v in result.counts.items()), len(result.artifacts),
                      sum(a.size for a in result.artifacts))
        return result.to_dict()


class CommitManifestOperator(_BackupOperator):
    """Close a backup: put every artifact in place, write ``manifest.json`` last, prune leftovers.

    The manifest records, per component, the plan's mode and reason, and its ``state`` block says whether
    and when the state was captured (see ``ragvault.plan``). Components the plan keeps are carried over
    from the date's previous manifest with their objects.

    :param results_from: component name -> task id of its backup task (mapped or not) whose return values
        are the :class:`~ragvault.repository.ItemResult` s to record.
    :param backup_date: the backup's date folder (templated; default the run's date).
    :param plan_task_id: the task whose return value is the run's plan (default ``plan_backup``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fdebd0"

    def __init__(self, *, results_from: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results_from = dict(results_from)

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        date = self.date(context)
        repo = self.repository(settings)
        plan = self.plan(context, settings, repo)
        run = run_info(context)
        lock = self.lock(context, settings, repo)
        with lock.keep_alive():
            existing = repo.read_manifest(date)
            if existing is not None and existing.get("run", {}).get("run_id") == run["run_id"]:
                # an earlier try of this task wrote the manifest, then died: finish what it left, once
                self.log.info("backup %s was committed by an earlier try of this task: finishing it", date)
                repo.finish_commit(existing)
                manifest = existing
            else:
                results: list[ItemResult] = []
                for component, task_id in self.results_from.items():
                    values = context["ti"].xcom_pull(task_ids=[task_id])
                    found = [ItemResult.from_dict(v) for v in values if v]
                    if not found:
                        self.log.info("%s: nothing was backed up (no items)", component)
                    results += found
                manifest = assemble_manifest(repo, plan, results, run)
                check_object_lock(settings, repo)
                repo.commit_manifest(manifest, fence=lock.renew)
            self.seal(settings, manifest, repo)
        self.push_metrics(settings, manifest, repo)
        return self.summarise(manifest, plan, repo, context)

    def seal(self, settings: Settings, manifest: dict[str, Any], repo: BackupRepository) -> None:
        """With ``object_lock.mode`` set, lock every object of the committed backup (see ragvault.immutability)."""
        from ragvault.immutability import retain_until, seal

        lock = settings.object_lock
        if lock.enabled:
            seal(repo, manifest, lock, retain_until(manifest["backup_date"], lock.lock_days(settings.retention)))

    def push_metrics(self, settings: Settings, manifest: dict[str, Any], repo: BackupRepository) -> None:
        """The committed backup's figures to the Pushgateway, if one is configured (never fails the task)."""
        from ragvault.catalog import list_backups
        from ragvault.metrics import Pushgateway, push_backup

        if Pushgateway(settings).url is None:
            return
        try:
            pushed = push_backup(settings, manifest, list_backups(repo))
            self.log.info("metrics of backup %s pushed (%d groups)", manifest["backup_date"], pushed)
        except Exception as exc:  # the backup is committed: its metrics are a report of it
            self.log.warning("could not push the metrics of backup %s: %s: %s", manifest["backup_date"],
                             type(exc).__name__, exc)

    def summarise(self, manifest: dict[str, Any], plan: BackupPlan, repo: BackupRepository,
                  context) -> dict[str, Any]:
        """The run's outcome at a glance, at the end of the log: per component its mode, items, size and the
        time its tasks took (summed over its items); a backup in which some component was not captured by this
        run says it is partial."""
        date = manifest["backup_date"]
        sizes: dict[str, int] = {}
        for artifact in manifest["artifacts"]:
            sizes[artifact["component"]] = sizes.get(artifact["component"], 0) + artifact["size"]
        lines = [f"{'component':10} {'mode':8} {'items':>5} {'size':>10} {'time':>7}  counts"]
        order = [n for n in REGISTRY if n in manifest["components"]]
        order += sorted(set(manifest["components"]) - set(order))
        for name in order:
            comp = manifest["components"][name]
            seconds = [i["seconds"] for i in comp.get("items", {}).values() if i.get("seconds") is not None]
            took = sum(seconds) if seconds and comp.get("mode") != "kept" else None
            lines.append(f"{name:10} {comp.get('mode', '?'):8} {len(comp.get('items', {})):>5} "
                         f"{human_size(sizes.get(name, 0)):>10} {f'{took:.1f} s' if took is not None else '-':>7}  "
                         + (", ".join(f"{k}={v}" for k, v in comp.get("counts", {}).items()) or "empty"))
        not_captured = sorted(n for n, c in manifest["components"].items() if c.get("mode") != CAPTURE)
        total = sum(sizes.values())
        counted = f"{len(manifest['artifacts'])} artifacts, {human_size(total)}"
        if not_captured:
            outcome = (f"PARTIAL backup of {date}: {len(not_captured)} of {len(manifest['components'])} components "
                       "not captured by this run ("
                       + ", ".join(f"{n} {manifest['components'][n].get('mode')}" for n in not_captured)
                       + f"); {counted}")
        else:
            outcome = f"complete backup of {date}: {len(manifest['components'])} components captured; {counted}"
        self.log.info("state: %s", plan.reason)
        self.log.info("backup %s:\n%s", date, "\n".join(lines))
        (self.log.warning if not_captured else self.log.info)("%s, s3://%s/%s", outcome, repo.bucket,
                                                              repo.manifest_key(date))
        self.note_run(context, f"ragvault: {outcome}")
        return {"manifest": repo.manifest_key(date), "artifacts": len(manifest["artifacts"]), "bytes": total,
                "partial": bool(not_captured), "not_captured": not_captured}


class PauseIngestionOperator(_RagvaultOperator):
    """Take the bucket's lock, then pause ingestion (configured DAGs and/or flags); see ``ragvault.ingestion``.

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fadbd8"

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        owner = context["dag_run"].run_id
        repo = self.repository(settings)
        lock = self.lock(context, settings, repo)
        lock.acquire(wait=float(settings.data["lock"]["wait_seconds"]))
        try:
            return IngestionControl(settings, self.log).pause(owner=owner)
        except BaseException:
            lock.release(attempts=3)  # the pause put everything back; its teardown will not run
            raise


class ApplyRetentionOperator(_BackupOperator):
    """Apply the retention policy (``retention`` in the settings, see ``ragvault.retention``) once the run's
    backup is committed: every date is kept or removed by the GFS rules, each decision logged with its rule.
    The run's own date is never removed. Runs while the run holds the bucket's lock; with ``retention.enabled``
    false it only logs that every backup is kept.

    :param dry_run: log the decisions without removing anything (templated).
    :param backup_date: the run's date folder (templated; default the run's date): protected.
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("backup_date", "config_path", "dry_run")
    ui_color = "#eaf2d3"

    def __init__(self, *, dry_run: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("plan_task_id", None)
        super().__init__(**kwargs)
        self.dry_run = dry_run

    def execute(self, context) -> dict[str, Any]:
        from ragvault.retention import apply_retention

        settings = self.settings()
        policy = settings.retention
        if not policy.enabled:
            self.log.info("retention is not enabled (retention.enabled in %s): every backup is kept", settings.source)
            return {"enabled": False, "removed": []}
        repo = self.repository(settings)
        date = self.date(context)
        with self.lock(context, settings, repo).keep_alive():
            outcome = apply_retention(repo, policy, protect={date}, dry_run=bool(self.dry_run),
                                      lock=settings.object_lock)
        if not self.dry_run:
            from ragvault.metrics import push_retention

            push_retention(settings, outcome)
        if outcome["failed"]:
            raise RepositoryError("retention could not remove " + "; ".join(
                f"{d}: {why}" for d, why in outcome["failed"].items()))
        return {"enabled": True, "removed": outcome["removed"], "objects": outcome["objects"],
                "bytes": outcome["bytes"], "kept": sorted(d for d, v in outcome["decisions"].items() if v["keep"])}


class ResumeIngestionOperator(_RagvaultOperator):
    """Put ingestion back exactly as it was before the pause, then release the lock (a teardown: it also runs
    after failures).

    Ingestion comes first and needs nothing but Airflow: the state saved by the pause (an Airflow Variable)
    says which run paused it, so ingestion is resumed even when MinIO cannot be reached. Ingestion paused by
    another run is left to that run. Then the lock is released, retried while the bucket is unreachable; if it
    still cannot be, the task fails saying so, and the lock frees itself when its lease runs out.

    :param release_attempts: tries to release the lock (the waits between them double from 2 s).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fadbd8"

    def __init__(self, *, release_attempts: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release_attempts = release_attempts

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        owner = context["dag_run"].run_id
        control = IngestionControl(settings, self.log)
        state = control.saved_state()
        if state is not None and state.get("owner") not in (None, owner):
            self.log.warning("ingestion was paused by run %s: it is that run's to resume, left alone", state["owner"])
            result: dict[str, Any] = {"resumed": False, "paused_by": state["owner"]}
        else:
            result = control.resume()
        repo = self.repository(settings, check=False)
        lock = self.lock(context, settings, repo)
        try:
            result["lock_released"] = lock.release(attempts=self.release_attempts)
        except Exception as exc:
            raise RepositoryError(
                f"ingestion was {'resumed' if result.get('resumed') else 'left as it was'}, but the lock {lock.url} "
                f"could not be released: {type(exc).__name__}: {exc}. It frees itself when its lease runs out "
                f"(lock.lease_seconds = {lock.lease:.0f}), and the next run takes it over then") from exc
        return result


# -- restore ------------------------------------------------------------------------------------------


def human_size(size: float) -> str:
    """A byte count for people: 512 B, 3.4 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


class _RestoreOperator(_RagvaultOperator):
    """Common ground of the restore operators: the backup ``resolve_backup`` found, and the settings."""

    template_fields: Sequence[str] = ("resolved", "config_path")
    ui_color = "#fdebd0"

    def __init__(self, *, resolved: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resolved = resolved

    def backup(self, settings: Settings) -> tuple[BackupRepository, dict[str, Any], list[str]]:
        """The repository, the manifest of the backup being restored, and the selected components."""
        if not self.resolved or "date" not in self.resolved:
            raise ValueError("no resolved backup: this task must run after resolve_backup")
        repo = self.repository(settings)
        manifest = repo.read_manifest(self.resolved["date"])
        if manifest is None:
            raise RepositoryError(f"the manifest of {self.resolved['date']} disappeared from s3://{repo.bucket}")
        return repo, manifest, list(self.resolved["components"])

    def context(self, repo, manifest, component: str, settings: Settings) -> RestoreContext:
        return RestoreContext(repo=repo, manifest=manifest, component=component, settings=settings, log=self.log)

    @staticmethod
    def gathered(context, tasks: Mapping[str, str], component: str) -> Any:
        """What the task of ``component`` in ``tasks`` (``{component: task_id}``) returned; None when it has no
        such task or the task left nothing (skipped, failed)."""
        return context["ti"].xcom_pull(task_ids=tasks[component]) if component in tasks else None


class ResolveBackupOperator(_RagvaultOperator):
    """Find the complete backup the restore form asks for, and check the selection against it.

    :param backup_date: ``latest`` (the newest date with a manifest) or ``YYYY-MM-DD`` (templated).
    :param components: the components to restore (templated; names from ``ragvault.components.REGISTRY``).
    :param dry_run: only verify and print the plan (templated).
    :param confirm: the backup date typed again, needed to overwrite targets that hold data (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("backup_date", "components", "dry_run", "confirm", "config_path")
    ui_color = "#e8f4fd"

    def __init__(self, *, backup_date: str = "{{ params.backup_date }}",
                 components: Any = "{{ params.components }}", dry_run: Any = "{{ params.dry_run }}",
                 confirm: Any = "{{ params.confirm }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_date, self.components, self.dry_run, self.confirm = backup_date, components, dry_run, confirm

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        repo = self.repository(settings)
        wanted = str(self.backup_date or "latest").strip()
        catalog = repo.catalog()
        complete = [entry["date"] for entry in catalog]
        if wanted == "latest":
            if not complete:
                raise RepositoryError(f"s3://{repo.bucket} holds no complete backup (no date with a manifest)")
            # The newest captured state, which is not always the newest date: a backfilled day holds only
            # interval data, and one backfilled with backfill.state_parts: capture holds a later state.
            date = repo.latest_state(catalog) or complete[-1]
            self.log.info("latest: the backup of %s holds the most recently captured state", date)
        else:
            date = check_date(wanted)
            if date not in complete:
                started = any(True for _ in repo.list_keys(f"{date}/"))
                recent = ", ".join(complete[-5:]) or "none"
                raise RepositoryError(
                    f"backup {date} is incomplete (it has no manifest.json: its run failed or is still going) and "
                    f"cannot be restored; complete backups: {recent}" if started else
                    f"there is no backup for {date} in s3://{repo.bucket}; complete backups: {recent}")
        manifest = repo.read_manifest(date)
        selected = self.components if isinstance(self.components, list | tuple) else [self.components]
        unknown = [c for c in selected if c not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown component(s) {', '.join(map(str, unknown))}; known: {', '.join(REGISTRY)}")
        sections = manifest["components"]
        missing = [c for c in selected if c not in sections or sections[c].get("mode") == SKIPPED]
        for component in missing:
            why = sections.get(component, {}).get("reason") or "not backed up by that run"
            self.log.warning("%s is not in the backup of %s (%s): skipped", component, date, why)
        if manifest.get("state", {}).get("captured") is False:
            self.log.warning("the backup of %s holds no state captured for that day: %s", date,
                             manifest["state"].get("reason"))
        chosen = [c for c in RESTORE_ORDER if c in selected and c not in missing]
        if not chosen:
            raise ValueError(f"none of the selected components ({', '.join(selected)}) is in the backup of {date}")
        self.log.info("restoring the backup of %s (run %s, captured from %s): %s", date,
                      manifest["run"].get("run_id"), min(manifest["components"][c]["captured_at"] or "?"
                                                         for c in chosen), ", ".join(chosen))
        return {"date": date, "components": chosen, "dry_run": _truthy(self.dry_run),
                "confirm": str(self.confirm or "").strip()}


def verify_restored(repo: BackupRepository, manifest: dict[str, Any], name: str, settings: Settings,
                    log) -> dict[str, Any]:
    """Compare one restored component with the backup: its row of the verification table (``component``,
    ``items``, ``equal``) and every difference found (``problems``)."""
    component = get_component(name)(settings)
    ctx = RestoreContext(repo=repo, manifest=manifest, component=name, settings=settings, log=log)
    items = component.restore_items(ctx.section)
    equal, problems = 0, []
    for item in items:
        try:
            found = component.verify_restore(ctx, item)
        except Exception as exc:  # reported as a difference, with the others
            found = [f"could not verify: {type(exc).__name__}: {exc}"]
        problems += [f"{name}[{item}]: {p}" for p in found]
        equal += not found
    return {"row": {"component": name, "items": len(items), "equal": equal}, "problems": problems}


def check_targets(repo: BackupRepository, manifest: dict[str, Any], name: str, settings: Settings,
                  log) -> dict[str, Any]:
    """Inspect one component's targets and run its pre-flight checks, item by item, writing nothing: the plan's
    ``lines``, the ``overwrites`` (targets that hold data) and every ``problems`` found."""
    component = get_component(name)(settings)
    ctx = RestoreContext(repo=repo, manifest=manifest, component=name, settings=settings, log=log)
    lines, overwrites, problems = [], [], []
    for item in component.restore_items(ctx.section):
        entry = ctx.item(item)
        size = sum(a["size"] for a in ctx.artifacts(item).values())
        counts = ", ".join(f"{k}={v}" for k, v in entry["counts"].items())
        try:
            target = component.inspect_target(ctx, item)
            found = component.preflight(ctx, item)
        except Exception as exc:  # every item is checked; the restore stops in plan_restore on any problem
            problems.append(f"{name}[{item}]: could not check the target{_at(component)}: "
                            f"{type(exc).__name__}: {exc}")
            continue
        problems += [f"{name}[{item}]: {problem}" for problem in found]
        verdict = "OVERWRITE" if target["holds_data"] else "write"
        lines.append(f"{name:10} {item:30} {counts} ({human_size(size)}) -> {verdict}: {target['what']}")
        if target["holds_data"]:
            overwrites.append(f"{name}[{item}] ({target['what']})")
    return {"lines": lines, "overwrites": overwrites, "problems": problems}


def verification_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'component':10} {'items backed up':>15} {'items restored equal':>20}   equal?"]
    lines += [f"{r['component']:10} {r['items']:>15} {r['equal']:>20}   {'yes' if r['equal'] == r['items'] else 'NO'}"
              for r in rows]
    return "\n".join(lines)


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


class VerifyBackupOperator(_RestoreOperator):
    """Download every selected artifact and check it against the manifest before anything is written.

    Size and SHA-256 of the stored bytes; encrypted artifacts decrypted; the original bytes' SHA-256 where
    the manifest has it. Any missing object or mismatch fails the restore here, naming each problem.

    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def execute(self, context) -> dict[str, Any]:
        from ragvault.crypto import load_cipher

        settings = self.settings()
        repo, manifest, components = self.backup(settings)
        artifacts = [a for a in manifest["artifacts"] if a["component"] in components]
        cipher = load_cipher(settings) if any(a.get("encryption") for a in artifacts) else None
        with self.lock(context, settings, repo).keep_alive():
            problems = [p for artifact in artifacts for p in repo.verify_artifact(artifact, cipher)]
        if problems:
            raise RepositoryError(f"backup {manifest['backup_date']} failed verification, nothing was restored: "
                                  + "; ".join(problems))
        total = sum(a["size"] for a in artifacts)
        self.log.info("verified %d artifacts (%s) of %s against the manifest", len(artifacts), human_size(total),
                      ", ".join(components))
        return {"artifacts": len(artifacts), "bytes": total}


class CheckTargetsOperator(_RestoreOperator):
    """One component's part of the plan, before anything is written: its targets inspected (reachable? holding
    data?) and its pre-flight checks run (:meth:`~ragvault.components.base.Component.preflight`: archives
    safe to extract, versions the target can take, room on disk...), item by item. It writes nothing and
    fails on nothing it finds: ``plan_restore`` gathers every component's findings and decides. It runs where
    the component's other tasks run (its queue), so it sees the files a restore would write.

    :param component: the component's name.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, component: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.component not in self.resolved["components"]:
            raise AirflowSkipException(f"{self.component} is not selected")
        settings = self.settings()
        repo, manifest, _ = self.backup(settings)
        with self.lock(context, settings, repo).keep_alive():
            found = check_targets(repo, manifest, self.component, settings, self.log)
        self.log.info("%s: %d item(s) checked, %d problem(s)\n%s", self.component, len(found["lines"]),
                      len(found["problems"]), "\n".join(found["lines"] + found["problems"]))
        return found


class PlanRestoreOperator(_RestoreOperator):
    """Gather every selected component's checks (``check_tasks``), say what the restore would write and what
    it would overwrite; stop unless confirmed.

    Any problem, in any component, stops the restore here, before the first write to any target, naming them
    all (a selected component whose check left no result is one). Over targets that already hold data the
    restore goes on only when ``confirm`` equals the backup date. In a dry run the plan is printed and nothing
    is written.

    :param check_tasks: ``{component: task_id}`` of the check tasks whose findings to gather.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def __init__(self, *, check_tasks: Mapping[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.check_tasks = dict(check_tasks)

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        _, manifest, components = self.backup(settings)
        date = manifest["backup_date"]
        lines, overwrites, problems = [], [], []
        for name in components:
            found = self.gathered(context, self.check_tasks, name)
            if not found:
                problems.append(f"{name}: its targets were not checked (task {self.check_tasks.get(name)} left no "
                                "result)")
                continue
            lines += found["lines"]
            overwrites += found["overwrites"]
            problems += found["problems"]
        self.log.info("restore plan for the backup of %s:\n%s", date, "\n".join(lines))
        if problems:
            raise ComponentError("restore", None, f"the pre-flight checks of the backup of {date} failed; nothing "
                                 "was written to any target:\n  " + "\n  ".join(problems))
        self.log.info("pre-flight: every check of %s passed (%d items); no target has been written yet",
                      ", ".join(components), len(lines))
        if self.resolved["dry_run"]:
            self.log.info("dry run: nothing is written")
        elif overwrites and self.resolved["confirm"] != date:
            raise PermissionError(
                f"the restore would overwrite data: {'; '.join(overwrites)}. Nothing was written. To go ahead, "
                f"trigger the restore again with confirm = {date}")
        return {"plan": lines, "overwrites": overwrites, "dry_run": self.resolved["dry_run"]}


class ListRestoreItemsOperator(_RestoreOperator):
    """The items of one component to restore (none when it is not selected, or in a dry run).

    :param component: the component's name.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, component: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.component = component

    def execute(self, context) -> list[str]:
        if self.component not in self.resolved["components"]:
            self.log.info("%s is not selected: nothing to restore", self.component)
            return []
        if self.resolved["dry_run"]:
            self.log.info("dry run: nothing to restore")
            return []
        settings = self.settings()
        repo, manifest, _ = self.backup(settings)
        ctx = self.context(repo, manifest, self.component, settings)
        items = get_component(self.component)(settings).restore_items(ctx.section)
        self.log.info("%s: %d item(s) to restore: %s", self.component, len(items), ", ".join(items) or "none")
        return items


class RestoreComponentOperator(_RestoreOperator):
    """Restore one item of a component (or the whole component) from the verified backup.

    :param component: the component's name.
    :param item: the item to restore; ``None`` for components restored by a single task.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("item", "resolved", "config_path")
    ui_color = "#d5f5e3"

    def __init__(self, *, component: str, item: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.component, self.item = component, item

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.component not in self.resolved["components"] or self.resolved["dry_run"]:
            raise AirflowSkipException(f"{self.component}: not selected, or a dry run")
        settings = self.settings()
        repo, manifest, _ = self.backup(settings)
        ctx = self.context(repo, manifest, self.component, settings)
        component = get_component(self.component)(settings)
        items = [self.item] if self.item is not None else component.restore_items(ctx.section)
        restored = {}
        with self.lock(context, settings, repo).keep_alive():
            restored = self._restore(component, ctx, items)
        return restored

    def _restore(self, component, ctx: RestoreContext, items: list[str]) -> dict[str, Any]:
        restored = {}
        for item in items:
            try:
                restored[item] = component.restore(ctx, item)
            except Exception as exc:
                cause = exc.cause if isinstance(exc, ComponentError) else (
                    f"restore failed{_at(component)}: {type(exc).__name__}: {exc}")
                raise ComponentError(self.component, item, f"{cause}\n{self._state_left(item)}") from exc
            self.log.info("%s[%s] restored: %s", self.component, item,
                          ", ".join(f"{k}={v}" for k, v in restored[item].items()))
        return restored


    def _state_left(self, item: str) -> str:
        """What a restore that fails here has left, for the person who reads the error at 3 a.m."""
        chosen = list(self.resolved["components"])
        before = chosen[:chosen.index(self.component)] if self.component in chosen else []
        after = chosen[chosen.index(self.component) + 1:] if self.component in chosen else []
        return (f"State left by this restore: restored before this step: {', '.join(before) or 'nothing'}; "
                f"{self.component}[{item}] failed part-way and its target may hold part of the backup; not "
                f"restored: {', '.join(after) or 'nothing'}. Fix the cause and trigger the restore again (with "
                f"confirm = {self.resolved.get('date')}): every component is restored whole again.")


class VerifyComponentOperator(_RestoreOperator):
    """Compare one restored component with the backup, item by item: counts and a sample field by field. It
    fails on nothing it finds: ``verify_restore`` gathers every component's findings, prints the table and
    decides. It runs where the component's other tasks run (its queue), so it sees the files restored.

    :param component: the component's name.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f8f5"

    def __init__(self, *, component: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.component = component

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.component not in self.resolved["components"] or self.resolved["dry_run"]:
            raise AirflowSkipException(f"{self.component}: not selected, or a dry run")
        settings = self.settings()
        repo, manifest, _ = self.backup(settings)
        found = verify_restored(repo, manifest, self.component, settings, self.log)
        row = found["row"]
        self.log.info("%s: %d of %d item(s) equal to the backup%s", self.component, row["equal"], row["items"],
                      "".join(f"\n  {p}" for p in found["problems"]))
        return found


class VerifyRestoreOperator(_RestoreOperator):
    """Gather every restored component's verification (``verify_tasks``): counts per item and a sample field by
    field, compared with the manifest.

    Prints a table (component, items backed up, items restored, equal?), pushes it to the Pushgateway and fails
    on any difference (a selected component whose verification left no result is one).

    :param verify_tasks: ``{component: task_id}`` of the verification tasks whose findings to gather.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def __init__(self, *, verify_tasks: Mapping[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)
        self.verify_tasks = dict(verify_tasks)

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.resolved["dry_run"]:
            raise AirflowSkipException("dry run: nothing was restored")
        settings = self.settings()
        _, manifest, components = self.backup(settings)
        rows, problems = [], []
        for name in components:
            found = self.gathered(context, self.verify_tasks, name)
            if not found:
                rows.append({"component": name, "items": len(manifest["components"][name].get("items") or {}),
                             "equal": 0})
                problems.append(f"{name}: not verified (task {self.verify_tasks.get(name)} left no result)")
                continue
            rows.append(found["row"])
            problems += found["problems"]
        self.log.info("post-restore verification\n%s", verification_table(rows))
        from ragvault.metrics import push_restore

        push_restore(settings, manifest["backup_date"], rows, not problems)
        if problems:
            raise ComponentError("restore", None, "the restored state differs from the backup:\n  "
                                 + "\n  ".join(problems))
        return {"rows": rows, "equal": True}


# -- restore drills -------------------------------------------------------------------------------------


class DrillComponentOperator(_RestoreOperator):
    """Drill one component of the resolved backup: restore it into scratch targets, compare, clean up (see
    ``ragvault.drill``). Its result goes to XCom even when it fails, for ``record_drill``.

    :param component: the component's name.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("resolved", "config_path")
    ui_color = "#fcf3cf"

    def __init__(self, *, component: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from ragvault.drill import DrillSettings, drill_component

        if self.component not in self.resolved["components"]:
            raise AirflowSkipException(f"{self.component} is not in the backup of {self.resolved['date']}")
        settings = self.settings()
        repo, manifest, _ = self.backup(settings)
        try:
            result = drill_component(repo, manifest, self.component, settings, DrillSettings.from_settings(settings),
                                     log=self.log)
        except Exception as exc:
            result = {"component": self.component, "how": "-", "items": 0, "equal": 0, "seconds": 0,
                      "problems": [f"{self.component}: {type(exc).__name__}: {exc}"]}
            context["ti"].xcom_push(key="return_value", value=result)
            raise
        if result["problems"]:
            context["ti"].xcom_push(key="return_value", value=result)
            raise ComponentError(self.component, None, "what the drill restored differs from the backup:\n  "
                                 + "\n  ".join(result["problems"]))
        return result


class CleanScratchOperator(_RestoreOperator):
    """The drill's teardown: empty the scratch servers of what the drill restores there, whatever happened (a
    drill task killed before its own clean-up leaves nothing behind either).

    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)

    def execute(self, context) -> list[str]:
        from ragvault.drill import clean_scratch

        if not self.resolved or "date" not in self.resolved:
            self.log.info("no backup was resolved: nothing was restored into the scratch servers")
            return []
        settings = self.settings()
        _, manifest, components = self.backup(settings)
        cleaned = clean_scratch(settings, manifest, components)
        self.log.info("scratch servers emptied of the drill's data: %s", ", ".join(cleaned) or "none")
        return cleaned


class RecordDrillOperator(_RestoreOperator):
    """Gather the components' drill results, write them beside the manifest (``<date>/drill.json``), push them to
    the Pushgateway, and fail when any component's drill failed (it runs whatever they did).

    :param drill_tasks: ``{component: task_id}`` of the drill tasks whose results to gather.
    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def __init__(self, *, drill_tasks: Mapping[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.drill_tasks = dict(drill_tasks)

    def execute(self, context) -> dict[str, Any]:
        from ragvault.drill import record_drill
        from ragvault.metrics import push_drill

        if not self.resolved or "date" not in self.resolved:
            raise ValueError("no backup was resolved: nothing was drilled")
        settings = self.settings()
        repo = self.repository(settings)
        results = []
        for component in self.drill_tasks:
            value = self.gathered(context, self.drill_tasks, component)
            if value:
                results.append(value)
            elif component in self.resolved["components"]:
                results.append({"component": component, "how": "-", "items": 0, "equal": 0, "seconds": 0,
                                "problems": [f"{component}: its drill task ended without a result"]})
        outcome = record_drill(repo, self.resolved["date"], results, context["dag_run"].run_id)
        push_drill(settings, outcome)
        lines = [f"{'component':10} {'how':16} {'items':>5} {'equal':>5}   result"]
        lines += [f"{r['component']:10} {r['how']:16} {r['items']:>5} {r['equal']:>5}   "
                  f"{'ok' if not r['problems'] else 'DIFFERS'}" for r in results]
        self.log.info("restore drill of the backup of %s\n%s", self.resolved["date"], "\n".join(lines))
        if not outcome["passed"]:
            raise ComponentError("drill", None, f"the restore drill of {self.resolved['date']} failed:\n  "
                                 + "\n  ".join(p for r in results for p in r["problems"]))
        return {"date": outcome["date"], "passed": True, "components": len(results)}
