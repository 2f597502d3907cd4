//! The agent (`nts-client run`) as a real process, observe-only, on loopback:
//! measured offsets against our servers and chrony's (same clock both ends, so
//! the truth is zero), and sources that fail in every way an NTS server can.
//! No test here lets anything adjust this machine's clock: the agent observes,
//! or runs without CAP_SYS_TIME.

use nts_client::status::StatusReport;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::certs::TestPki;
use testkit::process::ChildGuard;
use testkit::stack::{self, KeServerOptions, Stack, TimeServerOptions};

struct AgentProc {
    guard: ChildGuard,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn start_agent(sources: &str, ca: &Path, extra: &str) -> AgentProc {
    start_agent_with(sources, ca, extra, false)
}

fn start_agent_with(sources: &str, ca: &Path, extra: &str, drop_cap: bool) -> AgentProc {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("status.sock");
    let config = format!(
        r#"{sources}
[nts]
ca_files = [{ca:?}]
system_roots = false
ke_timeout = 3.0
ke_spread = 0.0
[clock]
minpoll = 0
maxpoll = 1
{extra}
[status]
socket = {socket:?}
[log]
level = "debug"
"#
    );
    let path = dir.path().join("client.toml");
    std::fs::write(&path, config).unwrap();
    let bin = stack::cargo_bin("nts-client", "nts-client");
    let cmd = if drop_cap {
        let capsh = testkit::peers::find(testkit::peers::Peer::Capsh).expect("capsh (libcap2-bin)");
        let mut c = Command::new(capsh);
        c.args(["--drop=cap_sys_time", "--", "-c"]).arg(format!(
            "exec {} run --config {}",
            bin.display(),
            path.display()
        ));
        c
    } else {
        let mut c = Command::new(bin);
        c.arg("run").arg("--config").arg(&path);
        c
    };
    let guard = ChildGuard::spawn_combined("nts-client", cmd, dir.path()).unwrap();
    guard
        .wait_for_log_contains("agent started", Duration::from_secs(30))
        .unwrap();
    AgentProc {
        guard,
        socket,
        _dir: dir,
    }
}

impl AgentProc {
    fn status(&self) -> StatusReport {
        nts_client::status::fetch(&self.socket)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.guard.logs()))
    }

    fn wait(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&StatusReport) -> bool,
    ) -> StatusReport {
        let got = testkit::wait_until(timeout, Duration::from_millis(200), || {
            nts_client::status::fetch(&self.socket)
                .ok()
                .filter(|r| f(r))
        });
        got.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}: {:#?}\n{}",
                nts_client::status::fetch(&self.socket).ok(),
                self.guard.logs()
            )
        })
    }

    /// Median of `n` successive filtered offsets of source 0.
    fn median_offset(&self, n: usize) -> f64 {
        let mut seen = Vec::new();
        let mut last_reach_updates = 0;
        while seen.len() < n {
            let r = self.wait(Duration::from_secs(30), "a new measurement", |r| {
                r.updates > last_reach_updates
            });
            last_reach_updates = r.updates;
            if let Some(o) = r.sources[0].offset {
                seen.push(o);
            }
        }
        seen.sort_by(f64::total_cmp);
        seen[seen.len() / 2]
    }
}

fn our_stack() -> Stack {
    Stack::start(&TimeServerOptions::default()).unwrap()
}

fn nts_source(port: u16) -> String {
    format!("[[source]]\ntype = \"nts\"\naddress = \"127.0.0.1:{port}\"\n")
}

#[test]
fn observe_only_offset_against_our_server() {
    let s = our_stack();
    let agent = start_agent(&nts_source(s.ke.port()), s.pki.ca_path(), "");
    let median = agent.median_offset(15);
    let r = agent.status();
    eprintln!(
        "agent vs nts-time-server: median offset {:+.1} us over 15 updates",
        median * 1e6
    );
    assert!(median.abs() < 50e-6, "median offset {median}");
    assert!(r.observe_only);
    assert_eq!(r.clock_commands, 0, "observe-only never touches the clock");
    let src = &r.sources[0];
    assert!(src.authenticated && src.ke_ok >= 1 && src.naks == 0 && src.auth_failures == 0);
    assert_eq!(src.cookies, 8, "the jar is kept full through placeholders");
    assert_eq!(src.state, "selected");
    assert!(s.ts.metric("nts_time_responses_total{kind=\"nts\"}") >= 15.0);
    let _ = &s.dir;
}

