"""seqcast's alerts (the PrometheusRule in deploy/kubernetes/base), checked with promtool.

The rule's `spec` is taken from the rendered base, as prometheus-operator hands it to Prometheus,
and written as a plain rules file next to the unit tests in deploy/prometheus/alerts-test.yaml,
which `promtool test rules` then runs. The remaining checks hold every alert to the shape the
end-to-end test and the runbooks rely on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from seqcast.server.metrics import series_names

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes" / "base"
UNIT_TESTS = REPO / "deploy" / "prometheus" / "alerts-test.yaml"


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    """The PrometheusRule's spec from the rendered base: {"groups": [...]}."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (scripts/install-deploy-tools.sh puts it in .venv/bin)")
    result = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {BASE.relative_to(REPO)} failed:\n{result.stderr}"
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "PrometheusRule"]
    return rule["spec"]


@pytest.fixture()
def rules_dir(rules: dict[str, Any], tmp_path: Path) -> Path:
    """A directory holding the rules file under the name the unit tests load, and the unit tests."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (bash scripts/install-deploy-tools.sh .venv puts it in .tools/bin)")
    (rule_file,) = yaml.safe_load(UNIT_TESTS.read_text())["rule_files"]
    (tmp_path / rule_file).write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules(rules_dir: Path) -> None:
    (rule_file,) = yaml.safe_load(UNIT_TESTS.read_text())["rule_files"]
    result = promtool("check", "rules", rule_file, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_pass(rules_dir: Path) -> None:
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_see_every_alert_fire_and_stay_quiet(rules: dict[str, Any]) -> None:
    fired, quiet = set(), set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts(rules)}
    assert names - fired == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen staying quiet"


# The last comparison at bracket depth 0, with a number after it: `SIGNAL > 0.5`.
_FINAL_COMPARISON = re.compile(r"(?:>|<|>=|<=)\s*(?:bool\s+)?[0-9.e+-]+\s*$")


def top_level(expr: str) -> str:
    """`expr` with everything inside brackets and strings removed."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    while (shorter := re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", expr)) != expr:
        expr = shorter
    return expr


def test_every_alert_is_a_signal_compared_with_a_number(rules: dict[str, Any]) -> None:
    for rule in alerts(rules):
        outside = top_level(rule["expr"]).strip()
        assert _FINAL_COMPARISON.search(outside), f"{rule['alert']}: expr does not end in `> number`: {outside!r}"
        assert len(re.findall(r"==|!=|>=|<=|>|<", outside)) == 1, f"{rule['alert']}: more than one comparison"


def test_every_alert_has_severity_for_and_annotations(rules: dict[str, Any]) -> None:
    for rule in alerts(rules):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_alerts_read_seqcast_series_of_job_seqcast_that_the_server_defines(rules: dict[str, Any]) -> None:
    defined = series_names()
    for rule in alerts(rules):
        for name, matchers in re.findall(r"\b(seqcast_[a-z_]+)(\{[^}]*\})?", rule["expr"]):
            assert name in defined, f"{rule['alert']}: {name} is not a metric of seqcast.server.metrics"
            assert 'job="seqcast"' in matchers, f"{rule['alert']}: {name} without job=\"seqcast\""
