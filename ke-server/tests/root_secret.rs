//! The cookie root secret file under crashes: a KE server killed while
//! creating it must not leave a file on which every later start fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::certs::TestPki;
use testkit::process::ChildGuard;
use testkit::stack;

fn config(dir: &Path, pki: &TestPki, root: &Path) -> std::path::PathBuf {
    let (port, mport) = (testkit::ports::free_port(), testkit::ports::free_port());
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
port = 123
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        chain = pki.chain_path(),
        key = pki.key_path(),
    );
    let path = dir.join("ke.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn killed_while_creating_the_root_secret_the_next_start_works() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate_in(dir.path(), &["localhost"]).unwrap();
    let root = dir.path().join("keys").join("root.key");
    let cfg = config(dir.path(), &pki, &root);
    let bin = stack::cargo_bin("nts-ke-server", "nts-ke-server");
    // A file size limit of 0: the first write to a regular file raises
    // SIGXFSZ, which kills the process right after it created the file.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 0; exec {} --config {}",
            bin.display(),
            cfg.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the first start must have been killed");
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&cfg);
    let ke = ChildGuard::spawn_combined("nts-ke-server", cmd, dir.path()).unwrap();
    ke.wait_for_log_contains("NTS-KE listening", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("second start: {e}"));
    let text = std::fs::read_to_string(&root).unwrap();
    assert_eq!(text.trim().len(), 64, "{text:?}");
    let leftovers: Vec<_> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "root.key")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