#[test]
fn observe_only_offset_against_chrony() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let pki = TestPki::generate().unwrap();
    let chrony = testkit::chrony::ChronyServer::builder(&bins, &pki)
        .start()
        .unwrap();
    let agent = start_agent(&nts_source(chrony.ke_port()), pki.ca_path(), "");
    let median = agent.median_offset(15);
    eprintln!(
        "agent vs chronyd NTS server: median offset {:+.1} us over 15 updates",
        median * 1e6
    );
    assert!(median.abs() < 50e-6, "median offset {median}");
    let r = agent.status();
    assert!(r.sources[0].authenticated && r.sources[0].ke_ok >= 1);
    assert_eq!(r.clock_commands, 0);
}

#[test]
fn failing_sources_are_marked_and_never_used() {
    // A: a good server. B: stops answering. C: NAKs every cookie (its keys differ from the
    // KE server's). D: answers with a broken authenticator. E: its KE certificate is untrusted.
    let good = our_stack();
    let dir = good.dir.path();

    // B: a second KE server pointing at a time server we then kill.
    let root_b = dir.join("root-b.key");
    stack::write_root_secret(&root_b).unwrap();
    let ts_b_dir = dir.join("b");
    std::fs::create_dir_all(&ts_b_dir).unwrap();
    let ts_b = stack::start_time_server(&ts_b_dir, &root_b, &TimeServerOptions::default()).unwrap();
    let ke_b = stack::start_ke_server(
        &ts_b_dir,
        &good.pki,
        &root_b,
        &KeServerOptions {
            ntp_port: ts_b.port(),
            ..Default::default()
        },
    )
    .unwrap();

    // C: KE with root C, time server with another root: every cookie gets a NAK.
    let c_dir = dir.join("c");
    std::fs::create_dir_all(&c_dir).unwrap();
    let (root_c, root_c_ts) = (c_dir.join("root.key"), c_dir.join("other.key"));
    stack::write_root_secret(&root_c).unwrap();
    stack::write_root_secret(&root_c_ts).unwrap();
    let ts_c = stack::start_time_server(&c_dir, &root_c_ts, &TimeServerOptions::default()).unwrap();
    let ke_c = stack::start_ke_server(
        &c_dir,
        &good.pki,
        &root_c,
        &KeServerOptions {
            ntp_port: ts_c.port(),
            ..Default::default()
        },
    )
    .unwrap();

    // D: KE server whose time server is a forger: it answers with a real response whose
    // authenticator is then corrupted.
    let d_dir = dir.join("d");
    std::fs::create_dir_all(&d_dir).unwrap();
    let root_d = d_dir.join("root.key");
    stack::write_root_secret(&root_d).unwrap();
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forger_port = forger.local_addr().unwrap().port();
    let ke_d = stack::start_ke_server(
        &d_dir,
        &good.pki,
        &root_d,
        &KeServerOptions {
            ntp_port: forger_port,
            ..Default::default()
        },
    )
    .unwrap();
    let ring_text = std::fs::read_to_string(&root_d).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let forged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let forged2 = forged.clone();
    let forger_thread = std::thread::spawn(move || {
        use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
        use nts_proto::ntp_server::{respond, RequestContext, ServerClock, ServerPolicy};
        let root = RootSecret::from_bytes(&hex_decode(ring_text.trim())).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ring = KeyRing::derive(&root, &KeySchedule::default(), now);
        let mut clock = ServerClock::unsynchronized(-20);
        clock.leap = nts_proto::ntp_packet::LeapIndicator::NoWarning;
        clock.stratum = 1;
        forger
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut out = [0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = forger.recv_from(&mut buf) else {
                continue;
            };
            let ctx = RequestContext {
                receive_timestamp: now_ntp(),
                unix_now: now,
                clock: &clock,
                ring: &ring,
                policy: &ServerPolicy::default(),
                rate_kiss: false,
            };
            let mut rnd = |b: &mut [u8]| b.fill(7);
            if let Ok(r) = respond(&buf[..n], &ctx, &mut out, &mut rnd, &mut now_ntp) {
                let len = r.len();
                out[len - 1] ^= 0x55; // corrupt the sealed cookies / tag
                let _ = forger.send_to(&out[..len], from);
                forged2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    // E: a KE server with a certificate from a CA the agent does not trust.
    let e_dir = dir.join("e");
    std::fs::create_dir_all(&e_dir).unwrap();
    let other_pki = TestPki::generate().unwrap();
    let ke_e = stack::start_ke_server(
        &e_dir,
        &other_pki,
        &good.dir.path().join("root.key"),
        &KeServerOptions {
            ntp_port: good.ts.port(),
            ..Default::default()
        },
    )
    .unwrap();

    let sources = [&good.ke, &ke_b, &ke_c, &ke_d, &ke_e]
        .iter()
        .map(|k| nts_source(k.port()))
        .collect::<String>();
    let agent = start_agent(&sources, good.pki.ca_path(), "");
    // B answers at first, then stops.
    agent.wait(Duration::from_secs(30), "source B measured", |r| {
        r.sources[1].reach != 0
    });
    ts_b.guard.stop().unwrap();

    let r = agent.wait(Duration::from_secs(60), "every failure to show", |r| {
        r.sources[1].timeouts >= 2
            && r.sources[2].naks >= 2
            && r.sources[3].auth_failures >= 2
            && r.sources[4].ke_failures >= 2
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    forger_thread.join().unwrap();
    assert!(forged.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    eprintln!("{}", r.render());

    // The good source is in use (B, good until it went silent, may still be combined
    // with it or even preferred for a while); the bad ones never are.
    assert!(
        ["selected", "combined"].contains(&r.sources[0].state.as_str()),
        "{}",
        r.sources[0].state
    );
    for (i, why) in [
        (2, "NAK"),
        (3, "bad authenticator"),
        (4, "untrusted certificate"),
    ] {
        let s = &r.sources[i];
        assert_eq!(s.reach, 0, "{why}: no measurement was ever accepted");
        assert!(s.offset.is_none(), "{why}: no offset recorded");
        assert!(
            !["selected", "combined"].contains(&s.state.as_str()),
            "{why}: {}",
            s.state
        );
        assert!(s.last_error.is_some(), "{why}: reported");
    }
    assert!(r.sources[2].ke_ok >= 2, "a NAK leads to a new key exchange");
    assert!(
        r.sources[4]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("certificate"),
        "{:?}",
        r.sources[4].last_error
    );
    assert_eq!(r.clock_commands, 0);
    // Everything is counted on /metrics too, per source.
    let text = nts_client::metrics::render(&r);
    assert!(text.contains("nts_client_source_naks_total"));
    drop(ke_b);
    drop(ke_c);
    drop(ke_d);
    drop(ke_e);
}

#[test]
fn without_cap_sys_time_it_observes_and_says_so() {
    let Some(_) = testkit::peers::require(&[testkit::peers::Peer::Capsh]) else {
        return;
    };
    let s = our_stack();
    // Asked to discipline, but the capability is dropped: it must fall back to observing.
    let agent = start_agent_with(
        &nts_source(s.ke.port()),
        s.pki.ca_path(),
        "mode = \"discipline\"\n",
        true,
    );
    agent
        .guard
        .wait_for_log_contains("lacks CAP_SYS_TIME", Duration::from_secs(10))
        .unwrap();
    let r = agent.wait(Duration::from_secs(30), "a measurement", |r| {
        r.sources[0].reach != 0
    });
    assert!(r.observe_only);
    assert_eq!(r.clock_commands, 0);
    assert!(agent.guard.is_running());
}

fn now_ntp() -> nts_proto::ntp_packet::NtpTimestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    nts_proto::ntp_packet::NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
