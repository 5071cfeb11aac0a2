"""The example Grafana dashboard and alert rules use only metrics the exporter has.

A renamed metric would otherwise leave users with an empty panel or, worse, an
alert that can never fire.  The rules' own unit tests
(contrib/prometheus/revnat64-alerts.test.yml) run in promtool, which
scripts/setup.sh unpacks from Debian's prometheus package.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from publisher.metrics import render
from tests.publisher.metrics_samples import sample_snapshot

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "revnat64-dashboard.json"
ALERTS = ROOT / "contrib" / "prometheus" / "revnat64-alerts.yml"
METRIC_RE = re.compile(r"\b(?:revnat64|process)_[a-z0-9_]+\b")
GRAFANA_BUILTINS = {"__rate_interval", "__range", "__interval"}


def exported_names() -> set[str]:
    text = render(sample_snapshot, process=True).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_exported_names_include_process_metrics() -> None:
    names = exported_names()
    assert "revnat64_translated_packets_total" in names
    assert "process_resident_memory_bytes" in names


def dashboard_exprs(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    return exprs + [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]


def test_dashboard_is_valid_grafana_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] == "revnat64"
    assert isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


def test_dashboard_queries_use_exported_metrics_and_defined_variables() -> None:
    doc = json.loads(DASHBOARD.read_text())
    names = exported_names()
    variables = {v["name"] for v in doc["templating"]["list"]} | GRAFANA_BUILTINS
    exprs = dashboard_exprs(doc)
    queries = [v["query"]["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    for expr in exprs + queries:
        used = set(METRIC_RE.findall(expr))
        assert used, f"no revnat64 metric in {expr!r}"
        assert used <= names, f"{expr!r} uses metrics nobody exports: {used - names}"
        refs = set(re.findall(r"\$(\w+)", expr))
        assert refs <= variables, f"{expr!r} uses undefined variables {refs - variables}"


def test_dashboard_covers_what_operators_watch() -> None:
    used = set(METRIC_RE.findall(" ".join(dashboard_exprs(json.loads(DASHBOARD.read_text())))))
    for name in (
        "revnat64_translated_packets_total",
        "revnat64_translated_bytes_total",
        "revnat64_dropped_packets_total",
        "revnat64_pool_addresses_in_use",
        "revnat64_pool_addresses",
        "revnat64_reloads_total",
        "revnat64_firewall_dropped_packets_total",
        "revnat64_worker_cpu_seconds_total",
        "revnat64_worker_resident_memory_bytes",
    ):
        assert name in used, name


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    names = exported_names()
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {
        "Revnat64DeviceUnreachable",
        "Revnat64PoolNearlyExhausted",
        "Revnat64ReloadFailed",
        "Revnat64Down",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = set(METRIC_RE.findall(rule["expr"]))
        assert used <= names, f"{rule['alert']} uses metrics nobody exports: {used - names}"
        if rule["alert"] == "Revnat64Down":
            assert 'up{job="revnat64"}' in rule["expr"]  # Prometheus' own scrape health
        else:
            assert used, f"{rule['alert']} uses no revnat64 metric"


def test_alert_unit_tests_cover_every_alert() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    tests = yaml.safe_load(ALERTS.with_suffix(".test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert tested == alerts


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    """promtool evaluates every rule against recorded series, annotations included."""
    promtool = Path(sys.executable).with_name("promtool")
    assert promtool.exists(), f"{promtool} is missing: run scripts/setup.sh"
    unit_tests = ALERTS.with_suffix(".test.yml").name
    for args in (["check", "rules", ALERTS.name], ["test", "rules", unit_tests]):
        done = subprocess.run(
            [str(promtool), *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
