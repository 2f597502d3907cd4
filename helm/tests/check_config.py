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

Time servers are also started for real (no network, /dev/null standing in
for a PHC device the manifest mounts) and must still run after start-up:
--check-config does not probe timestamping (a NIC or PHC that cannot be used
stops `mode = "hardware"` only at start), and a values file should start.

Usage: check_config.py IMAGE RENDERED.yaml [--self-test]
  --self-test: also break one rendered ConfigMap and require that to fail.
"""
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

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
    opts, argv, _ = podrun.docker_args(pod, c, docs, fixtures.secret, work, FIELD_SAMPLES, label,
                                       stand_in_devices=True)
    # --check-config needs no network; the container is read-only whatever the manifest says.
    cmd = ["docker", "run", "--rm", "--network", "none", "--read-only"] + opts + [image] + argv + ["--check-config"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0 and "configuration OK" in r.stdout, out, argv


STARTED = "receive timestamps"


def start_time_server(image, pod, c, docs, fixtures, work, label):
    """Start the time server as the pod would (no network: key sync cannot connect,
    which it survives) and require it to get past its start-up; (ok, output)."""
    # The node's address is loopback here: nothing else exists without a network.
    fields = dict(FIELD_SAMPLES, **{"status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1"})
    opts, argv, _ = podrun.docker_args(pod, c, docs, fixtures.secret, work, fields, label + "-start",
                                       stand_in_devices=True)
    name = f"ntscc{os.getpid()}-{abs(hash(label)) % 10**8}"
    cmd = ["docker", "run", "-d", "--name", name, "--network", "none", "--read-only",
           "--sysctl", "net.ipv4.ip_unprivileged_port_start=1024"] + opts + ["--entrypoint", argv[0], image] + argv[1:]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return False, r.stderr.strip()
    try:
        out = ""
        for _ in range(40):
            time.sleep(0.25)
            lr = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
            out = (lr.stdout + lr.stderr).strip()
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                   capture_output=True, text=True).stdout.strip()
            if state != "true":
                return False, out
            if STARTED in out:
                time.sleep(0.5)  # still running just after?
                state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                       capture_output=True, text=True).stdout.strip()
                return state == "true", out
        return False, out + "\n(no start-up line within 10 s)"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def is_time_server(c):
    return (c.get("command") or [""])[0].endswith("nts-time-server")


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
    # 3. Hardware timestamping on a NIC that cannot do it: --check-config passes, start-up must not.
    for d, pod in workloads(all_docs):
        if is_time_server(pod["containers"][0]):
            broken = copy.deepcopy(docs)
            name = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
            cm = broken[("ConfigMap", name)]
            key = next(iter(cm["data"]))
            toml = cm["data"][key]
            if "[timestamping]" not in toml:
                raise SystemExit("self-test: no [timestamping] in the time-server ConfigMap")
            cm["data"][key] = re.sub(r'(\[timestamping\]\n)mode = "[a-z]+"(\ninterface = "[^"]*")?',
                                     r'\1mode = "hardware"\ninterface = "eth0"', toml, count=1)
            ok, out = start_time_server(image, pod, pod["containers"][0], broken, fixtures, work,
                                        f"self-test-hw-{d['metadata']['name']}")
            if ok:
                print("  FAIL self-test: a time server in hardware mode without a capable NIC started")
                failures += 1
            else:
                print(f"  ok   self-test: hardware mode without a capable NIC does not start: "
                      f"{out.splitlines()[-1].strip()[:110] if out else '(no output)'}")
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
                elif is_time_server(c):
                    ok, out = start_time_server(image, pod, c, docs, fixtures, work, label)
                    lines = [l for l in out.splitlines() if "timestamp" in l]
                    print(f"  {'ok  ' if ok else 'FAIL'} {label}: starts (no network): "
                          + (lines[-1].split("  ", 1)[-1].strip()[:120] if lines else "no timestamping line"))
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
