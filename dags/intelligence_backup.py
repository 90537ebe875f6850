"""
### intelligence_backup

Nightly backup of the whole intelligence of the AI/RAG stack to `s3://<bucket>/<YYYY-MM-DD>/<component>/`.

1. **pause_ingestion** (setup): pauses the configured ingestion DAGs and sets the ingestion flag.
2. One task group per component, side by side while ingestion is paused: **qdrant** (one task per
   collection: snapshot, config + aliases, points export), **mongodb** (one task per database: mongodump
   layout + Extended JSON export), **redis** (`dump.rdb` through replication, AOF archive).
3. **commit_manifest**: checks every object and writes `<date>/manifest.json` last, with sizes, sha256
   and counts. A date without a manifest is incomplete and is never offered for restore.
4. **resume_ingestion** (teardown): always runs, and puts ingestion back exactly as it was.

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
    BackupComponentOperator,
    CommitManifestOperator,
    ListItemsOperator,
    PauseIngestionOperator,
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

    groups, results_from = [], {}
    for name, component in REGISTRY.items():
        if not settings.enabled(name):
            continue
        with TaskGroup(group_id=name, tooltip=component.title) as group:
            if component.item_noun:
                items = ListItemsOperator(task_id=f"list_{component.item_noun}s", component=name)
                backup = BackupComponentOperator.partial(
                    task_id=f"backup_{component.item_noun}",
                    component=name,
                    map_index_template="{{ task.item }}",
                ).expand(item=items.output)
            else:
                backup = BackupComponentOperator(task_id="backup", component=name)
        groups.append(group)
        results_from[name] = backup.task_id

    commit = CommitManifestOperator(
        task_id="commit_manifest", results_from=results_from, trigger_rule=TriggerRule.NONE_FAILED
    )
    resume = ResumeIngestionOperator(task_id="resume_ingestion")

    pause >> groups >> commit >> resume.as_teardown(setups=pause)
