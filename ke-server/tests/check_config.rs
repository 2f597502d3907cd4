//! `nts-ke-server --check-config` opens what start-up would open: each broken
//! case below passes the TOML parser, and must fail with a message that names
//! the configuration key and the reason (and start-up must refuse it too).

use nts_ke_server::dev_pki::DevPki;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn config(pki: &DevPki, root: &Path, client_ca: &Path, extra_ck: &str, log: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
[cookie_keys]
root_secret_file = {root:?}
{extra_ck}
[key_sync]
listen = "127.0.0.1:0"
client_ca = {client_ca:?}
certificate_chain = {ks_chain:?}
private_key = {ks_key:?}
[log]
level = "{log}"
"#,
        chain = pki.server_cert,
        key = pki.server_key,
        ks_chain = pki.keysync_cert,
        ks_key = pki.keysync_key,
    )
}

fn run(dir: &Path, text: &str, check: bool) -> (bool, String) {
    let path = dir.join("ke.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nts-ke-server"));
    cmd.arg("--config").arg(&path);
    if check {
        cmd.arg("--check-config");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn each_broken_file_is_named_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let root = tmp.path().join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    let good = config(&pki, &root, &pki.ca_cert, "", "info");
    let (ok, out) = run(tmp.path(), &good, true);
    assert!(ok && out.contains("configuration OK"), "{out}");

    let missing = tmp.path().join("missing.pem");
    let other = DevPki::ensure(&tmp.path().join("other")).unwrap().0;
    let short = tmp.path().join("short.key");
    std::fs::write(&short, "abc\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let loose = tmp.path().join("loose.key");
    std::fs::copy(&root, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let absent = tmp.path().join("absent/root.key");

    let s = |p: &Path| format!("{p:?}");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing certificate",
            good.replacen(&s(&pki.server_cert), &s(&missing), 1),
            "tls.certificate_chain",
            "cannot read",
        ),
        (
            "key not matching the certificate",
            good.replacen(&s(&pki.server_key), &s(&other.server_key), 1),
            "tls.private_key",
            "does not match",
        ),
        (
            "missing client CA",
            config(&pki, &root, &missing, "", "info"),
            "key_sync.client_ca",
            "cannot read",
        ),
        (
            "3-character root secret",
            config(&pki, &short, &pki.ca_cert, "", "info"),
            "cookie_keys.root_secret_file",
            "64 hexadecimal digits",
        ),
        (
            "invalid log level",
            config(&pki, &root, &pki.ca_cert, "", "infoo"),
            "log.level",
            "not a level",
        ),
        (
            "root secret readable by others",
            config(&pki, &loose, &pki.ca_cert, "", "info"),
            "cookie_keys.root_secret_file",
            "readable or writable by others",
        ),
        (
            "missing root secret, no create option",
            config(&pki, &absent, &pki.ca_cert, "", "info"),
            "cookie_keys.root_secret_file",
            "create_if_missing",
        ),
        (
            "key-sync key from another PKI",
            good.replacen(&s(&pki.keysync_key), &s(&other.keysync_key), 1),
            "key_sync.private_key",
            "does not match",
        ),
        (
            "unknown user",
            good.replacen("[server]\n", "[server]\nuser = \"no-such-user-nts\"\n", 1),
            "server.user",
            "no such user",
        ),
    ];
    for (what, text, key, reason) in &cases {
        for check in [true, false] {
            let (ok, out) = run(tmp.path(), text, check);
            assert!(!ok, "{what} (check={check}) passed:\n{out}");
            let line = out
                .lines()
                .find(|l| l.contains(key))
                .unwrap_or_else(|| panic!("{what}: no line names {key}:\n{out}"));
            assert!(
                out.contains(reason),
                "{what}: reason {reason:?} missing:\n{out}"
            );
            assert!(!line.is_empty());
        }
    }
    // Nothing was created for the missing secret, not even its directory.
    assert!(!absent.parent().unwrap().exists());
    // With the option, start-up creates it (check-config alone does not).
    let create = config(
        &pki,
        &absent,
        &pki.ca_cert,
        "create_if_missing = true",
        "info",
    );
    let (ok, out) = run(tmp.path(), &create, true);
    assert!(ok, "{out}");
    assert!(!absent.exists());
}

#[test]
fn acme_cache_must_be_writable_by_the_user() {
    if !nts_ops::privileges::running_as_root() || nix_user_missing("nobody") {
        eprintln!("skipped: needs root and the user nobody");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    let cache = tmp.path().join("acme");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n[acme]\ndomains = [\"nts.example.net\"]\ncache_dir = {cache:?}\nchallenge_listen = \"127.0.0.1:0\"\n[cookie_keys]\nroot_secret_file = {root:?}\n"
    );
    let (ok, out) = run(tmp.path(), &text, true);
    assert!(
        !ok && out.contains("acme.cache_dir") && out.contains("does not exist"),
        "{out}"
    );
    // Owned by root, mode 0700: nobody cannot write there.
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (ok, out) = run(tmp.path(), &text, true);
    assert!(!ok && out.contains("not writable by server.user"), "{out}");
    // Owned by the user: fine.
    std::os::unix::fs::chown(&cache, Some(uid_of("nobody")), None).unwrap();
    let (ok, out) = run(tmp.path(), &text, true);
    assert!(ok, "{out}");
}

fn passwd_line(name: &str) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .map(str::to_string)
}

fn nix_user_missing(name: &str) -> bool {
    passwd_line(name).is_none()
}

fn uid_of(name: &str) -> u32 {
    passwd_line(name)
        .and_then(|l| l.split(':').nth(2).and_then(|u| u.parse().ok()))
        .expect("uid in /etc/passwd")
}

/// `server.max_connections` (1024 by default) plus the key-sync handshakes
/// cannot run under a hard open-file limit of 1024: `--check-config` and
/// start-up both refuse, naming the settings and both limits; under a soft
/// limit alone, start-up raises it.
#[test]
fn max_connections_must_fit_the_open_file_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let root = tmp.path().join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    let path = tmp.path().join("ke.toml");
    std::fs::write(&path, config(&pki, &root, &pki.ca_cert, "", "info")).unwrap();
    let bin = env!("CARGO_BIN_EXE_nts-ke-server");
    let run = |limit: &str, extra: &[&str]| {
        let out = Command::new("prlimit")
            .arg(format!("--nofile={limit}"))
            .arg(bin)
            .arg("--config")
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = run("1024:1024", &["--check-config"]);
    assert!(!ok, "{out}");
    for word in ["server.max_connections", "RLIMIT_NOFILE", "1344", "1024"] {
        assert!(out.contains(word), "{word} missing: {out}");
    }
    let (ok, out) = run("1024:1024", &[]);
    assert!(!ok && out.contains("RLIMIT_NOFILE"), "{out}");
    // A soft limit below, a hard limit above: fine.
    let (ok, out) = run("1024:4096", &["--check-config"]);
    assert!(ok && out.contains("configuration OK"), "{out}");
}
