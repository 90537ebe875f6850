"""Every DAG imports cleanly and keeps the shape it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from ragvault.components import REGISTRY

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "intelligence_backup" in dagbag.dags


def test_backup_dag_shape(dagbag):
    dag = dagbag.dags["intelligence_backup"]
    tasks = dag.task_dict

    pause, resume, commit = tasks["pause_ingestion"], tasks["resume_ingestion"], tasks["commit_manifest"]
    # pause first, as the setup; resume last, as its teardown; the manifest, then retention, right before resume
    assert pause.is_setup and not pause.upstream_task_ids
    assert resume.is_teardown and not resume.downstream_task_ids
    assert pause.task_id in resume.upstream_task_ids
    assert resume.upstream_task_ids == {"apply_retention", "pause_ingestion"}
    assert commit.downstream_task_ids == {"apply_retention"}
    assert tasks["apply_retention"].downstream_task_ids == {"resume_ingestion"}
    # the plan (what a run for this date can capture) right after the pause, before any component
    assert tasks["plan_backup"].upstream_task_ids == {"pause_ingestion"}

    # one task group per component, in the seed's order, each hanging from the plan
    groups = [g for g in dag.task_group.children if g in REGISTRY]
    assert groups == list(REGISTRY)
    for name, component in REGISTRY.items():
        members = [t for t in dag.tasks if t.task_id.startswith(f"{name}.")]
        assert members, name
        roots = [t for t in members if not (t.upstream_task_ids - {"plan_backup"})]
        assert roots and all(t.upstream_task_ids == {"plan_backup"} for t in roots)
        backup = tasks[commit.results_from[name]]
        assert backup.task_id in commit.upstream_task_ids
        if component.item_noun:  # one mapped task per item, named after the item in the UI
            assert backup.task_id == f"{name}.backup_{component.item_noun}"
            assert getattr(backup, "map_index_template", None) == "{{ task.item }}"
    assert set(commit.upstream_task_ids) == set(commit.results_from.values())


def test_backup_dag_scheduling(dagbag):
    dag = dagbag.dags["intelligence_backup"]
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.timetable.interval.days == 1  # the data interval is the day before the run
    assert {"ragvault", "backup"} <= set(dag.tags)
    assert dag.doc_md and "manifest" in dag.doc_md
    for task in dag.tasks:
        assert task.retries == 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id


def test_plugin_loader_does_not_shadow_packages(airflow):
    """Airflow's plugin loader must not register plugins/ragvault/**/*.py as top-level modules."""
    script = (
        "from airflow import plugins_manager; plugins_manager.ensure_plugins_loaded(); "
        "import redis, sys; assert hasattr(redis, 'Redis'), redis.__file__; "
        "assert not any(m in sys.modules for m in ('repository', 'ingestion', 'operators')), 'shadowed'; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=airflow.env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_restore_dag_shape(dagbag):
    from ragvault.components import RESTORE_ORDER

    dag = dagbag.dags["intelligence_restore"]
    tasks = dag.task_dict
    assert dag.schedule is None or dag.timetable.summary in ("None", None) or not dag.timetable.periodic
    assert dag.max_active_runs == 1
    pause, resume = tasks["pause_ingestion"], tasks["resume_ingestion"]
    assert pause.is_setup and not pause.upstream_task_ids
    assert resume.is_teardown and not resume.downstream_task_ids and "pause_ingestion" in resume.upstream_task_ids
    # verify before anything is written; every component's check side by side, then the plan
    chain = ["pause_ingestion", "resolve_backup", "verify_backup"]
    for upstream, task in zip(chain, chain[1:], strict=False):
        assert tasks[task].upstream_task_ids == {upstream}, task
    groups = [g for g in dag.task_group.children if g in REGISTRY]
    assert groups == RESTORE_ORDER
    assert RESTORE_ORDER[:3] == ["qdrant", "mongodb", "redis"] and RESTORE_ORDER[-1] == "infra"
    checks = {f"{name}.check" for name in RESTORE_ORDER}
    assert tasks["verify_backup"].downstream_task_ids == checks
    assert tasks["plan_restore"].upstream_task_ids == checks
    assert all(tasks[c].downstream_task_ids == {"plan_restore"} for c in checks)
    assert tasks["plan_restore"].check_tasks == {name: f"{name}.check" for name in RESTORE_ORDER}
    # then the components one after the other in the seed's restore order: each restores, then verifies itself
    previous = "plan_restore"
    for name in RESTORE_ORDER:
        members = [t for t in dag.tasks if t.task_id.startswith(f"{name}.") and t.task_id != f"{name}.check"]
        first = [t for t in members if not any(u.startswith(f"{name}.") for u in t.upstream_task_ids)]
        assert len(first) == 1 and first[0].upstream_task_ids == {previous}, name
        last = [t for t in members if not any(d.startswith(f"{name}.") for d in t.downstream_task_ids)]
        assert [t.task_id for t in last] == [f"{name}.verify"], name
        restores = [t for t in members if ".restore" in t.task_id]
        assert len(restores) == 1 and restores[0].downstream_task_ids == {f"{name}.verify"}, name
        previous = last[0].task_id
    assert tasks["verify_restore"].upstream_task_ids == {previous}
    assert tasks["verify_restore"].verify_tasks == {name: f"{name}.verify" for name in RESTORE_ORDER}
    assert tasks["verify_restore"].downstream_task_ids == {"resume_ingestion"}


def test_restore_form(dagbag):
    params = dagbag.dags["intelligence_restore"].params
    assert set(params) == {"backup_date", "components", "dry_run", "confirm"}
    for name in params:
        assert params.get_param(name).description, name
    assert params["backup_date"] == "latest" and params["components"] == list(REGISTRY)
    assert params["dry_run"] is False and params["confirm"] is None
    schema = params.get_param("components").schema
    assert schema["items"]["enum"] == list(REGISTRY)
    # the trigger form renders an array with "examples" as a multi-select, not a one-per-line textarea
    assert schema["examples"] == list(REGISTRY)
    # a field whose type does not allow null is required by the form: every field submits with its default
    assert "null" in params.get_param("confirm").schema["type"]
    params.validate()  # the defaults alone are a valid form


def test_restore_dag_is_active_on_creation(dagbag):
    """A DAG with no schedule that starts paused queues every triggered run until someone unpauses it."""
    assert dagbag.dags["intelligence_restore"].is_paused_upon_creation is False


def test_restore_drill_dag_shape(dagbag):
    """Weekly, paused until an operator enables it; the newest backup resolved, one self-contained drill task
    per component (in the seed's restore order, all hanging from resolve_backup), and record_drill after
    them whatever they did."""
    from airflow.sdk import TriggerRule

    from ragvault.components import RESTORE_ORDER

    dag = dagbag.dags["intelligence_restore_drill"]
    tasks = dag.task_dict
    assert dag.schedule == "0 4 * * 0" and dag.catchup is False and dag.max_active_runs == 1
    assert dag.is_paused_upon_creation in (None, True)
    resolve, record, clean = tasks["resolve_backup"], tasks["record_drill"], tasks["clean_scratch"]
    assert resolve.backup_date == "latest" and not resolve.upstream_task_ids
    drills = [f"drill_{name}" for name in RESTORE_ORDER]
    assert resolve.downstream_task_ids == set(drills) | {"clean_scratch"}
    assert set(drills) == record.upstream_task_ids
    assert record.trigger_rule == TriggerRule.ALL_DONE and record.downstream_task_ids == {"clean_scratch"}
    # the scratch servers are emptied last, whatever happened: a teardown of resolve_backup
    assert clean.is_teardown and clean.upstream_task_ids == {"record_drill", "resolve_backup"}
    assert record.drill_tasks == {name: f"drill_{name}" for name in RESTORE_ORDER}


def test_a_components_queue_reaches_every_task_of_it_in_the_three_dags(tmp_path, monkeypatch):
    """``components.<name>.queue`` puts the component's tasks (and only them) on that Celery queue: in the
    backup, the restore and the drill."""
    import yaml

    config = tmp_path / "ragvault.yaml"
    config.write_text(yaml.safe_dump({"components": {"infra": {"queue": "files-host"},
                                                     "qdrant": {"queue": " vectors "}},
                                      "drill": {"components": ["qdrant", "infra", "redis"]}}))
    monkeypatch.setenv("RAGVAULT_CONFIG", str(config))
    bag = DagBag(str(DAGS))
    assert bag.import_errors == {}
    expected = {"infra": "files-host", "qdrant": "vectors"}
    for dag_id in ("intelligence_backup", "intelligence_restore", "intelligence_restore_drill"):
        dag = bag.dags[dag_id]
        queues = {}
        for task in dag.tasks:
            component = task.task_id.split(".")[0].removeprefix("drill_")
            queues.setdefault(component if component in REGISTRY else "(other)", set()).add(task.queue)
        default = queues.pop("(other)")
        assert len(default) == 1 and default.isdisjoint(expected.values()), (dag_id, default)
        for name, found in queues.items():
            assert found == {expected.get(name, *default)}, (dag_id, name, found)
        assert set(expected) <= set(queues), (dag_id, sorted(queues))


def test_a_queue_that_is_not_a_name_is_refused(tmp_path):
    import yaml

    from ragvault.config import ConfigError, load_settings

    config = tmp_path / "ragvault.yaml"
    config.write_text(yaml.safe_dump({"components": {"infra": {"queue": ["a", "b"]}}}))
    with pytest.raises(ConfigError, match=r"components\.infra\.queue must be a queue name"):
        load_settings(config).task_args("infra")
