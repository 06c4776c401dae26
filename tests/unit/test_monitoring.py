"""manifests/monitoring/: the PrometheusRule passes its CRD and `promtool check rules`, its alerts fire and stay
silent as tests/promtool/ikd-rules.test.yaml says (`promtool test rules`), and every query of the Grafana dashboard
and of the alerts names a series that the server or the training jobs export (or the Pushgateway adds)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import types

import numpy as np
import pytest
import yaml
from conftest import ROOT, tool
from k8s_schemas import validate_custom

MONITORING = ROOT / "manifests" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "ikd.json"
RULE_TESTS = ROOT / "tests" / "promtool" / "ikd-rules.test.yaml"
#: What the Pushgateway adds to every group it holds (the alerts read the time of the last push).
PUSHGATEWAY_SERIES = {"push_time_seconds", "push_failure_time_seconds"}
ALERTS = {
    "IkdServeErrorRatioHigh",
    "IkdServeLatencyP99High",
    "IkdServeQueueBacklog",
    "IkdJobFailed",
    "IkdJobStoppedPushing",
}


def rule() -> dict:
    return yaml.safe_load(RULE.read_text())


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# ---- metric names in PromQL ---------------------------------------------------------------------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not a function call, a keyword, a label
    inside a matcher or a grouping clause, a range, a string or a number."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings first: they may hold braces
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers (and Grafana's ${...})
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, [$__rate_interval] included
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_finds_series_and_skips_functions_labels_and_keywords():
    expr = (
        'sum by (label) (rate(ikd_predictions_total{model=~"$model",label!="a{b}"}[$__rate_interval])) '
        "/ ignoring (label) group_left sum(rate(ikd_rows_total[5m] offset 1h)) > 0.5e3 and on (job) time() - up"
    )
    assert metric_names(expr) == {"ikd_predictions_total", "ikd_rows_total", "up"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m])))") == {"x_bucket"}


def server_series() -> set[str]:
    """Every series name the server's /metrics shows once each metric has been observed."""
    from ikd.serve.metrics import Metrics, TextCounts

    predictor = types.SimpleNamespace(name="m", labels=["negative", "positive"], metadata={}, load_seconds=0.1)
    m = Metrics(predictor)
    m.observe_request("infer", 200, 0.01)
    m.observe_batch(3, 0.01)
    m.queue_depth(2)
    m.observe_queue_wait(0.001)
    m.observe_texts(TextCounts(texts=3, cut_chars=1, cut_tokens=1))
    m.observe_rows(3)
    m.observe_predictions(np.array([[0.0, 1.0], [1.0, 0.0]]))
    return {s.name for family in m.registry.collect() for s in family.samples}


def job_series() -> set[str]:
    from ikd.integrations.jobmetrics import STATES, build_registry

    registry, gauges = build_registry()
    for state in STATES:
        gauges["status"].labels(state).set(0)
    return {s.name for family in registry.collect() for s in family.samples}


def test_the_series_lists_are_what_is_exported():
    server, jobs = server_series(), job_series()
    assert {
        "ikd_requests_total",
        "ikd_batch_size_rows_bucket",
        "ikd_queue_depth_rows",
        "ikd_queue_wait_seconds_sum",
    } <= server
    assert not any(n.endswith("_created") for n in server | jobs)  # _created series are off
    assert {"ikd_batch_size_bucket", "ikd_queue_depth"}.isdisjoint(server)  # the names before the unit suffixes
    assert {"ikd_job_step", "ikd_job_status", "ikd_job_end_timestamp_seconds"} <= jobs


# ---- the dashboard ------------------------------------------------------------------------------------------------
def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) of every query: panel targets (rows' nested panels too) and query variables."""
    out = []
    panels = list(dash["panels"])
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))
        out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            out.append((f"variable {var['name']}", inner.group(1) if inner else query))
    return out


def test_every_dashboard_query_reads_series_the_server_or_the_jobs_export():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    exported = server_series() | job_series() | PUSHGATEWAY_SERIES
    read: set[str] = set()
    unknown = []
    for where, expr in dashboard_queries(dash):
        names = metric_names(expr)
        assert names, f"{where}: {expr} reads no series"
        unknown += [f"{where}: {n}" for n in sorted(names - exported)]
        read |= names
    assert not unknown, unknown
    # the panels: requests by code, p50/p99, batch size, queue depth, inference share; step, loss, samples/s,
    # time left; and the new server counters
    assert {
        "ikd_requests_total",
        "ikd_request_duration_seconds_bucket",
        "ikd_batch_size_rows_sum",
        "ikd_queue_depth_rows",
        "ikd_queue_wait_seconds_bucket",
        "ikd_inference_duration_seconds_sum",
        "ikd_rows_total",
        "ikd_texts_total",
        "ikd_texts_truncated_total",
        "ikd_predictions_total",
        "ikd_job_step",
        "ikd_job_loss",
        "ikd_job_samples_per_second",
        "ikd_job_eta_seconds",
        "ikd_job_status",
    } <= read
    titles = [p["title"] for p in dash["panels"]]
    assert len(titles) == len(set(titles)) and len({p["id"] for p in dash["panels"]}) == len(titles)


def test_a_misspelt_series_in_the_dashboard_would_be_caught():
    exported = server_series() | job_series()
    assert metric_names("rate(ikd_batch_size_sum[5m])") - exported == {"ikd_batch_size_sum"}  # the old name
    assert metric_names('sum(ikd_job_status{status="failed"})') <= exported


def test_the_dashboard_ships_as_a_configmap_for_grafanas_sidecar():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}
    config = docs["ConfigMap"]
    assert config["metadata"]["name"] == "ikd-grafana-dashboard"  # no hash suffix: one dashboard, replaced
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["ikd.json"]) == dashboard()
    assert docs["PrometheusRule"]["spec"] == rule()["spec"]


# ---- the alerts ---------------------------------------------------------------------------------------------------
def test_the_prometheusrule_passes_its_crd_and_reads_exported_series():
    doc = rule()
    validate_custom(doc)
    alerts = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in alerts} == ALERTS
    exported = server_series() | job_series() | PUSHGATEWAY_SERIES
    for r in alerts:
        assert metric_names(r["expr"]) and metric_names(r["expr"]) <= exported, r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"]


def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path):
    promtool = tool("promtool")
    rules = tmp_path / "ikd-rules.yaml"  # the PrometheusRule's spec: the plain rules file promtool reads
    rules.write_text(yaml.safe_dump(rule()["spec"], sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in check.stdout, check.stdout + check.stderr
    tests = tmp_path / RULE_TESTS.name
    shutil.copy(RULE_TESTS, tests)
    every = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"] for t in case["alert_rule_test"]}
    assert every == ALERTS  # each alert has its cases
    run = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_fails_a_rule_that_does_not_fire_as_tested(tmp_path):
    """The unit tests can fail: with the 5xx bar at 50 % instead of 5 %, the flaky model's 9 % no longer fires."""
    promtool = tool("promtool")
    spec = rule()["spec"]
    for group in spec["groups"]:
        for r in group["rules"]:
            r["expr"] = r["expr"].replace("> 0.05", "> 0.5")
    (tmp_path / "ikd-rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    run = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / RULE_TESTS.name)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and "IkdServeErrorRatioHigh" in run.stdout + run.stderr
