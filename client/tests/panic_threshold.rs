//! The panic threshold (`clock.panic_threshold`) must be heard: every time
//! it starts refusing the offset the agent logs a warning that names the
//! offset and the key, once per state change rather than once per poll.
//! Observe-only on loopback; the thresholds are set below the few
//! microseconds a loopback offset measures, so the threshold trips.

use std::process::Command;
use std::time::Duration;
use testkit::process::ChildGuard;
use testkit::stack::{self, Stack, TimeServerOptions};

#[test]
fn refusals_by_the_panic_threshold_are_logged_once_per_state_change() {
    let s = Stack::start(&TimeServerOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("status.sock");
    let config = format!(
        r#"[[source]]
type = "nts"
address = "127.0.0.1:{ke}"
[nts]
ca_files = [{ca:?}]
system_roots = false
ke_spread = 0.0
[clock]
minpoll = 0
maxpoll = 1
step_threshold = 0.000000001
panic_threshold = 0.000000002
[status]
socket = {socket:?}
[log]
level = "info"
"#,
        ke = s.ke.port(),
        ca = s.pki.ca_path(),
    );
    let path = dir.path().join("client.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(stack::cargo_bin("nts-client", "nts-client"));
    cmd.arg("run").arg("--config").arg(&path);
    let agent = ChildGuard::spawn_combined("nts-client", cmd, dir.path()).unwrap();
    let status = |f: &dyn Fn(&nts_client::status::StatusReport) -> bool| {
        testkit::wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
            nts_client::status::fetch(&socket).ok().filter(|r| f(r))
        })
        .unwrap_or_else(|| panic!("timed out\n{}", agent.logs()))
    };
    let first = status(&|r| r.panicked);
    // Several more refused updates: still one line per state change.
    status(&|r| r.updates >= first.updates + 5);
    let logs = agent.output();
    let refusals = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("clock.panic_threshold"))
        .collect::<Vec<_>>();
    assert!(!refusals.is_empty(), "no warning:\n{logs}");
    assert!(
        refusals[0].contains("offset=") && refusals[0].contains("threshold=2e-9"),
        "{}",
        refusals[0]
    );
    let recoveries = logs
        .lines()
        .filter(|l| l.contains("back within clock.panic_threshold"))
        .count();
    assert!(
        refusals.len() <= recoveries + 1,
        "{} warnings for {recoveries} recoveries:\n{logs}",
        refusals.len()
    );
    assert_eq!(s.ke.metric("nts_ke_key_exchanges_total"), 1.0);
}
