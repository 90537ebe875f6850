"""
### intelligence_backup

Nightly backup of the whole intelligence of the AI/RAG stack to `s3://<bucket>/<YYYY-MM-DD>/<component>/`.

1. **pause_ingestion** (setup): takes the bucket's lock, pauses the configured ingestion DAGs and sets the
   ingestion flag.
2. **plan_backup**: decides what this run captures. A run for a day older than a complete backup already
   in the bucket (a backfill) cannot capture that day's state: it backs up only the interval data of its
   data interval (LangSmith runs, Prometheus blocks, Mongo interval collections) and its manifest says so
   (`backfill.state_parts` in the settings).
3. One task group per component, side by side while ingestion is paused, in the seed's order: qdrant (one
   task per collection), mongodb (one task per database), redis, langchain, langsmith, gpt, infra,
   prometheus, grafana.
4. **commit_manifest**: puts every object in place, checks it and writes `<date>/manifest.json` last, with
   sizes, sha256, ETags, counts, each component's mode and when its state was captured. A date without a
   manifest is incomplete and is never offered for restore; a rerun of a date replaces its backup only here.
5. **apply_retention**: removes the dates the retention rules no longer keep (`retention` in the settings; off
   until enabled), never the one just committed.
6. **resume_ingestion** (teardown): always runs, puts ingestion back exactly as it was, releases the lock.

A failed component fails its task with a message naming component, item and cause; no manifest is
written for that run. Configuration: `include/ragvault.yaml` (or `$RAGVAULT_CONFIG`). Restore with the
`intelligence_restore` DAG.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, TaskGroup, TriggerRule

from ragvault.components import REGISTRY
from ragvault.config import load_settings
from ragvault.operators import (
    ApplyRetentionOperator,
    BackupComponentOperator,
    CommitManifestOperator,
    ListItemsOperator,
    PauseIngestionOperator,
    PlanBackupOperator,
    ResumeIngestionOperator,
)

settings = load_settings()
schedule = settings.schedule

with DAG(
    dag_id="intelligence_backup",
    description="Back up vectors, documents, caches, configs, traces, metrics and dashboards to MinIO",
    schedule=CronTriggerTimetable(schedule["cron"], timezone=schedule["timezone"],
                                  interval=pendulum.duration(days=1)),
    start_date=pendulum.parse(schedule["start_date"], tz=schedule["timezone"]),
    catchup=False,
    max_active_runs=1,
    default_args=settings.default_args(),
    doc_md=__doc__,
    tags=["ragvault", "backup"],
) as dag:
    pause = PauseIngestionOperator(task_id="pause_ingestion")
    plan = PlanBackupOperator(task_id="plan_backup")

    groups, results_from = [], {}
    for name, component in REGISTRY.items():
        if not settings.enabled(name):
            continue
        with TaskGroup(group_id=name, tooltip=component.title) as group:
            where = settings.task_args(name)  # the component's queue, if its settings name one
            if component.item_noun:
                items = ListItemsOperator(task_id=f"list_{component.item_noun}s", component=name, **where)
                backup = BackupComponentOperator.partial(
                    task_id=f"backup_{component.item_noun}",
                    component=name,
                    map_index_template="{{ task.item }}",
                    **where,
                ).expand(item=items.output)
            else:
                backup = BackupComponentOperator(task_id="backup", component=name, **where)
        groups.append(group)
        results_from[name] = backup.task_id

    commit = CommitManifestOperator(
        task_id="commit_manifest", results_from=results_from, trigger_rule=TriggerRule.NONE_FAILED
    )
    retention = ApplyRetentionOperator(task_id="apply_retention")
    resume = ResumeIngestionOperator(task_id="resume_ingestion")

    pause >> plan >> groups >> commit >> retention >> resume.as_teardown(setups=pause)
