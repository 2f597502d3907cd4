"""A rendered pod's container as `docker run` arguments, shared by
check_config.py (one container, --check-config, no network) and
chart_stack.py (every pod of the chart running together).

What a container gets here is what the kubelet would give it:
  - command and args, with $(VAR) expanded from its env as the kubelet does;
  - env: literal values and downward-API fields (fieldRef) from a table the
    caller fills (sample values, or the container's real address and node);
  - ConfigMap and Secret volumes laid out as the kubelet's atomic writer does
    (files are symlinks into a timestamped directory through `..data`), with
    defaultMode, group fsGroup and group read added; a subPath mount binds the
    one file; emptyDir: root-owned, 0777, and with fsGroup its group and setgid
    (2777), as the kubelet makes it; hostPath: a directory of the pod's node
    (shared by every pod on that node, kept across pod re-creation), no fsGroup
    applied: DirectoryOrCreate makes it root 0755 as the kubelet does,
    Directory needs it made beforehand (NODE_PREPARED: what README.md tells
    operators to create), CharDevice needs a character device at that path on
    this machine (or /dev/null as a stand-in, when the caller allows it);
  - resources.limits.memory as the container's memory limit (--memory);
  - runAsUser/runAsGroup, fsGroup as a supplementary group, capabilities
    (drop ALL, add what the manifest adds, never SYS_TIME: the clock is not
    namespaced), readOnlyRootFilesystem, allowPrivilegeEscalation=false as
    no-new-privileges. `privileged: true` is never granted (it would give
    SYS_TIME): such a container runs with its listed capabilities only.
Secrets that are not in the rendered manifests (operator-provided, or filled
by cert-manager) come from a callback, so each caller decides their content.
"""
import base64
import os
import re
import subprocess
import time

VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
# Capabilities a test never grants, whatever the manifest asks for.
NEVER_CAPS = {"SYS_TIME"}
# hostPath directories (type Directory) the README tells operators to create on
# every node beforehand: path -> (uid, gid, mode).
NODE_PREPARED = {"/var/lib/nts-client": (10001, 10001, 0o700)}
UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def quantity_bytes(q):
    """A Kubernetes memory quantity (64Mi, 1G, 1048576) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(|k|M|G|Ki|Mi|Gi)", str(q))
    if not m:
        raise SystemExit(f"memory quantity {q!r} is not supported here")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def expand(text, env):
    """$(VAR) expansion as the kubelet does it; $$(VAR) escapes; unknown $(X) stays."""
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


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def index(all_docs):
    """{(kind, name): doc} of the rendered manifests."""
    return {(d["kind"], d["metadata"]["name"]): d for d in all_docs}


def workloads(all_docs):
    for d in all_docs:
        if d["kind"] in WORKLOAD_KINDS:
            yield d, d["spec"]["template"]["spec"]


def container_env(c, fields, label):
    """The container's env in order, as {name: value}: literal values expanded
    with the variables before them, fieldRef from `fields` (fieldPath -> value)."""
    env = {}
    for e in c.get("env") or []:
        if "value" in e:
            v = expand(str(e["value"]), env)
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise SystemExit(f"{label}: env {e['name']} uses fieldRef {path}, which this test does not provide")
            v = fields[path]
        else:
            raise SystemExit(f"{label}: env {e['name']} has an unsupported source")
        env[e["name"]] = v
    return env


def container_argv(c, env, label):
    argv = [expand(str(a), env) for a in (c.get("command") or []) + (c.get("args") or [])]
    if not argv:
        raise SystemExit(f"{label}: no command")
    return argv


def write_volume(dirpath, files, mode, gid):
    """A configMap/secret volume as the kubelet's atomic writer leaves it:
    DIR/..TIMESTAMP/FILE (the data), DIR/..data -> ..TIMESTAMP, DIR/FILE ->
    ..data/FILE; files get defaultMode, group gid (fsGroup) and group read."""
    os.makedirs(dirpath, exist_ok=True)
    os.chmod(dirpath, 0o755)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000001", time.gmtime())
    data_dir = os.path.join(dirpath, stamp)
    os.makedirs(data_dir)
    os.chmod(data_dir, 0o755)
    for name, data in files.items():
        p = os.path.join(data_dir, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chown(p, 0, gid if gid is not None else 0)
        os.chmod(p, mode | (0o040 if gid is not None else 0))
    os.symlink(stamp, os.path.join(dirpath, "..data"))
    for name in {n.split("/", 1)[0] for n in files}:
        os.symlink(os.path.join("..data", name), os.path.join(dirpath, name))


def volume_files(vol, docs, external_secret):
    """The files a configMap/secret volume shows: {path: bytes}.
    external_secret(name, keys) gives the data of a Secret the chart does not render."""
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
            data.update({k: v.encode() for k, v in (s.get("stringData") or {}).items()})
        else:
            keys = [i["key"] for i in items] if items else None
            data = external_secret(name, keys)
    if items:
        missing = [i["key"] for i in items if i["key"] not in data]
        if missing:
            raise SystemExit(f"volume {vol['name']}: keys {missing} are not in its ConfigMap/Secret")
        return {i.get("path", i["key"]): data[i["key"]] for i in items}
    return data


def host_path(vol, node_dir, label, stand_in_devices):
    """The node-side path of a hostPath volume, made as the kubelet (or the operator) would."""
    hp = vol["hostPath"]
    path, kind = hp["path"], hp.get("type", "")
    if kind == "CharDevice":
        import stat
        try:
            if stat.S_ISCHR(os.stat(path).st_mode):
                return path
        except FileNotFoundError:
            pass
        if stand_in_devices:
            return "/dev/null"
        raise SystemExit(f"{label}: hostPath {path} (type CharDevice) is no character device on this node: "
                         f"the kubelet would not start the pod")
    host = os.path.join(node_dir, path.lstrip("/"))
    if not os.path.isdir(host):
        if kind == "DirectoryOrCreate":
            os.makedirs(host)
            os.chown(host, 0, 0)
            os.chmod(host, 0o755)
        elif kind == "Directory" and path in NODE_PREPARED:
            uid, gid, mode = NODE_PREPARED[path]
            os.makedirs(host)
            os.chown(host, uid, gid)
            os.chmod(host, mode)
        else:
            raise SystemExit(f"{label}: hostPath {path} (type {kind or 'unchecked'}) is not supported here")
    return host


def docker_args(pod, c, docs, external_secret, workdir, fields, label, node_dir=None, stand_in_devices=False):
    """`docker run` options (without network, name and image) that give container c
    of pod what the kubelet would, its argv (expanded) and env. node_dir: where
    the pod's node keeps hostPath directories (default: one per container).
    Returns (options, argv, env)."""
    env = container_env(c, fields, label)
    argv = container_argv(c, env, label)
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup", uid))
    fs_group = psc.get("fsGroup")
    opts = ["--cap-drop", "ALL"]
    if csc.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    if csc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    if uid is not None:
        opts += ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if fs_group is not None:
        opts += ["--group-add", str(fs_group)]
    for cap in (csc.get("capabilities") or {}).get("add") or []:
        if cap in NEVER_CAPS:
            continue
        opts += ["--cap-add", cap]
    memory = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    if memory:
        opts += ["--memory", str(quantity_bytes(memory)), "--memory-swap", str(quantity_bytes(memory))]
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    base = os.path.join(workdir, re.sub(r"[^A-Za-z0-9_.-]", "_", label))
    for i, m in enumerate(c.get("volumeMounts") or []):
        if m["name"] not in vols:
            raise SystemExit(f"{label}: volumeMount {m['name']} has no volume")
        vol = vols[m["name"]]
        host = os.path.join(base, f"{i}-{m['name']}")
        if "configMap" in vol or "secret" in vol:
            src = vol.get("configMap") or vol.get("secret")
            mode = src.get("defaultMode", 0o644)
            write_volume(host, volume_files(vol, docs, external_secret), mode, fs_group)
            if m.get("subPath"):
                # The kubelet bind-mounts the file itself (a subPath never sees updates).
                host = os.path.realpath(os.path.join(host, m["subPath"]))
                if not os.path.isfile(host):
                    raise SystemExit(f"{label}: subPath {m['subPath']} is not in volume {m['name']}")
        elif "hostPath" in vol:
            host = host_path(vol, node_dir or os.path.join(base, "node"), label, stand_in_devices)
        elif "emptyDir" in vol or "persistentVolumeClaim" in vol:
            os.makedirs(host)
            if fs_group is not None:
                os.chown(host, 0, fs_group)
            os.chmod(host, 0o2777 if fs_group is not None else 0o777)
        else:
            raise SystemExit(f"{label}: volume {m['name']} has an unsupported type")
        opts += ["-v", f"{host}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    for k, v in env.items():
        opts += ["-e", f"{k}={v}"]
    return opts, argv, env


class TestCA:
    """A throwaway CA (openssl) that signs leaves the way cert-manager's CA
    issuer does from a Certificate spec."""

    USAGES = {  # cert-manager usage -> (keyUsage, extendedKeyUsage)
        "digital signature": ("digitalSignature", None),
        "key encipherment": ("keyEncipherment", None),
        "server auth": (None, "serverAuth"),
        "client auth": (None, "clientAuth"),
    }

    def __init__(self, workdir, name, subject):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.key, self.crt = self.path("ca.key"), self.path("ca.crt")
        run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-keyout", self.key, "-out", self.crt, "-subj", f"/CN={subject}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        self.serial = 0

    def path(self, name):
        return os.path.join(self.dir, name)

    def ca_pem(self):
        with open(self.crt, "rb") as f:
            return f.read()

    def sign(self, common_name=None, dns=(), ips=(), usages=("digital signature", "key encipherment"),
             key_algorithm="ECDSA", key_size=256):
        """{tls.crt, tls.key, ca.crt} as cert-manager's CA issuer writes them.
        Default usages are cert-manager's (digital signature, key encipherment)."""
        self.serial += 1
        n = f"leaf{self.serial}"
        key, csr, crt, ext = (self.path(f"{n}.{s}") for s in ("key", "csr", "crt", "ext"))
        if key_algorithm == "ECDSA":
            curve = {256: "P-256", 384: "P-384", 521: "P-521"}[int(key_size or 256)]
            newkey = ["-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}"]
        elif key_algorithm == "RSA":
            newkey = ["-newkey", f"rsa:{int(key_size or 2048)}"]
        else:
            raise SystemExit(f"TestCA: private key algorithm {key_algorithm} is not supported here")
        ku, eku = [], []
        for u in usages:
            if u not in self.USAGES:
                raise SystemExit(f"TestCA: usage {u!r} is not supported here")
            k, e = self.USAGES[u]
            ku += [k] if k else []
            eku += [e] if e else []
        lines = ["basicConstraints=CA:FALSE"]
        if ku:
            lines.append("keyUsage=critical," + ",".join(ku))
        if eku:
            lines.append("extendedKeyUsage=" + ",".join(eku))
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        # cert-manager puts only commonName in the subject (empty subject without it).
        subj = f"/CN={common_name}" if common_name else "/"
        run(["openssl", "req", "-new", *newkey, "-nodes", "-keyout", key, "-out", csr, "-subj", subj])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self.crt, "-CAkey", self.key,
             "-set_serial", str(1000 + self.serial), "-days", "2", "-out", crt, "-extfile", ext])
        out = {}
        for k, p in (("tls.crt", crt), ("tls.key", key), ("ca.crt", self.crt)):
            with open(p, "rb") as f:
                out[k] = f.read()
        return out

    def issue(self, certificate):
        """Sign what a cert-manager Certificate resource asks for."""
        s = certificate["spec"]
        pk = s.get("privateKey") or {}
        return self.sign(common_name=s.get("commonName"), dns=s.get("dnsNames") or (),
                         ips=s.get("ipAddresses") or (),
                         usages=s.get("usages") or ("digital signature", "key encipherment"),
                         key_algorithm=pk.get("algorithm", "RSA"), key_size=pk.get("size"))
