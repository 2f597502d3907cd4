//! The one-shot commands as an operator runs them: `query` against a server
//! whose clock is not synchronized (this machine's kernel clock is not, so a
//! time server that follows it says so), and output into a pipe that closes
//! early (`| head -1`).

use std::process::{Command, Stdio};
use testkit::certs::TestPki;
use testkit::stack::{self, KeServerOptions, TimeServerOptions};

/// A KE server and a time server that is NOT a local reference: it announces
/// whatever the kernel says, which on these machines is unsynchronized.
fn unsynchronized_stack(dir: &std::path::Path) -> (stack::Daemon, stack::Daemon, TestPki) {
    let pki = TestPki::generate().unwrap();
    let root = dir.join("root.key");
    stack::write_root_secret(&root).unwrap();
    let (port, mport) = (testkit::ports::free_port(), testkit::ports::free_port());
    let ts = stack::start_daemon(
        "nts-time-server",
        stack::cargo_bin("nts-time-server", "nts-time-server"),
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = 1\n[keys]\nroot_secret_file = {root:?}\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
        ),
        dir,
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("127.0.0.1:{mport}").parse().unwrap(),
        "NTP listening",
    )
    .unwrap();
    let ke = stack::start_ke_server(
        dir,
        &pki,
        &root,
        &KeServerOptions {
            ntp_port: port,
            ..Default::default()
        },
    )
    .unwrap();
    (ts, ke, pki)
}

fn kernel_is_synchronized() -> bool {
    // SAFETY: all-zero is a valid timex (modes = 0).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: modes = 0 only reads the kernel's clock state.
    let state = unsafe { libc::adjtimex(&mut tx) };
    state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

#[test]
fn query_measures_an_unsynchronized_server_and_warns() {
    if kernel_is_synchronized() {
        eprintln!("this machine's clock is synchronized: nothing unsynchronized to query");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // nts-time-server does not answer NTS while unsynchronized (clients then go
    // back to NTS-KE for a healthy server); plain NTP still gets the answer.
    let (ts, _ke, _pki) = unsynchronized_stack(dir.path());
    let out = Command::new(stack::cargo_bin("nts-client", "nts-client"))
        .args(["query", "--no-nts", "--samples", "3", "--interval", "0.1"])
        .arg(format!("127.0.0.1:{}", ts.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(text.contains("WARNING"), "{text}");
    assert!(text.contains("NOT synchronized"), "{text}");
    assert!(text.contains("authenticated   no"), "{text}");
    assert!(text.contains("samples         3"), "{text}");
    assert!(text.contains("stratum         16"), "{text}");
}

#[test]
fn closed_pipe_ends_quietly() {
    let s = stack::Stack::start(&TimeServerOptions::default()).unwrap();
    for sub in ["ke", "query"] {
        let mut child = Command::new(stack::cargo_bin("nts-client", "nts-client"))
            .args([sub, "--no-system-roots"])
            .arg("--ca")
            .arg(s.pki.ca_path())
            .arg(format!("127.0.0.1:{}", s.ke.port()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{sub}: {err}");
        assert!(out.status.success(), "{sub}: {:?} {err}", out.status);
    }
}

/// `query --xleave` over NTS and plain NTP against nts-time-server: the
/// first two answers are basic, every later one interleaved.
#[test]
fn query_xleave_gets_interleaved_answers() {
    let s = stack::Stack::start(&TimeServerOptions::default()).unwrap();
    for nts in [true, false] {
        let mut cmd = Command::new(stack::cargo_bin("nts-client", "nts-client"));
        cmd.args([
            "query",
            "--xleave",
            "--json",
            "--samples",
            "5",
            "--interval",
            "0.05",
        ]);
        if nts {
            cmd.arg("--ca")
                .arg(s.pki.ca_path())
                .arg("--no-system-roots");
            cmd.arg(format!("127.0.0.1:{}", s.ke.port()));
        } else {
            cmd.arg("--no-nts")
                .arg(format!("127.0.0.1:{}", s.ts.port()));
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["authenticated"], nts, "{v}");
        assert_eq!(v["samples"], 5, "{v}");
        assert_eq!(v["interleaved"], 3, "{v}");
    }
}

/// RFC 8915 4.1.7: without a Server Negotiation record the client SHALL use
/// the NTS-KE server's IP address, the one its TCP connection went to, not
/// the KE name resolved again (which may give another host).
#[test]
fn ke_without_server_record_uses_the_address_the_ke_connection_went_to() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate().unwrap();
    let root = dir.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let (port, mport) = (testkit::ports::free_port(), testkit::ports::free_port());
    // No `server` under [ntp]: only a Port Negotiation record is sent.
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n[ntp]\nport = 4999\n[cookie_keys]\nroot_secret_file = {root:?}\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
        chain = pki.chain_path(),
        key = pki.key_path(),
    );
    let _ke = stack::start_daemon(
        "nts-ke-server",
        stack::cargo_bin("nts-ke-server", "nts-ke-server"),
        &config,
        dir.path(),
        format!("127.0.0.1:{port}").parse().unwrap(),
        format!("127.0.0.1:{mport}").parse().unwrap(),
        "NTS-KE listening",
    )
    .unwrap();
    let out = Command::new(stack::cargo_bin("nts-client", "nts-client"))
        .args(["ke", "--no-system-roots", "--ca"])
        .arg(pki.ca_path())
        .arg(format!("localhost:{port}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(text.contains("ntp server  127.0.0.1:4999"), "{text}");
}
