"""
### intelligence_restore

Brings the stack back from a backup made by `intelligence_backup`, in the seed's order. Trigger it from the
Airflow UI (**Trigger DAG** opens the form) or with `airflow dags trigger intelligence_restore --conf '{...}'`.

| field | meaning |
|---|---|
| `backup_date` | `latest` (the complete backup whose state was captured last) or a `YYYY-MM-DD` date |
| `components` | which components to restore (default: all) |
| `dry_run` | verify the backup and print the plan; write nothing |
| `confirm` | empty for a dry run or blank targets; to restore over targets that already hold data, the backup date |

1. **pause_ingestion** (setup), **resolve_backup**: finds the complete backup. A backfilled date holds only
   that day's interval data (LangSmith runs, Prometheus blocks, Mongo interval collections): its other
   components are skipped, and the log says so.
2. **verify_backup**: downloads every selected artifact and checks size, SHA-256 and decryption against the
   manifest. A missing object or a mismatch fails here, before anything is written.
3. **<component>.check**, side by side: each component inspects its targets and runs its pre-flight checks,
   writing nothing; **plan_restore** gathers them, prints what will be written and what overwritten, stops on
   any problem, and unless `confirm` is set when targets hold data.
4. One task group per component, one after the other: Qdrant, MongoDB, Redis, then configs, prompts, metrics,
   dashboards, infra; each restores its items, then **<component>.verify** compares them with the backup.
5. **verify_restore**: gathers the verifications (counts and a sample, field by field), prints the table and
   fails on any difference.
6. **resume_ingestion** (teardown): always runs.

Every task of a component (check, restore, verify) runs on the component's queue when its settings name one
(`components.<name>.queue`): on a worker that reaches its files.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, TaskGroup

from ragvault.components import REGISTRY, RESTORE_ORDER
from ragvault.config import load_settings
from ragvault.operators import (
    CheckTargetsOperator,
    ListRestoreItemsOperator,
    PauseIngestionOperator,
    PlanRestoreOperator,
    ResolveBackupOperator,
    RestoreComponentOperator,
    ResumeIngestionOperator,
    VerifyBackupOperator,
    VerifyComponentOperator,
    VerifyRestoreOperator,
)

settings = load_settings()
RESOLVED = "{{ ti.xcom_pull(task_ids='resolve_backup') }}"

with DAG(
    dag_id="intelligence_restore",
    description="Restore vectors, documents, caches, configs, traces, metrics and dashboards from a backup",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # no schedule: it runs only when triggered, so it is active from the start (a paused DAG's triggered runs
    # would wait in the queue until someone unpauses it)
    is_paused_upon_creation=False,
    default_args={**settings.default_args(), "retries": 0},
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["ragvault", "restore"],
    params={
        "backup_date": Param("latest", type="string",
                             pattern=r"^(latest|\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))$",
                             title="Backup date",
                             description="latest (the backup with the most recently captured state), or the YYYY-MM-DD "
                                         "date of a complete backup"),
        # "examples" on an array makes the trigger form a multi-select of the nine
        "components": Param(list(REGISTRY), type="array", items={"type": "string", "enum": list(REGISTRY)},
                            examples=list(REGISTRY), uniqueItems=True, minItems=1, title="Components",
                            description="the components to restore (default: all of them)"),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="verify the backup and print the plan; write nothing"),
        # optional ("null" allowed): a dry run, or a restore onto blank targets, needs no confirmation;
        # plan_restore asks for it only when a restore would overwrite data
        "confirm": Param(None, type=["null", "string"], title="Confirm overwrite",
                         description="leave empty for a dry run or blank targets; to restore over targets that "
                                     "already hold data, type the backup date (YYYY-MM-DD) here"),
    },
) as dag:
    pause = PauseIngestionOperator(task_id="pause_ingestion")
    resolve = ResolveBackupOperator(task_id="resolve_backup")
    verify = VerifyBackupOperator(task_id="verify_backup", resolved=RESOLVED)
    checks, verifies, firsts, lasts = {}, {}, [], []

    for name in RESTORE_ORDER:
        component = REGISTRY[name]
        with TaskGroup(group_id=name, tooltip=component.title):
            where = settings.task_args(name)  # the component's queue, if its settings name one
            checks[name] = CheckTargetsOperator(task_id="check", component=name, resolved=RESOLVED, **where)
            if component.item_noun:
                first = ListRestoreItemsOperator(task_id=f"list_{component.item_noun}s", component=name,
                                                 resolved=RESOLVED, **where)
                restore = RestoreComponentOperator.partial(
                    task_id=f"restore_{component.item_noun}", component=name, resolved=RESOLVED,
                    map_index_template="{{ task.item }}", **where,
                ).expand(item=first.output)
            else:
                first = restore = RestoreComponentOperator(task_id="restore", component=name, resolved=RESOLVED,
                                                           **where)
            verifies[name] = VerifyComponentOperator(task_id="verify", component=name, resolved=RESOLVED, **where)
            restore >> verifies[name]
        firsts.append(first)
        lasts.append(verifies[name])

    plan = PlanRestoreOperator(task_id="plan_restore", resolved=RESOLVED,
                               check_tasks={name: task.task_id for name, task in checks.items()})
    check = VerifyRestoreOperator(task_id="verify_restore", resolved=RESOLVED,
                                  verify_tasks={name: task.task_id for name, task in verifies.items()})
    resume = ResumeIngestionOperator(task_id="resume_ingestion")

    # every component checked side by side, then the plan; the components restored one after the other
    pause >> resolve >> verify >> list(checks.values()) >> plan >> firsts[0]
    for last, first in zip(lasts, firsts[1:], strict=False):
        last >> first
    lasts[-1] >> check >> resume.as_teardown(setups=pause)
