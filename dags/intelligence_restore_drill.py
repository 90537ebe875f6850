"""
### intelligence_restore_drill

Proves, every week, that the newest complete backup restores, without touching the stack: each component is
restored into scratch targets, compared with the backup's manifest, and the scratch data removed.

Created paused: unpause it once the drill's scratch connections (`drill.connections`: `qdrant_drill`,
`mongo_drill`, `redis_drill`) reach scratch servers. A drill refuses to run when one of them reaches a production
server.

1. **resolve_backup**: the newest complete backup (`latest`).
2. One task per component, in the seed's order of the restore, each self-contained (restore, compare, clean up):
   Qdrant, MongoDB and Redis into their scratch servers; LangChain configs, the LLM's configs and prompts, and
   the infra files into a temporary folder; Prometheus blocks opened offline with `promtool tsdb`, Grafana's
   database and objects and the LangSmith runs read and counted.
3. **record_drill**: writes the result beside the manifest (`<date>/drill.json`, shown by `ragvault list`),
   pushes it to the Pushgateway (`ragvault_drill_*`), and fails if any component's drill failed.
4. **clean_scratch** (teardown): empties the scratch servers of the backup's collections, databases and keys,
   whatever happened before.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from ragvault.components import REGISTRY, RESTORE_ORDER
from ragvault.config import load_settings
from ragvault.drill import DrillSettings
from ragvault.operators import (
    CleanScratchOperator,
    DrillComponentOperator,
    RecordDrillOperator,
    ResolveBackupOperator,
)

settings = load_settings()
drill = DrillSettings.from_settings(settings)
RESOLVED = "{{ ti.xcom_pull(task_ids='resolve_backup') }}"

with DAG(
    dag_id="intelligence_restore_drill",
    description="Weekly restore drill: the newest backup restored into scratch targets and compared",
    schedule=drill.schedule,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**settings.default_args(), "retries": 0},
    render_template_as_native_obj=True,
    doc_md=__doc__,
    tags=["ragvault", "restore", "drill"],
) as dag:
    resolve = ResolveBackupOperator(task_id="resolve_backup", backup_date="latest",
                                    components=list(drill.components), dry_run=False, confirm=None)
    drills = {name: DrillComponentOperator(task_id=f"drill_{name}", component=name, resolved=RESOLVED,
                                           doc_md=f"Restore drill of {REGISTRY[name].title}",
                                           **settings.task_args(name))
              for name in RESTORE_ORDER if name in drill.components}
    record = RecordDrillOperator(task_id="record_drill", resolved=RESOLVED,
                                 drill_tasks={name: task.task_id for name, task in drills.items()})
    clean = CleanScratchOperator(task_id="clean_scratch", resolved=RESOLVED)
    resolve >> list(drills.values()) >> record >> clean.as_teardown(setups=resolve)
