#!/usr/bin/env python3
"""Run every container the chart renders through the real binary in the real
image with --check-config, so the chart and the binaries cannot drift apart.

For each Deployment/StatefulSet/DaemonSet container in the rendered manifests:
its command and args, its env (downward-API fields replaced by sample values,
$(VAR) expanded as the kubelet does), its ConfigMaps (from the rendered output)
and Secrets (rendered ones as they are; external ones replaced by valid
fixtures: certificates from a throwaway CA, a random root secret) mounted at
the same paths with the same modes and fsGroup ownership, its user and added
capabilities, a read-only root filesystem and no network.

Usage: check_config.py IMAGE RENDERED.yaml [--self-test]
  --self-test: also break one rendered ConfigMap and require that to fail.
"""
import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile

import yaml

FIELD_SAMPLES = {
    "status.hostIP": "192.0.2.10",
    "status.podIP": "10.1.2.3",
    "spec.nodeName": "node-a",
    "metadata.name": "pod-a",
    "metadata.namespace": "nts",
}
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text, env):
    """$(VAR) expansion as the kubelet does it; $$(VAR) escapes."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = VAR.match(text, i)
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


class Fixtures:
    """Valid stand-ins for Secrets the chart expects to exist."""

    def __init__(self, work):
        self.dir = os.path.join(work, "fixtures")
        os.makedirs(self.dir)
        ca_key, ca = self.path("ca.key"), self.path("ca.crt")
        run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-keyout", ca_key, "-out", ca, "-subj", "/CN=chart check CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        key, csr, crt, ext = (self.path(n) for n in ("leaf.key", "leaf.csr", "leaf.crt", "leaf.ext"))
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
                    "subjectAltName=DNS:nts.example.net,DNS:*.nts-ke-sync.nts.svc\n")
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=chart check"])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-out", crt, "-extfile", ext])

    def path(self, name):
        return os.path.join(self.dir, name)

    def content(self, key):
        name = {"tls.crt": "leaf.crt", "tls.key": "leaf.key", "ca.crt": "ca.crt"}.get(key)
        if name:
            with open(self.path(name), "rb") as f:
                return f.read()
        if key.endswith(".key"):  # a cookie root secret
            return (secrets.token_hex(32) + "\n").encode()
        raise SystemExit(f"no fixture for Secret key {key!r}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def write_files(dirpath, files, mode, gid):
    os.makedirs(dirpath, exist_ok=True)
    os.chmod(dirpath, 0o755)
    for name, data in files.items():
        p = os.path.join(dirpath, name)
        with open(p, "wb") as f:
            f.write(data)
        # kubelet: defaultMode, group fsGroup with group read added.
        os.chown(p, 0, gid if gid is not None else 0)
        os.chmod(p, mode | (0o040 if gid is not None else 0))


def volume_files(vol, docs, fixtures):
    """The files a configMap/secret volume shows: {path: bytes}."""
    if "configMap" in vol:
        name = vol["configMap"]["name"]
        cm = docs.get(("ConfigMap", name))
        if cm is None:
            raise SystemExit(f"ConfigMap {name} is mounted but not rendered")
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        items = vol["configMap"].get("items")
    else:
        name = vol["secret"]["secretName"]
        s = docs.get(("Secret", name))
        items = vol["secret"].get("items")
        if s is not None:
            data = {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}
        else:
            keys = [i["key"] for i in items] if items else ["tls.crt", "tls.key", "ca.crt"]
            data = {k: fixtures.content(k) for k in keys}
    if items:
        return {i.get("path", i["key"]): data[i["key"]] for i in items}
    return data


def check_container(image, pod, c, docs, fixtures, work, label):
    env = {}
    args_env = []
    for e in c.get("env") or []:
        if "value" in e:
            v = expand(str(e["value"]), env)
        elif "fieldRef" in e.get("valueFrom", {}):
            v = FIELD_SAMPLES[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise SystemExit(f"{label}: env {e['name']} has an unsupported source")
        env[e["name"]] = v
        args_env += ["-e", f"{e['name']}={v}"]
    argv = [expand(str(a), env) for a in (c.get("command") or []) + (c.get("args") or [])]
    if not argv:
        raise SystemExit(f"{label}: no command")
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
    fs_group = psc.get("fsGroup")
    docker = ["docker", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges"]
    if uid is not None:
        docker += ["--user", f"{uid}:{gid}"]
    if fs_group is not None:
        docker += ["--group-add", str(fs_group)]
    for cap in (csc.get("capabilities") or {}).get("add") or []:
        if cap == "SYS_TIME":
            continue  # never in a test: the clock is not namespaced (--check-config needs none)
        docker += ["--cap-add", cap]
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    for i, m in enumerate(c.get("volumeMounts") or []):
        vol = vols[m["name"]]
        host = os.path.join(work, label.replace("/", "_"), f"{i}-{m['name']}")
        if "configMap" in vol or "secret" in vol:
            src = vol.get("configMap") or vol.get("secret")
            mode = src.get("defaultMode", 0o644)
            files = volume_files(vol, docs, fixtures)
            write_files(host, files, mode, fs_group)
            if m.get("subPath"):
                host = os.path.join(host, m["subPath"])
        else:  # emptyDir, persistentVolumeClaim: an empty writable directory
            os.makedirs(host)
            if fs_group is not None:
                os.chown(host, 0, fs_group)
            os.chmod(host, 0o2775 if fs_group is not None else 0o777)
        docker += ["-v", f"{host}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    cmd = docker + args_env + [image] + argv + ["--check-config"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    return r.returncode == 0 and "configuration OK" in r.stdout, out, argv


def workloads(all_docs):
    for d in all_docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield d, d["spec"]["template"]["spec"]


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
    docs = {(d["kind"], d["metadata"]["name"]): d for d in all_docs}
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
