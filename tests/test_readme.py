"""Every command the README shows runs as written.

Each command of the README's ``bash`` blocks is listed below with the test that runs it *as written* (the test
file holds the command's text verbatim); a command added to the README without one fails here. The commands
that need nothing but the local services run here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

BACKFILL = "airflow backfill create --dag-id intelligence_backup --from-date 2025-09-21T02:00:00 --to-date 2025-09-23T02:00:00 --max-active-runs 1 --reprocess-behavior none --dry-run"  # noqa: E501
#: command -> the file that runs it as written (or, for what cannot run here, checks it)
RUN_BY = {
    "make demo": "tests/test_readme.py",
    "make test": ".ci/run",
    "make bench": "tests/test_bench.py",
    BACKFILL: "tests/test_readme.py",
    "airflow dags trigger intelligence_backup": "tests/e2e/test_scheduler.py",
    # Docker cannot run where this project is tested: the file's consistency is checked instead
    "docker compose build && docker compose up -d": "tests/test_docker_compose.py",
    "airflow dags trigger intelligence_restore --conf '{\"backup_date\": \"latest\", \"components\": "
    "[\"qdrant\", \"mongodb\", \"redis\"], \"dry_run\": true}'": "tests/e2e/test_scheduler.py",
    "set -a && . ./.services.env && set +a": "tests/test_readme.py",
    "airflow dags test intelligence_backup 2025-09-22": "tests/test_readme.py",
    ".venv/bin/ragvault list": "tests/test_readme.py",
    ".venv/bin/ragvault show 2025-09-22": "tests/test_readme.py",
    ".venv/bin/ragvault verify 2025-09-22 --sample 0.5": "tests/test_readme.py",
    ".venv/bin/ragvault prune --dry-run": "tests/test_readme.py",
    "airflow celery worker --queues default,ragvault-files": "tests/e2e/test_celery.py",
}


def readme_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_every_readme_command_is_run_as_written_somewhere():
    commands = readme_commands()
    assert commands, "no bash block found in the README"
    unlisted = [c for c in commands if c not in RUN_BY]
    assert not unlisted, f"README commands no test runs: {unlisted}; add them to RUN_BY with the test that runs them"
    for command in commands:
        where = REPO / RUN_BY[command]
        if where.name == "test_docker_compose.py":
            continue  # checked, not run (no Docker engine here)
        assert command in where.read_text(), f"{where} does not hold {command!r}"
    assert sorted(set(RUN_BY) - set(commands)) == [], "RUN_BY lists commands the README no longer shows"


def bash(script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_backup_of_a_day_after_sourcing_services_env():
    """The README's local-stack command, from the repository's root, in a shell of its own."""
    proc = bash("set -a && . ./.services.env && set +a\nairflow dags test intelligence_backup 2025-09-22", 900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "components.prometheus.data_dir is not set" not in out
    # complete, or partial when the bucket already holds a newer backup (the day's state is then not captured)
    assert re.search(r"(complete|PARTIAL) backup of 2025-09-22: .*; \d+ artifacts", out), out[-3000:]


def test_the_ragvault_command_on_the_local_stack():
    """The README's `ragvault` commands, after the backup of 2025-09-22 above (made here when run alone)."""
    if bash("set -a && . ./.services.env && set +a\n.venv/bin/ragvault show 2025-09-22", 120).returncode == 3:
        test_backup_of_a_day_after_sourcing_services_env()
    proc = bash("set -a && . ./.services.env && set +a\n"
                ".venv/bin/ragvault list\n"
                ".venv/bin/ragvault show 2025-09-22\n"
                ".venv/bin/ragvault verify 2025-09-22 --sample 0.5\n"
                ".venv/bin/ragvault prune --dry-run\n", 300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"│ 2025-09-22 │ complete", proc.stdout), proc.stdout[-3000:]
    assert "backup 2025-09-22 in s3://" in proc.stdout
    assert re.search(r"2025-09-22: ok: (\d+) artifacts looked up, \d+ read back", proc.stdout), proc.stdout[-2000:]
    assert "credentials retrieved" not in proc.stdout  # Airflow's INFO lines stay out of the output
    assert "(dry run: nothing removed)" in proc.stdout


def test_backfill_dry_run_lists_the_folders(airflow):
    """The README's backfill dry run: the runs scheduled from the 21st to the 23rd are the folders 20..22.
    (In a deployment the dag-processor has parsed the DAG; this private Airflow serializes it first.)"""
    assert airflow.run("dags", "reserialize").returncode == 0
    proc = airflow.run(*shlex.split(BACKFILL)[1:])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    dates = re.findall(r"^\| (\d{4}-\d{2}-\d{2}) 02:00:00\+00:00 +\|", proc.stdout, re.MULTILINE)
    assert dates == ["2025-09-20", "2025-09-21", "2025-09-22"], proc.stdout[-2000:]


@pytest.mark.timeout(1200)
def test_make_demo():
    """`make demo` from the repository's root: it backs the seeded stack up, wipes it, restores it, and every
    component of the verification table is equal."""
    proc = bash("make demo", 1100)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    rows = re.findall(r"^(\w+)\s+\d+\s+\d+\s+(yes|NO)\s*$", out, re.MULTILINE)
    assert len(rows) == 9 and all(equal == "yes" for _, equal in rows), out[-4000:]


def test_every_settings_example_is_made_of_real_settings(tmp_path):
    """Each ``yaml`` block of the README is a fragment of the settings file: its keys exist, and the settings
    it gives load and validate (with retention on, which some fragments assume)."""
    import yaml

    from ragvault.config import DEFAULTS, load_settings

    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        fragment = yaml.safe_load(block)
        for key, value in fragment.items():
            assert key in DEFAULTS, (key, block)
            if isinstance(value, dict):
                assert set(value) <= set(DEFAULTS[key]), (key, set(value) - set(DEFAULTS[key]))
                for name, section in value.items():  # components.<name>.<setting>, drill.connections.<name>
                    if isinstance(section, dict) and isinstance(DEFAULTS[key][name], dict):
                        assert set(section) <= set(DEFAULTS[key][name]), (key, name, section)
        path = tmp_path / "ragvault.yaml"
        path.write_text(yaml.safe_dump({"retention": {"enabled": True}, **fragment}))
        settings = load_settings(path)
        _ = settings.encryption_scope, settings.object_lock, settings.retention, settings.transfer
