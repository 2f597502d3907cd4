#!/usr/bin/env python3
"""Every workload's `checksum/config` pod annotation must change exactly when
a configuration that workload's pods read changes. The ConfigMaps are subPath
mounts, which a running pod never sees updated: only a changed pod template
(this annotation) rolls the pods onto the new configuration.

Renders the chart twice per case (one value changed) and compares, per
workload, the annotation and the rendered ConfigMaps it mounts:
  - the annotation changes  <=> a ConfigMap the workload mounts changes;
  - and the workloads that change are exactly the ones the case expects.

Usage: check_checksums.py HELM CHART [VALUES.yaml]
"""
import subprocess
import sys

import yaml

ANNOTATION = "checksum/config"
# (what changes, --set for A, --set for B, components whose pods must roll)
CASES = [
    ("keServer.replicas 2 -> 3", "keServer.replicas=2", "keServer.replicas=3", {"time-server"}),
    ("keServer.keySync.port 4461 -> 4471", "keServer.keySync.port=4461", "keServer.keySync.port=4471",
     {"ke-server", "time-server"}),
    ("keServer.logLevel info -> debug", "keServer.logLevel=info", "keServer.logLevel=debug", {"ke-server"}),
    ("timeServer.logLevel info -> debug", "timeServer.logLevel=info", "timeServer.logLevel=debug", {"time-server"}),
    ("client.logLevel info -> debug", "client.logLevel=info", "client.logLevel=debug", {"client"}),
    ("client.clock.maxpoll 10 -> 8", "client.clock.maxpoll=10", "client.clock.maxpoll=8", {"client"}),
    # Not read by any pod: the DaemonSets' update strategy.
    ("timeServer.updateStrategy maxUnavailable 1 -> 2", "timeServer.updateStrategy.rollingUpdate.maxUnavailable=1",
     "timeServer.updateStrategy.rollingUpdate.maxUnavailable=2", set()),
    ("client.updateStrategy maxUnavailable 10% -> 20%", "client.updateStrategy.rollingUpdate.maxUnavailable=10%",
     "client.updateStrategy.rollingUpdate.maxUnavailable=20%", set()),
]


def render(helm, chart, values, setting):
    cmd = [helm, "template", "nts", chart, "--namespace", "nts", "--set", setting] + (["-f", values] if values else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"helm template --set {setting} failed: {r.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    configmaps = {d["metadata"]["name"]: d.get("data") for d in docs if d["kind"] == "ConfigMap"}
    out = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        tpl = d["spec"]["template"]
        component = tpl["metadata"]["labels"].get("app.kubernetes.io/component", d["metadata"]["name"])
        mounted = sorted(v["configMap"]["name"] for v in tpl["spec"].get("volumes") or [] if "configMap" in v)
        out[component] = ((tpl["metadata"].get("annotations") or {}).get(ANNOTATION),
                          {n: configmaps.get(n) for n in mounted})
    return out


def main():
    helm, chart = sys.argv[1], sys.argv[2]
    values = sys.argv[3] if len(sys.argv) > 3 else None
    errors = 0
    for what, a, b, expected in CASES:
        before = errors
        ra, rb = render(helm, chart, values, a), render(helm, chart, values, b)
        for comp in sorted(set(ra) | set(rb)):
            if comp not in ra or comp not in rb:
                print(f"  FAIL {what}: workload {comp} rendered only once")
                errors += 1
                continue
            (sum_a, cms_a), (sum_b, cms_b) = ra[comp], rb[comp]
            if sum_a is None:
                print(f"  FAIL {what}: {comp} pods have no {ANNOTATION} annotation")
                errors += 1
                continue
            rolled, config_changed = sum_a != sum_b, cms_a != cms_b
            problems = []
            if config_changed and not rolled:
                changed = [n for n in cms_a if cms_a[n] != cms_b.get(n)]
                problems.append(f"its ConfigMap {', '.join(changed)} changed but {ANNOTATION} did not "
                                f"(running pods keep the old subPath file)")
            if rolled and not config_changed:
                problems.append(f"{ANNOTATION} changed though no ConfigMap it mounts did (a needless rollout)")
            if rolled != (comp in expected):
                problems.append(f"expected {'a' if comp in expected else 'no'} rollout")
            for p in problems:
                print(f"  FAIL {what}: {comp}: {p}")
            errors += bool(problems)
        rolled = sorted(c for c in ra if c in rb and ra[c][0] != rb[c][0])
        print(f"  {'ok  ' if errors == before else 'FAIL'} {what}: pods that roll: {', '.join(rolled) or 'none'} "
              f"(expected: {', '.join(sorted(expected)) or 'none'})")
    print(f"  {'ok  ' if not errors else 'FAIL'} checksums: {len(CASES)} value changes, {errors} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
