#!/usr/bin/env python3
"""Every alert and dashboard expression of the chart, against a real
Prometheus scraping a running stack (the engine test's).

  healthy: every dashboard query returns data; every alert expression
           evaluates, finds each metric it names (except --absent-ok ones,
           which this stack cannot produce) and, the stack being healthy,
           returns nothing: no alert would fire (except --expect-firing
           ones, which must fire).
  firing ALERT MIN: the alert's expression returns at least MIN series
           (waits up to --wait seconds): the alert sees a real outage.

Usage: check_live_queries.py PROM_URL HELM CHART healthy [--absent-ok NAME ...]
       check_live_queries.py PROM_URL HELM CHART firing ALERT MIN [--wait S]
"""
import argparse
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import yaml

# Grafana's own variable: what it stands for at a 1 s scrape interval.
RATE_INTERVAL = "30s"


def chart_expressions(helm, chart):
    out = subprocess.run(
        [helm, "template", "t", chart,
         "--set", "monitoring.prometheusRule.enabled=true",
         "--set", "monitoring.dashboard.enabled=true"],
        check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    alerts = {r["alert"]: r["expr"] for d in docs if d["kind"] == "PrometheusRule"
              for g in d["spec"]["groups"] for r in g["rules"] if "alert" in r}
    board = next(json.loads(d["data"]["nts-dashboard.json"]) for d in docs
                 if d["kind"] == "ConfigMap" and "nts-dashboard.json" in d.get("data", {}))
    panels = [(p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
              for p in board["panels"] for t in p.get("targets", []) if t.get("expr")]
    return alerts, panels


def query(prom, expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def metric_names(expr):
    unquoted = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    return sorted(set(re.findall(r"\bnts_[a-z0-9_]+\b", unquoted)))


def healthy(prom, alerts, panels, absent_ok, expect_firing):
    errors = []
    for title, expr in panels:
        try:
            if not query(prom, expr):
                errors.append(f"dashboard {title!r}: no data for {expr}")
        except ValueError as e:
            errors.append(f"dashboard {title!r}: {e}")
    for name, expr in alerts.items():
        try:
            firing = query(prom, expr)
        except ValueError as e:
            errors.append(f"alert {name}: {e}")
            continue
        if name in expect_firing:
            if not firing:
                errors.append(f"alert {name} should fire on this stack ({expect_firing[name]}) but its expression returns nothing")
        elif firing:
            errors.append(f"alert {name} would fire on a healthy stack: {firing}")
        for m in metric_names(expr):
            if m not in absent_ok and not query(prom, f'count({{__name__="{m}"}})'):
                errors.append(f"alert {name}: no series of {m}")
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prom")
    ap.add_argument("helm")
    ap.add_argument("chart")
    ap.add_argument("mode", choices=["healthy", "firing"])
    ap.add_argument("rest", nargs="*")
    ap.add_argument("--absent-ok", action="append", default=[])
    ap.add_argument("--expect-firing", action="append", default=[],
                    help="ALERT=REASON: an alert this stack must trigger")
    ap.add_argument("--wait", type=float, default=20)
    a = ap.parse_args()
    alerts, panels = chart_expressions(a.helm, a.chart)
    if a.mode == "healthy":
        expect = dict(e.split("=", 1) for e in a.expect_firing)
        unknown = set(expect) - set(alerts)
        if unknown:
            sys.exit(f"live queries: --expect-firing names unknown alerts {sorted(unknown)}")
        errors = healthy(a.prom, alerts, panels, set(a.absent_ok), expect)
        if errors:
            sys.exit("live queries:\n  " + "\n  ".join(errors))
        print(f"{len(panels)} dashboard queries return data; {len(alerts)} alert expressions "
              f"evaluate and find their metrics; quiet except {sorted(expect) or 'none'}, which fire as expected")
        return
    alert, want = a.rest[0], int(a.rest[1])
    deadline = time.monotonic() + a.wait
    while True:
        got = query(a.prom, alerts[alert])
        if len(got) >= want:
            print(f"{alert}'s expression returns {len(got)} series: "
                  + ", ".join(sorted(json.dumps(s["metric"], sort_keys=True) for s in got)))
            return
        if time.monotonic() > deadline:
            sys.exit(f"{alert}'s expression returned {len(got)} series, expected at least {want}")
        time.sleep(1)


if __name__ == "__main__":
    main()
