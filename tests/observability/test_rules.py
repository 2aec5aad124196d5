"""The shipped alert rules under promtool (Debian package `prometheus`): syntax, and unit tests in
which every alert fires for its cause and stays quiet otherwise (tests/observability/rules_test.yaml).
The chart's PrometheusRule is checked the same way in tests/chart/test_chart.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT
from tests.observability.conftest import binary

RULES = ROOT / "charts" / "reranker" / "files" / "reranker.rules.yaml"
DEPLOY_RULES = ROOT / "deploy" / "prometheus" / "reranker.rules.yaml"
UNIT_TESTS = Path(__file__).parent / "rules_test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)


def alerts_of(rules_path: Path) -> dict[str, dict]:
    return {r["alert"]: r for g in yaml.safe_load(rules_path.read_text())["groups"]
            for r in g["rules"] if "alert" in r}


def test_deploy_copy_is_the_chart_file():
    """One source of truth: deploy/ links to the file the chart ships."""
    assert DEPLOY_RULES.is_symlink() and DEPLOY_RULES.resolve() == RULES.resolve()


def test_shipped_rules_pass_promtool_check():
    out = promtool("check", "rules", str(DEPLOY_RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in yaml.safe_load(RULES.read_text())['groups'])} rules found" \
        in out.stdout


def test_deploy_prometheus_config_with_the_rules_passes_promtool_check():
    out = promtool("check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_unit_tests_pass():
    out = promtool("test", "rules", str(UNIT_TESTS))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    alerts = alerts_of(RULES)
    assert {c["alertname"] for c in cases} == set(alerts), "unit tests for exactly the shipped alerts"
    for name in alerts:
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name} never fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name} never stays quiet"


def test_every_alert_has_severity_summary_and_description_and_a_runbook_line():
    readme = (ROOT / "charts" / "reranker" / "README.md").read_text()
    for name, rule in alerts_of(RULES).items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"| `{name}` |" in readme, f"{name}: no runbook line in charts/reranker/README.md"


def test_every_selector_carries_the_chart_scoping_marker():
    """The chart scopes the rules by replacing job=~".+" (see the file's header): a selector without it
    would watch every release's series."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            selectors = expr.count("{")
            assert selectors and expr.count('job=~".+"') == selectors, (rule.get("alert") or rule["record"], expr)


def _run_with(tmp_path: Path, rules: dict, only_quiet: bool = False) -> subprocess.CompletedProcess:
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(rules_path)]
    if only_quiet:
        for test in tests["tests"]:
            test["alert_rule_test"] = [c for c in test.get("alert_rule_test", []) if not c["exp_alerts"]]
    tests_path = tmp_path / "tests.yaml"
    tests_path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", str(tests_path))


def _mutated(make_expr) -> dict:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["expr"] = make_expr(rule["expr"])
    return rules


def test_quiet_cases_alone_pass_with_the_real_rules(tmp_path):
    out = _run_with(tmp_path, yaml.safe_load(RULES.read_text()), only_quiet=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unit_tests_catch_alerts_that_never_fire(tmp_path):
    """Every alert's expression replaced by one that never fires: each alert's firing case fails."""
    out = _run_with(tmp_path, _mutated(lambda expr: f"({expr}) unless on () vector(1)"))
    assert out.returncode != 0
    missed = [name for name in alerts_of(RULES) if f"alertname: {name}," not in out.stdout + out.stderr]
    assert not missed, f"no unit test noticed that these never fire: {missed}"


def test_unit_tests_catch_alerts_that_always_fire(tmp_path):
    """Every alert's expression replaced by one that always fires: each alert's quiet cases fail
    (they pass with the real rules, above)."""
    out = _run_with(tmp_path, _mutated(lambda expr: "vector(1)"), only_quiet=True)
    assert out.returncode != 0
    missed = [name for name in alerts_of(RULES) if f"alertname: {name}," not in out.stdout + out.stderr]
    assert not missed, f"no unit test noticed that these always fire: {missed}"
