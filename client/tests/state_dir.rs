//! The state directory (`nts.state_dir`) against a hostile neighbourhood:
//! planted symbolic links, a directory or file owned by another user, a
//! directory others may write to. Each case must stop the real agent at
//! start-up with a message naming the path and the reason, and nothing
//! outside the state directory may be written. Tests run as root; "another
//! user" is uid 12345. The agent only observes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::process::ChildGuard;
use testkit::stack::{self, Stack, TimeServerOptions};

const OTHER_UID: u32 = 12345;

/// A test folder with a config whose `[nts] state_dir` is `DIR/state`.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(ke_port: u16, ca: Option<&Path>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca_line = ca.map_or(String::new(), |c| format!("ca_files = [{c:?}]\n"));
        let config = format!(
            r#"[[source]]
type = "nts"
address = "127.0.0.1:{ke_port}"
[nts]
{ca_line}system_roots = false
ke_timeout = 3.0
ke_spread = 0.0
state_dir = {state:?}
[clock]
minpoll = 0
maxpoll = 1
[status]
socket = {socket:?}
[log]
level = "debug"
"#,
            state = dir.path().join("state"),
            socket = dir.path().join("status.sock"),
        );
        let path = dir.path().join("client.toml");
        std::fs::write(&path, config).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::set_permissions(
            dir.path().join("state"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        Setup { dir, config: path }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The association file the agent keeps for its one source.
    fn association(&self, ke_port: u16) -> PathBuf {
        self.state().join(format!("127.0.0.1_{ke_port}.nts"))
    }

    /// A file outside the state directory that must never change.
    fn victim(&self) -> PathBuf {
        let v = self.dir.path().join("victim");
        if !v.exists() {
            std::fs::write(&v, "precious\n").unwrap();
            std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        v
    }

    fn start(&self) -> ChildGuard {
        let mut c = Command::new(stack::cargo_bin("nts-client", "nts-client"));
        c.arg("run").arg("--config").arg(&self.config);
        ChildGuard::spawn_combined("nts-client", c, self.dir.path()).unwrap()
    }

    /// Start the agent and expect it to stop by itself, failing; its output.
    fn refused(&self) -> String {
        let agent = self.start();
        let deadline = Instant::now() + Duration::from_secs(15);
        while agent.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = agent.exit_status().unwrap();
        let out = agent.output();
        let _ = agent.stop();
        match status {
            None => panic!("the agent kept running:\n{out}"),
            Some(s) => assert!(!s.success(), "the agent exited 0:\n{out}"),
        }
        out
    }

    fn check_config(&self) -> std::process::Output {
        Command::new(stack::cargo_bin("nts-client", "nts-client"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--check-config")
            .output()
            .unwrap()
    }
}

fn unused_port() -> u16 {
    testkit::ports::free_port()
}

fn assert_victim_untouched(s: &Setup) {
    let v = s.victim();
    assert_eq!(std::fs::read_to_string(&v).unwrap(), "precious\n");
    assert_eq!(std::fs::metadata(&v).unwrap().mode() & 0o777, 0o644);
}

fn assert_names(out: &str, path: &Path, reason: &str) {
    assert!(
        out.contains(&path.display().to_string()) && out.contains(reason),
        "want {} and {reason:?} in:\n{out}",
        path.display()
    );
}

/// The text of a saved association that sends the agent to `ntp_port` on loopback.
fn planted_association(ntp_port: u16) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "nts-association 1\naead 15\nc2s {k}\ns2c {k}\nntp {ntp_port} 127.0.0.1\nestablished {now}\ncookie {c}\n",
        k = "11".repeat(32),
        c = "22".repeat(100),
    )
}

#[test]
fn a_symlink_as_the_association_temp_file_is_refused_and_its_target_untouched() {
    // The attack that truncated a victim file: the temporary file the agent
    // writes before renaming it over the association is a planted link.
    let s = Stack::start(&TimeServerOptions::default()).unwrap();
    let setup = Setup::new(s.ke.port(), Some(s.pki.ca_path()));
    let mut tmp = setup.association(s.ke.port()).into_os_string();
    tmp.push(".tmp");
    std::os::unix::fs::symlink(setup.victim(), &tmp).unwrap();
    let out = setup.refused();
    assert_names(&out, Path::new(&tmp), "symbolic link");
    assert_victim_untouched(&setup);
    assert_eq!(s.ke.metric("nts_ke_key_exchanges_total"), 0.0);
}

#[test]
fn a_symlink_as_the_association_file_is_refused() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    std::os::unix::fs::symlink(setup.victim(), setup.association(port)).unwrap();
    let out = setup.refused();
    assert_names(&out, &setup.association(port), "symbolic link");
    assert_victim_untouched(&setup);
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    std::os::unix::fs::chown(setup.state(), Some(OTHER_UID), None).unwrap();
    let out = setup.refused();
    assert_names(&out, &setup.state(), "owned by uid 12345");
    let check = setup.check_config();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert_names(&err, &setup.state(), "owned by uid 12345");
}

#[test]
fn a_world_writable_state_dir_is_refused() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    // Sticky or not: others may plant files in it.
    std::fs::set_permissions(setup.state(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = setup.refused();
    assert_names(&out, &setup.state(), "writable by others");
    let check = setup.check_config();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert_names(&err, &setup.state(), "writable by others");
}

#[test]
fn a_group_writable_state_dir_is_refused() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    std::fs::set_permissions(setup.state(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let out = setup.refused();
    assert_names(&out, &setup.state(), "writable by its group");
}

#[test]
fn an_association_file_planted_by_another_user_is_refused_and_never_polled() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    let ntp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ntp_port = ntp.local_addr().unwrap().port();
    let file = setup.association(port);
    std::fs::write(&file, planted_association(ntp_port)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let out = setup.refused();
    assert_names(&out, &file, "owned by uid 12345");
    ntp.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        ntp.recv_from(&mut buf).is_err(),
        "the planted file's server was polled:\n{out}"
    );
}

#[test]
fn a_state_dir_that_is_a_symlink_is_refused() {
    let port = unused_port();
    let setup = Setup::new(port, None);
    let real = setup.dir.path().join("elsewhere");
    std::fs::rename(setup.state(), &real).unwrap();
    std::os::unix::fs::symlink(&real, setup.state()).unwrap();
    let out = setup.refused();
    assert_names(&out, &setup.state(), "symbolic link");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}
