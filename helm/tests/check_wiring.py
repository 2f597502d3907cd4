#!/usr/bin/env python3
"""Check how the rendered resources refer to each other, which schema
validation cannot see: selectors that select nothing, ports by a name no
container has, a StatefulSet without its headless Service, time servers
pointed at key-sync names that do not exist or are not covered by the
key-sync certificate, time-server ids the key-sync client certificate does
not name (the KE replicas would refuse every registration), Secrets issued by
cert-manager that nothing mounts.

Usage: check_wiring.py RENDERED.yaml NAMESPACE
"""
import fnmatch
import sys
import tomllib

import yaml

import podrun

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main():
    rendered, ns = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    errors, checked = [], 0

    def pod_labels(w):
        return w["spec"]["template"]["metadata"]["labels"]

    def container_ports(w):
        ports = {}
        for c in w["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports") or []:
                ports[p.get("name", str(p["containerPort"]))] = p["containerPort"]
        return ports

    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        if not matches(w["spec"]["selector"]["matchLabels"], pod_labels(w)):
            errors.append(f"{name}: selector does not match its own pod labels")
        ports = container_ports(w)
        for c in w["spec"]["template"]["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    errors.append(f"{name}: {probe} port {port!r} is not a container port")
                checked += port is not None
        checked += 1

    services = by_kind.get("Service", [])
    for s in services:
        sel = s["spec"].get("selector")
        targets = [w for w in workloads if matches(sel, pod_labels(w))]
        if not targets:
            errors.append(f"Service/{s['metadata']['name']}: selects no workload")
            continue
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if not any(tp in container_ports(w) or tp in container_ports(w).values() for w in targets):
                errors.append(f"Service/{s['metadata']['name']}: targetPort {tp!r} is no container port")
        checked += 1

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind.get(kind, []):
            sel = (d["spec"].get("selector") or d["spec"].get("podSelector"))["matchLabels"]
            if not any(matches(sel, pod_labels(w)) for w in workloads):
                errors.append(f"{kind}/{d['metadata']['name']}: selects no pod")
            checked += 1

    for m in by_kind.get("ServiceMonitor", []):
        sel = m["spec"]["selector"]["matchLabels"]
        svcs = [s for s in services if matches(sel, s["metadata"]["labels"])]
        if not svcs:
            errors.append(f"ServiceMonitor/{m['metadata']['name']}: selects no Service")
        for e in m["spec"]["endpoints"]:
            if not any(e["port"] in [p.get("name") for p in s["spec"]["ports"]] for s in svcs):
                errors.append(f"ServiceMonitor/{m['metadata']['name']}: no selected Service has port {e['port']!r}")
        checked += 1

    # StatefulSet -> headless Service -> per-replica names the time servers use.
    sync_hosts = set()
    for sts in by_kind.get("StatefulSet", []):
        svc = next((s for s in services if s["metadata"]["name"] == sts["spec"]["serviceName"]), None)
        if svc is None or svc["spec"].get("clusterIP") != "None":
            errors.append(f"StatefulSet/{sts['metadata']['name']}: no headless Service {sts['spec']['serviceName']}")
            continue
        key_sync_port = container_ports(sts).get("key-sync")
        for i in range(sts["spec"]["replicas"]):
            sync_hosts.add(f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc:{key_sync_port}")
        checked += 1
    for cm in by_kind.get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            cfg = tomllib.loads(text)
            eps = (cfg.get("key_sync") or {}).get("endpoints")
            if eps is None:
                continue
            if sync_hosts and set(eps) != sync_hosts:
                errors.append(f"ConfigMap/{cm['metadata']['name']}: key_sync.endpoints {sorted(eps)} != replicas {sorted(sync_hosts)}")
            for c in by_kind.get("Certificate", []):
                if "server auth" in c["spec"].get("usages", []):
                    for ep in eps:
                        host = ep.rsplit(":", 1)[0]
                        if not any(fnmatch.fnmatch(host, n) and host.count(".") == n.count(".")
                                   for n in c["spec"]["dnsNames"]):
                            errors.append(f"Certificate/{c['metadata']['name']}: does not cover {host}")
            checked += 1

    # Time-server identities: the server_id each pod registers (NTS_SERVER_ID, or
    # key_sync.server_id) must be bound to a name of the client certificate all
    # time servers share (as ke-server/src/registration.rs checks), and differ per node.
    def bound(server_id, names):
        sid = server_id.lower()
        return any(n and (sid == n or (sid.startswith(n + ":") and len(sid) > len(n) + 1)) for n in names)

    certificates = {c["spec"]["secretName"]: c for c in by_kind.get("Certificate", [])}
    configmaps = {cm["metadata"]["name"]: cm for cm in by_kind.get("ConfigMap", [])}
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod.get("volumes") or []}
        for c in pod["containers"]:
            if not any("nts-time-server" in a for a in (c.get("command") or []) + (c.get("args") or [])):
                continue
            label = f"{w['kind']}/{w['metadata']['name']}"
            cfg = {}
            for m in c.get("volumeMounts") or []:
                cm = configmaps.get((vols[m["name"]].get("configMap") or {}).get("name"))
                if cm and m.get("subPath", "").endswith(".toml"):
                    cfg = tomllib.loads(cm["data"][m["subPath"]])
            ks = cfg.get("key_sync")
            if not ks:
                continue
            ids = []
            for node in ("node-a", "node-b"):
                fields = {"status.hostIP": "192.0.2.10", "status.podIP": "192.0.2.10", "spec.nodeName": node,
                          "metadata.name": f"pod-{node}", "metadata.namespace": ns}
                env = podrun.container_env(c, fields, label)
                ids.append(env.get("NTS_SERVER_ID", ks.get("server_id")))
            checked += 1
            if None in ids or ids[0] == ids[1]:
                errors.append(f"{label}: server_id {ids[0]!r} is the same on every node (the registry needs one per node)")
                continue
            chain = ks["certificate_chain"]
            mount = max((m for m in c.get("volumeMounts") or [] if chain.startswith(m["mountPath"].rstrip("/") + "/")),
                        key=lambda m: len(m["mountPath"]), default=None)
            secret = ((vols.get(mount["name"]) if mount else None) or {}).get("secret", {}).get("secretName")
            cert = certificates.get(secret)
            if cert is None:
                # An operator-provided Secret: the ids must share a fixed name a single certificate can hold.
                fixed = {i.split(":", 1)[0] for i in ids}
                if len(fixed) != 1 or not all(":" in i for i in ids):
                    errors.append(f"{label}: server_ids {ids} share no fixed name (NAME:NODE) the shared "
                                  f"client certificate in Secret {secret} could name")
                continue
            s = cert["spec"]
            names = [n.lower() for n in (s.get("dnsNames") or []) + (s.get("ipAddresses") or [])
                     + ([s["commonName"]] if s.get("commonName") else [])]
            for sid in ids:
                if not bound(sid, names):
                    errors.append(f"{label}: server_id {sid!r} is not bound to Certificate/{cert['metadata']['name']} "
                                  f"(names: {', '.join(names)}): the KE replicas would refuse every registration")
            if s.get("commonName") and s["commonName"].lower() not in [n.lower() for n in s.get("dnsNames") or []]:
                errors.append(f"Certificate/{cert['metadata']['name']}: commonName {s['commonName']!r} is not among "
                              f"its dnsNames (cert-manager and RFC 6125 go by the SANs)")

    mounted = {v["secret"]["secretName"] for w in workloads
               for v in w["spec"]["template"]["spec"].get("volumes") or [] if "secret" in v}
    for c in by_kind.get("Certificate", []):
        if c["spec"]["secretName"] not in mounted:
            errors.append(f"Certificate/{c['metadata']['name']}: its Secret {c['spec']['secretName']} is mounted by nothing")
        checked += 1

    for e in errors:
        print(f"  FAIL {e}")
    print(f"  {'ok  ' if not errors else 'FAIL'} wiring: {checked} references checked (selectors, ports, "
          f"headless Service, key-sync endpoints, certificate names, time-server ids), {len(errors)} problems")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
