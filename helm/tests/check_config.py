#!/usr/bin/env python3
"""Run every container the chart renders through the real binary in the real
image with --check-config, so the chart and the binaries cannot drift apart.

For each Deployment/StatefulSet/DaemonSet container in the rendered manifests:
its command and args, its env (downward-API fields replaced by sample values,
$(VAR) expanded as the kubelet does), its ConfigMaps (from the rendered output)
and Secrets (rendered ones as they are; external ones replaced by valid
fixtures: certificates from a throwaway CA, a random root secret) mounted at
the same paths with the same modes and fsGroup ownership, its user and added
capabilities, a read-only root filesystem and no network. The pod-to-docker-run
part is helm/tests/podrun.py, shared with the chart stack test (chart_stack.py).

Usage: check_config.py IMAGE RENDERED.yaml [--self-test]
  --self-test: also break one rendered ConfigMap and require that to fail.
"""
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

import yaml

import podrun

FIELD_SAMPLES = {
    "status.hostIP": "192.0.2.10",
    "status.podIP": "10.1.2.3",
    "spec.nodeName": "node-a",
    "metadata.name": "pod-a",
    "metadata.namespace": "nts",
}


class Fixtures:
    """Valid stand-ins for Secrets the chart expects to exist."""

    def __init__(self, work):
        ca = podrun.TestCA(work, "fixtures", "chart check CA")
        self.files = ca.sign(common_name="chart check", dns=["nts.example.net", "*.nts-ke-sync.nts.svc"],
                             usages=["server auth", "client auth"])

    def secret(self, name, keys):
        return {k: self.content(k) for k in (keys or ["tls.crt", "tls.key", "ca.crt"])}

    def content(self, key):
        if key in self.files:
            return self.files[key]
        if key.endswith(".key"):  # a cookie root secret
            return (secrets.token_hex(32) + "\n").encode()
        raise SystemExit(f"no fixture for Secret key {key!r}")


def check_container(image, pod, c, docs, fixtures, work, label):
    opts, argv, _ = podrun.docker_args(pod, c, docs, fixtures.secret, work, FIELD_SAMPLES, label)
    # --check-config needs no network; the container is read-only whatever the manifest says.
    cmd = ["docker", "run", "--rm", "--network", "none", "--read-only"] + opts + [image] + argv + ["--check-config"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0 and "configuration OK" in r.stdout, out, argv


workloads = podrun.workloads


def self_tests(image, all_docs, docs, fixtures, work):
    """The check must be able to fail: break what the chart renders and expect a refusal."""
    import copy
    failures = 0
    cases = []
    # 1. A configuration key the binary does not know (every ConfigMap).
    for d, pod in workloads(all_docs):
        for v in pod.get("volumes") or []:
            name = v.get("configMap", {}).get("name")
            if name:
                broken = copy.deepcopy(docs)
                cm = broken[("ConfigMap", name)]
                key = next(iter(cm["data"]))
                cm["data"][key] = cm["data"][key].replace("level = ", "levle = ", 1)
                cases.append((f"unknown key in ConfigMap {name}", broken, d, pod))
    # 2. The time server without NTS_ADVERTISE: nothing else tells it its node's address.
    for d, pod in workloads(all_docs):
        if "time-server" in d["metadata"]["name"]:
            pod = copy.deepcopy(pod)
            c = pod["containers"][0]
            c["env"] = [e for e in c["env"] if e["name"] != "NTS_ADVERTISE"]
            cases.append(("time server without NTS_ADVERTISE", docs, d, pod))
    for what, broken_docs, d, pod in cases:
        ok, out, _ = check_container(image, pod, pod["containers"][0], broken_docs, fixtures, work,
                                     f"self-test-{abs(hash(what))}-{d['metadata']['name']}")
        if ok:
            print(f"  FAIL self-test: {what} passed --check-config")
            failures += 1
        else:
            print(f"  ok   self-test: {what} is refused: {out.splitlines()[-1].strip()[:110]}")
    return failures


def main():
    image, rendered = sys.argv[1], sys.argv[2]
    self_test = "--self-test" in sys.argv[3:]
    with open(rendered) as f:
        all_docs = [d for d in yaml.safe_load_all(f) if d]
    docs = podrun.index(all_docs)
    work = tempfile.mkdtemp(prefix="nts-chart-check.")
    os.chmod(work, 0o755)
    failures, checked = 0, 0
    try:
        fixtures = Fixtures(work)
        for d in all_docs:
            if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
                continue
            pod = d["spec"]["template"]["spec"]
            for c in pod["containers"] + (pod.get("initContainers") or []):
                label = f"{d['kind']}/{d['metadata']['name']}/{c['name']}"
                ok, out, argv = check_container(image, pod, c, docs, fixtures, work, label)
                checked += 1
                print(f"  {'ok  ' if ok else 'FAIL'} {label}: {' '.join(argv)} --check-config")
                if not ok:
                    failures += 1
                    print("       " + out.replace("\n", "\n       "))
        if checked == 0:
            print("  no container rendered")
            failures += 1
        if self_test and failures == 0:
            failures += self_tests(image, all_docs, docs, fixtures, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  {checked} containers checked, {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
