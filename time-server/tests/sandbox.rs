//! The seccomp filter is active in all three daemons: with the test hook
//! `NTS_SECCOMP_SELFTEST` set, each attempts a system call outside its
//! allow-list right after entering the sandbox and is killed by SIGSYS; with
//! the filter configured off the same call returns and the daemon runs on
//! (so the death comes from the filter, not from the hook).

use nts_ke_server::dev_pki::DevPki;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::ports::free_port;
use testkit::stack::cargo_bin;

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(args)
        .env("NTS_SECCOMP_SELFTEST", "1")
        .env_remove("NTS_SECCOMP")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// Wait for the process to end (Some(status)) or for `survived` to show in its log (None).
fn outcome(child: &mut Child, log: &Path, survived: &str) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(survived)
        {
            std::thread::sleep(Duration::from_millis(300));
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "neither died nor survived:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check(name: &str, bin: &Path, on: &Path, off: &Path, args: &[&str], dir: &Path) {
    let log = dir.join(format!("{name}-on.log"));
    let mut args_on = args.to_vec();
    args_on.push(on.to_str().unwrap());
    let mut child = spawn(bin, &args_on, &log);
    let st = outcome(&mut child, &log, "forbidden call returned");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let st = st
        .unwrap_or_else(|| panic!("{name}: survived a forbidden call with the filter on:\n{text}"));
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{name}: {st:?}\n{text}");
    assert!(
        text.contains("seccomp allow-list active"),
        "{name}:\n{text}"
    );

    let log = dir.join(format!("{name}-off.log"));
    let mut args_off = args.to_vec();
    args_off.push(off.to_str().unwrap());
    let mut child = spawn(bin, &args_off, &log);
    let st = outcome(&mut child, &log, "forbidden call returned");
    assert!(
        st.is_none(),
        "{name}: died with the filter off ({st:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn a_forbidden_call_kills_each_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (pki, _) = DevPki::ensure(dir).unwrap();
    let root = dir.join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();

    let ke = |seccomp: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nseccomp = {seccomp}\n[tls]\ncertificate_chain = {:?}\nprivate_key = {:?}\n[cookie_keys]\nroot_secret_file = {root:?}\n",
            free_port(),
            pki.server_cert,
            pki.server_key,
        )
    };
    let (on, off) = (dir.join("ke-on.toml"), dir.join("ke-off.toml"));
    std::fs::write(&on, ke(true)).unwrap();
    std::fs::write(&off, ke(false)).unwrap();
    check(
        "nts-ke-server",
        &cargo_bin("nts-ke-server", "nts-ke-server"),
        &on,
        &off,
        &["--config"],
        dir,
    );

    let ts = |seccomp: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nworkers = 1\nseccomp = {seccomp}\n[clock]\nlocal_reference = true\n[keys]\nroot_secret_file = {root:?}\n",
            free_port(),
        )
    };
    let (on, off) = (dir.join("ts-on.toml"), dir.join("ts-off.toml"));
    std::fs::write(&on, ts(true)).unwrap();
    std::fs::write(&off, ts(false)).unwrap();
    check(
        "nts-time-server",
        &cargo_bin("nts-time-server", "nts-time-server"),
        &on,
        &off,
        &["--config"],
        dir,
    );

    // The client has no [server] section: NTS_SECCOMP=off turns its filter off.
    let client = format!(
        "[[source]]\ntype = \"nts\"\naddress = \"127.0.0.1:{}\"\n[nts]\nca_files = [{:?}]\nsystem_roots = false\n[clock]\nmode = \"observe\"\n[status]\nsocket = {:?}\n",
        free_port(),
        pki.ca_cert,
        dir.join("status.sock"),
    );
    let cfg = dir.join("client.toml");
    std::fs::write(&cfg, client).unwrap();
    let bin = cargo_bin("nts-client", "nts-client");
    let log = dir.join("client-on.log");
    let mut child = spawn(&bin, &["run", "--config", cfg.to_str().unwrap()], &log);
    let st = outcome(&mut child, &log, "forbidden call returned");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        st.and_then(|s| s.signal()),
        Some(libc::SIGSYS),
        "client:\n{text}"
    );
    let log = dir.join("client-off.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(&bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NTS_SECCOMP_SELFTEST", "1")
        .env("NTS_SECCOMP", "off")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    assert!(
        outcome(&mut child, &log, "forbidden call returned").is_none(),
        "client died with the filter off:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
