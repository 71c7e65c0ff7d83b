"""The alert rules: promtool checks the file and runs its unit tests."""

from __future__ import annotations

import shutil
import subprocess

import yaml
from deploy_promql import ROOT, RULES

RULE_TESTS = ROOT / "dashboards" / "rules" / "modelpress.rules.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "no promtool: apt-get install -y --no-install-recommends prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert alerts == tested
