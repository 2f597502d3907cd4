#!/usr/bin/env python3
"""The chart's alerts as operators install them: render the chart with the
PrometheusRule on (default thresholds), write its groups as a Prometheus rule
file, and run `promtool check rules` and `promtool test rules` with
helm/tests/alerts_test.yaml. Fails when an alert has no test, or a test names
an alert that does not exist. Also checks that the dashboard ConfigMap holds
valid JSON whose every panel has a query.

Usage: check_alerts.py HELM PROMTOOL CHART
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml


def rendered(helm, chart):
    out = subprocess.run(
        [helm, "template", "t", chart,
         "--set", "monitoring.prometheusRule.enabled=true",
         "--set", "monitoring.dashboard.enabled=true"],
        check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def main():
    helm, promtool, chart = sys.argv[1:4]
    docs = rendered(helm, chart)
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, got {len(rules)}"
    groups = rules[0]["spec"]["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    here = os.path.dirname(os.path.abspath(__file__))
    tests = yaml.safe_load(open(os.path.join(here, "alerts_test.yaml")))
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    errors = [f"alert {a} has no promtool test" for a in sorted(alerts - tested)]
    errors += [f"alerts_test.yaml tests unknown alert {a}" for a in sorted(tested - alerts)]
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and "nts-dashboard.json" in d.get("data", {})]
    assert len(dashboards) == 1, "expected one dashboard ConfigMap"
    board = json.loads(dashboards[0]["data"]["nts-dashboard.json"])
    for p in board["panels"]:
        if p["type"] != "row" and not [t for t in p.get("targets", []) if t.get("expr")]:
            errors.append(f"dashboard panel {p['title']!r} has no query")
    if errors:
        sys.exit("check-alerts: " + "; ".join(errors))
    work = tempfile.mkdtemp(prefix="nts-alerts.")
    try:
        with open(os.path.join(work, "rules.yaml"), "w") as f:
            yaml.safe_dump({"groups": groups}, f)
        shutil.copy(os.path.join(here, "alerts_test.yaml"), work)
        subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=work, check=True)
    finally:
        shutil.rmtree(work)
    print(f"  ok   {len(alerts)} alerts: promtool check and test rules pass; "
          f"dashboard: {len([p for p in board['panels'] if p['type'] != 'row'])} panels")


if __name__ == "__main__":
    main()
