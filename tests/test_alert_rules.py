"""The alert rules shipped for the backups' metrics (include/compose/prometheus/ragvault-alerts.yml): valid for
Prometheus's own checker, every alert exercised by promtool's rule unit tests (ragvault-alerts.test.yml), and
every metric they read is one the package pushes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[1] / "include" / "compose" / "prometheus" / "ragvault-alerts.yml"
TESTS = RULES.with_name("ragvault-alerts.test.yml")
METRICS = Path(__file__).resolve().parents[1] / "plugins" / "ragvault" / "metrics.py"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: `make services` installs Debian's prometheus package", pytrace=False)
    return found


def test_rules_pass_promtool_check(promtool):
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_every_alert_has_unit_tests_that_pass(promtool):
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == alerts
    fired = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert fired == alerts, "each alert has a case where it fires"
    done = subprocess.run([promtool, "test", "rules", TESTS.name], cwd=TESTS.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_read_only_metrics_the_package_pushes():
    pushed = set(re.findall(r'"(ragvault_[a-z_]+)"', METRICS.read_text()))
    used = set(re.findall(r"\b(ragvault_[a-z_]+)\b", RULES.read_text())) - {"ragvault_backup"}
    assert used and used <= pushed, used - pushed
