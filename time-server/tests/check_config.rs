//! `nts-time-server --check-config` opens what start-up would open, and names
//! the key and the reason for each broken case.

use nts_ke_server::dev_pki::DevPki;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("ts.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nts-time-server"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn broken_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let other = DevPki::ensure(&tmp.path().join("other")).unwrap().0;
    let key_sync = |ca: &Path, key: &Path, level: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[key_sync]\nendpoints = [\"127.0.0.1:4461\"]\nca = {ca:?}\ncertificate_chain = {cert:?}\nprivate_key = {key:?}\nserver_id = \"time-server:1\"\n[log]\nlevel = \"{level}\"\n",
            cert = pki.time_server_cert,
        )
    };
    let (ok, out) = run(
        tmp.path(),
        &key_sync(&pki.ca_cert, &pki.time_server_key, "debug"),
    );
    assert!(ok, "{out}");
    let root = tmp.path().join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
    let missing = tmp.path().join("missing.pem");
    let cases = [
        (
            key_sync(&missing, &pki.time_server_key, "info"),
            "key_sync.ca",
            "cannot read",
        ),
        (
            key_sync(&pki.ca_cert, &other.time_server_key, "info"),
            "key_sync.private_key",
            "do not match",
        ),
        (
            key_sync(&pki.ca_cert, &pki.time_server_key, "loud"),
            "log.level",
            "not a level",
        ),
        (
            format!("[server]\nlisten = [\"127.0.0.1:0\"]\n[keys]\nroot_secret_file = {root:?}\n"),
            "keys.root_secret_file",
            "readable or writable by others",
        ),
    ];
    for (text, key, reason) in cases {
        let (ok, out) = run(tmp.path(), &text);
        assert!(!ok, "{key} passed:\n{out}");
        assert!(
            out.lines().any(|l| l.contains(key) && l.contains(reason)),
            "{key} / {reason}:\n{out}"
        );
    }
}
