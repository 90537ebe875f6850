"""The operators the DAGs are wired from. Each is thin: it reads the settings, builds what it needs in
``execute()`` and hands the work to a component, the repository or the ingestion control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, TriggerRule

from ragvault.components import REGISTRY, RESTORE_ORDER, ComponentError, get_component
from ragvault.components.base import BackupContext, RestoreContext
from ragvault.config import Settings, load_settings
from ragvault.ingestion import IngestionControl
from ragvault.plan import CAPTURE, INTERVAL_ONLY, SKIPPED, BackupPlan, kept_sections, make_plan, state_summary
from ragvault.repository import BackupRepository, ItemResult, RepositoryError, check_date


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
        "data_interval_start": iso(context.get("data_interval_start")),
        "data_interval_end": iso(context.get("data_interval_end")),
    }


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

    def repository(self, settings: Settings) -> BackupRepository:
        repo = BackupRepository.from_connection(settings.conn_id("s3"), settings.bucket)
        repo.check_bucket()
        return repo


class _BackupOperator(_RagvaultOperator):
    """Common ground of the backup operators: the run's date and the plan ``plan_backup`` made for it.

    :param backup_date: the backup's date folder, ``YYYY-MM-DD`` (templated; default the run's ``ds``).
    :param plan_task_id: the task whose return value is the run's :class:`~ragvault.plan.BackupPlan`; when
        it has none (the operator used on its own), the plan is made here the same way.
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("backup_date", "config_path")

    def __init__(self, *, backup_date: str = "{{ ds }}", plan_task_id: str | None = "plan_backup",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_date = backup_date
        self.plan_task_id = plan_task_id

    def plan(self, context, settings: Settings, repo: BackupRepository | None = None) -> BackupPlan:
        """The run's plan: ``plan_backup``'s, or one made here (on ``repo``, or a repository built for it)."""
        made = context["ti"].xcom_pull(task_ids=self.plan_task_id) if self.plan_task_id else None
        if made:
            return BackupPlan.from_dict(made)
        return make_plan(repo or self.repository(settings), settings, check_date(self.backup_date),
                         context["dag_run"].run_id)


class PlanBackupOperator(_BackupOperator):
    """Decide what this run backs up, per component: everything, interval data only, or nothing (kept or
    skipped), from the complete backups already in the bucket and ``backfill.state_parts``; see
    ``ragvault.plan``. Runs after ``pause_ingestion``, which holds the bucket's lock.

    :param backup_date: the backup's date folder (templated; default the run's ``ds``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("plan_task_id", None)
        super().__init__(**kwargs)

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        repo = self.repository(settings)
        plan = make_plan(repo, settings, check_date(self.backup_date), context["dag_run"].run_id)
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
    :param backup_date: the backup's date folder (templated; default the run's ``ds``).
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
    :param backup_date: the backup's date folder, ``YYYY-MM-DD`` (templated; default the run's ``ds``).
    :param plan_task_id: the task whose return value is the run's plan (default ``plan_backup``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    template_fields: Sequence[str] = ("item", "backup_date", "config_path")
    ui_color = "#d5f5e3"

    def __init__(self, *, component: str, item: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.component = component
        self.item = item

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        settings = self.settings()
        date = check_date(self.backup_date)
        repo = self.repository(settings)
        plan = self.plan(context, settings, repo)
        mode = plan.mode(self.component)
        if mode not in (CAPTURE, INTERVAL_ONLY):
            raise AirflowSkipException(f"{self.component} is {mode} in this run: "
                                       f"{plan.components.get(self.component, {}).get('reason', plan.reason)}")
        ctx = BackupContext(repo=repo, date=date, component=self.component, run=run_info(context), log=self.log,
                            mode=mode, staging=plan.staging)
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


class CommitManifestOperator(_BackupOperator):
    """Close a backup: put every artifact in place, write ``manifest.json`` last, prune leftovers.

    The manifest records, per component, the plan's mode and reason, and its ``state`` block says whether
    and when the state was captured (see ``ragvault.plan``). Components the plan keeps are carried over
    from the date's previous manifest with their objects.

    :param results_from: component name -> task id of its backup task (mapped or not) whose return values
        are the :class:`~ragvault.repository.ItemResult` s to record.
    :param backup_date: the backup's date folder (templated; default the run's ``ds``).
    :param plan_task_id: the task whose return value is the run's plan (default ``plan_backup``).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fdebd0"

    def __init__(self, *, results_from: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results_from = dict(results_from)

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        date = check_date(self.backup_date)
        repo = self.repository(settings)
        plan = self.plan(context, settings, repo)
        results: list[ItemResult] = []
        for component, task_id in self.results_from.items():
            values = context["ti"].xcom_pull(task_ids=[task_id])
            found = [ItemResult.from_dict(v) for v in values if v]
            if not found:
                self.log.info("%s: nothing was backed up (no items)", component)
            results += found
        manifest = repo.build_manifest(date, results, run_info(context))
        sections, kept = kept_sections(plan, repo.previous_manifest(date, plan.staging) if plan.staging else None)
        manifest["components"].update(sections)
        manifest["artifacts"] += kept
        for component in self.results_from:
            section = manifest["components"].setdefault(
                component, {"source_version": None, "captured_at": None, "counts": {}, "items": {}})
            decision = plan.components.get(component, {"mode": plan.mode(component), "reason": plan.reason})
            section.setdefault("mode", decision["mode"])
            section.setdefault("reason", decision["reason"])
        manifest["state"] = state_summary(plan, manifest)
        key = repo.commit_manifest(manifest)
        total = sum(a["size"] for a in manifest["artifacts"])
        self.log.info("state: %s", plan.reason)
        for name, comp in manifest["components"].items():
            self.log.info("%-10s %-8s %s", name, comp["mode"],
                          ", ".join(f"{k}={v}" for k, v in comp["counts"].items()) or "empty")
        self.log.info("backup %s complete: %d artifacts, %d bytes, s3://%s/%s",
                      date, len(manifest["artifacts"]), total, repo.bucket, key)
        return {"manifest": key, "artifacts": len(manifest["artifacts"]), "bytes": total}


class PauseIngestionOperator(_RagvaultOperator):
    """Take the bucket's lock, then pause ingestion (configured DAGs and/or flags); see ``ragvault.ingestion``.

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fadbd8"

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        owner = context["dag_run"].run_id
        repo = self.repository(settings)
        lock = settings.data["lock"]
        repo.acquire_lock(owner, stale_after=float(lock["stale_after_seconds"]), wait=float(lock["wait_seconds"]))
        try:
            return IngestionControl(settings, self.log).pause(owner=owner)
        except BaseException:
            repo.release_lock(owner)  # the pause put everything back; its teardown will not run
            raise


class ResumeIngestionOperator(_RagvaultOperator):
    """Put ingestion back exactly as it was before the pause, then release the lock (a teardown: it also runs
    after failures). A run that does not hold the lock leaves ingestion to the run that does.

    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    ui_color = "#fadbd8"

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        owner = context["dag_run"].run_id
        repo = self.repository(settings)
        held = repo.lock_holder()
        if held is not None and held[0].get("owner") != owner:
            self.log.warning("the lock is held by %s: ingestion is that run's to resume, left alone", held[0]["owner"])
            return {"resumed": False, "lock_holder": held[0]["owner"]}
        result = IngestionControl(settings, self.log).resume()
        repo.release_lock(owner)
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


def verify_restored(repo: BackupRepository, manifest: dict[str, Any], components: list[str], settings: Settings,
                    log) -> tuple[list[dict[str, Any]], list[str]]:
    """Compare each restored component with the backup: one row per component, and every difference found."""
    rows, problems = [], []
    for name in components:
        component = get_component(name)(settings)
        ctx = RestoreContext(repo=repo, manifest=manifest, component=name, settings=settings, log=log)
        items = component.restore_items(ctx.section)
        equal = 0
        for item in items:
            try:
                found = component.verify_restore(ctx, item)
            except Exception as exc:  # reported as a difference, with the others
                found = [f"could not verify: {type(exc).__name__}: {exc}"]
            problems += [f"{name}[{item}]: {p}" for p in found]
            equal += not found
        rows.append({"component": name, "items": len(items), "equal": equal})
    return rows, problems


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
        problems = [p for artifact in artifacts for p in repo.verify_artifact(artifact, cipher)]
        if problems:
            raise RepositoryError(f"backup {manifest['backup_date']} failed verification, nothing was restored: "
                                  + "; ".join(problems))
        total = sum(a["size"] for a in artifacts)
        self.log.info("verified %d artifacts (%s) of %s against the manifest", len(artifacts), human_size(total),
                      ", ".join(components))
        return {"artifacts": len(artifacts), "bytes": total}


class PlanRestoreOperator(_RestoreOperator):
    """Say what the restore would write and what it would overwrite; stop unless confirmed.

    Over targets that already hold data the restore goes on only when ``confirm`` equals the backup date.
    In a dry run the plan is printed and nothing is written.

    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def execute(self, context) -> dict[str, Any]:
        settings = self.settings()
        repo, manifest, components = self.backup(settings)
        date = manifest["backup_date"]
        lines, overwrites = [], []
        for name in components:
            component = get_component(name)(settings)
            ctx = self.context(repo, manifest, name, settings)
            for item in component.restore_items(ctx.section):
                entry = ctx.item(item)
                size = sum(a["size"] for a in ctx.artifacts(item).values())
                counts = ", ".join(f"{k}={v}" for k, v in entry["counts"].items())
                try:
                    target = component.inspect_target(ctx, item)
                except Exception as exc:
                    raise ComponentError(name, item, f"could not inspect the target{_at(component)}: "
                                         f"{type(exc).__name__}: {exc}") from exc
                verdict = "OVERWRITE" if target["holds_data"] else "write"
                lines.append(f"{name:10} {item:30} {counts} ({human_size(size)}) -> {verdict}: {target['what']}")
                if target["holds_data"]:
                    overwrites.append(f"{name}[{item}] ({target['what']})")
        self.log.info("restore plan for the backup of %s:\n%s", date, "\n".join(lines))
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
        for item in items:
            try:
                restored[item] = component.restore(ctx, item)
            except ComponentError:
                raise
            except Exception as exc:
                raise ComponentError(self.component, item,
                                     f"restore failed{_at(component)}: {type(exc).__name__}: {exc}") from exc
            self.log.info("%s[%s] restored: %s", self.component, item,
                          ", ".join(f"{k}={v}" for k, v in restored[item].items()))
        return restored


class VerifyRestoreOperator(_RestoreOperator):
    """Compare the restored stack with the manifest: counts per item and a sample field by field.

    Prints a table (component, items backed up, items restored, equal?) and fails on any difference.

    :param resolved: ``resolve_backup``'s result (templated).
    :param config_path: the settings file; default ``$RAGVAULT_CONFIG`` or ``include/ragvault.yaml``.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.NONE_FAILED)
        super().__init__(**kwargs)

    def execute(self, context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.resolved["dry_run"]:
            raise AirflowSkipException("dry run: nothing was restored")
        settings = self.settings()
        repo, manifest, components = self.backup(settings)
        rows, problems = verify_restored(repo, manifest, components, settings, self.log)
        self.log.info("post-restore verification\n%s", verification_table(rows))
        if problems:
            raise ComponentError("restore", None, "the restored state differs from the backup:\n  "
                                 + "\n  ".join(problems))
        return {"rows": rows, "equal": True}
