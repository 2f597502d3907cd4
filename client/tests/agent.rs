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
    start_agent_full(sources, ca, extra, "", drop_cap)
}

/// `clock_extra` goes into `[clock]`, `nts_extra` into `[nts]`.
fn start_agent_full(
    sources: &str,
    ca: &Path,
    clock_extra: &str,
    nts_extra: &str,
    drop_cap: bool,
) -> AgentProc {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("status.sock");
    let config = format!(
        r#"{sources}
[nts]
ca_files = [{ca:?}]
system_roots = false
ke_timeout = 3.0
ke_spread = 0.0
{nts_extra}
[clock]
minpoll = 0
maxpoll = 1
{clock_extra}
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
    // Observing, it keeps no capability at all, and can never gain one.
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.guard.pid())).unwrap();
    for field in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        let line = proc_status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(proc_status.contains("NoNewPrivs:\t1"), "{proc_status}");
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

/// A source with `xleave = true`: from its third answer on, the server sends
/// the kernel's transmit timestamp of its previous response (RFC 9769) and the
/// agent measures with it. Against nts-time-server and against chronyd.
fn interleaved_source_against(ke_port: u16, ca: &Path, server: &str) -> StatusReport {
    let source =
        format!("[[source]]\ntype = \"nts\"\naddress = \"127.0.0.1:{ke_port}\"\nxleave = true\n");
    let agent = start_agent(&source, ca, "");
    let r = agent.wait(Duration::from_secs(60), "6 interleaved answers", |r| {
        r.sources[0].interleaved_answers >= 6
    });
    let src = &r.sources[0];
    eprintln!(
        "agent xleave vs {server}: {} of {} answers interleaved, offset {:+.2} us, delay {:.2} us",
        src.interleaved_answers,
        src.interleaved_answers + src.basic_answers,
        src.offset.unwrap_or(f64::NAN) * 1e6,
        src.delay.unwrap_or(f64::NAN) * 1e6
    );
    assert!(src.xleave && src.authenticated && src.auth_failures == 0);
    // The first two answers can only be basic; every later one is interleaved.
    assert!(src.basic_answers <= 3, "{src:?}");
    assert!(src.offset.unwrap().abs() < 50e-6, "{src:?}");
    assert!(agent.status().render().contains("xleave: "));
    r
}

#[test]
fn interleaved_mode_against_our_server() {
    let s = our_stack();
    interleaved_source_against(s.ke.port(), s.pki.ca_path(), "nts-time-server");
    assert!(s.ts.metric("nts_time_interleaved_responses_total") >= 6.0);
}

#[test]
fn interleaved_mode_against_chrony() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let pki = TestPki::generate().unwrap();
    let chrony = testkit::chrony::ChronyServer::builder(&bins, &pki)
        .start()
        .unwrap();
    interleaved_source_against(chrony.ke_port(), pki.ca_path(), "chronyd");
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
                previous_transmit: None,
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

/// What the on-path attacker sent ahead of the genuine answers.
#[derive(Debug, Default)]
struct AttackCounts {
    requests: u64,
    forged_naks: u64,
    forged_kisses: u64,
    garbage: u64,
    replays: u64,
    tampered: u64,
    genuine: u64,
}

/// A UDP relay in front of the time server that, for every request, first
/// sends the client a forged NTS NAK, forged RATE and DENY kisses (all with
/// the request's origin and Unique Identifier, as an on-path attacker can),
/// random garbage, a replay of an earlier genuine answer, and a tampered copy
/// of the genuine answer; only then the genuine answer.
fn hostile_relay(
    upstream: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::thread::JoinHandle<AttackCounts>) {
    use nts_proto::ntp_packet::{Mode, NtpHeader};
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = front.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(upstream).unwrap();
        back.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        front
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut c = AttackCounts::default();
        let mut last_genuine: Option<Vec<u8>> = None;
        let mut buf = [0u8; 2048];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, client)) = front.recv_from(&mut buf) else {
                continue;
            };
            let req = buf[..n].to_vec();
            let Ok((h, rest)) = NtpHeader::parse(&req) else {
                continue;
            };
            c.requests += 1;
            let uid_field = rest.get(..36).unwrap_or(&[]).to_vec();
            let forged = |stratum: u8, refid: [u8; 4]| {
                let mut p = NtpHeader {
                    leap: nts_proto::ntp_packet::LeapIndicator::Unsynchronized,
                    version: 4,
                    mode: Mode::Server,
                    stratum,
                    reference_id: refid,
                    origin_timestamp: h.transmit_timestamp,
                    receive_timestamp: h.transmit_timestamp,
                    transmit_timestamp: h.transmit_timestamp,
                    ..Default::default()
                }
                .to_bytes()
                .to_vec();
                p.extend_from_slice(&uid_field);
                p
            };
            let _ = front.send_to(&forged(0, *b"NTSN"), client);
            c.forged_naks += 1;
            for code in [*b"RATE", *b"DENY"] {
                let _ = front.send_to(&forged(0, code), client);
                c.forged_kisses += 1;
            }
            // A forged "answer" claiming a time 1000 s off, unauthenticated.
            let mut lie = forged(1, *b"GPS\0");
            lie[0] = 0x24; // leap 0, v4, server
            let _ = front.send_to(&lie, client);
            c.forged_kisses += 1;
            let mut junk = vec![0u8; 40 + (seed % 200) as usize];
            for b in junk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let _ = front.send_to(&junk, client);
            c.garbage += 1;
            if let Some(old) = &last_genuine {
                let _ = front.send_to(old, client);
                c.replays += 1;
            }
            let _ = back.send(&req);
            let Ok(m) = back.recv(&mut buf) else {
                continue;
            };
            let genuine = buf[..m].to_vec();
            let mut tampered = genuine.clone();
            let at = tampered.len() - 3;
            tampered[at] ^= 0x5a;
            let _ = front.send_to(&tampered, client);
            c.tampered += 1;
            let _ = front.send_to(&genuine, client);
            c.genuine += 1;
            last_genuine = Some(genuine);
        }
        c
    });
    (port, handle)
}

#[test]
fn on_path_attacker_cannot_knock_the_source_over() {
    let seconds: u64 = std::env::var("NTS_ATTACK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate().unwrap();
    let root = dir.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let ts = stack::start_time_server(dir.path(), &root, &TimeServerOptions::default()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (relay_port, relay) = hostile_relay(ts.addr, stop.clone());
    // The KE server sends clients to the relay: every answer passes the attacker.
    let ke = stack::start_ke_server(
        dir.path(),
        &pki,
        &root,
        &KeServerOptions {
            ntp_port: relay_port,
            ..Default::default()
        },
    )
    .unwrap();
    let agent = start_agent(&nts_source(ke.port()), pki.ca_path(), "");
    let started = std::time::Instant::now();
    agent.wait(Duration::from_secs(30), "a first authentic sample", |r| {
        r.sources[0].reach != 0
    });
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(started.elapsed()));
    let r = agent.status();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = relay.join().unwrap();
    eprintln!("{}", r.render());
    eprintln!("attacker over {seconds} s: {counts:?}");
    let s = &r.sources[0];
    eprintln!(
        "agent: requests {} accepted reach {:o}, NAKs noted {}, ignored {} (unauthenticated {}, forged {}, stray/replayed {}, malformed {}), key exchanges {}",
        s.requests, s.reach, s.naks, s.ignored, s.ignored_unauthenticated, s.auth_failures,
        s.ignored_mismatch, s.ignored_malformed, s.ke_ok
    );
    assert!(counts.requests >= 10, "{counts:?}");
    assert_eq!(s.ke_ok, 1, "no key exchange beyond the first");
    assert_eq!(ke.metric("nts_ke_key_exchanges_total"), 1.0);
    assert_eq!(s.state, "selected");
    assert!(
        s.reach & 0b1111 == 0b1111,
        "the last polls all got authentic answers: {:o}",
        s.reach
    );
    assert!(s.offset.unwrap().abs() < 1e-3, "{:?}", s.offset);
    assert_eq!(s.cookies, 8, "the jar stays full");
    assert!(s.kiss.is_none(), "no forged kiss was acted on");
    assert!(
        s.naks + 1 >= counts.forged_naks,
        "every forged NAK was seen and noted"
    );
    // The relay may have served one more request after the status was read.
    assert!(s.ignored_unauthenticated + 3 >= counts.forged_kisses);
    assert!(s.auth_failures + 1 >= counts.tampered);
    assert!(s.ignored_mismatch + 1 >= counts.replays);
    assert!(r.synchronized);
    assert_eq!(r.clock_commands, 0);
    drop(ts);
}

#[test]
fn restarted_agent_resumes_its_cookies_without_a_key_exchange() {
    let s = our_stack();
    let state = tempfile::tempdir().unwrap();
    let nts_extra = format!("state_dir = {:?}\n", state.path().join("nts"));
    let first = start_agent_full(
        &nts_source(s.ke.port()),
        s.pki.ca_path(),
        "",
        &nts_extra,
        false,
    );
    first.wait(Duration::from_secs(30), "a measurement", |r| {
        r.sources[0].reach != 0 && r.sources[0].cookies == 8
    });
    first.guard.stop().unwrap();
    let kes = s.ke.metric("nts_ke_key_exchanges_total");
    assert_eq!(kes, 1.0);
    let file = std::fs::read_dir(state.path().join("nts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "nts"))
        .expect("a saved association");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the file holds keys");
    let dir_mode = std::fs::metadata(state.path().join("nts"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    let second = start_agent_full(
        &nts_source(s.ke.port()),
        s.pki.ca_path(),
        "",
        &nts_extra,
        false,
    );
    let r = second.wait(
        Duration::from_secs(30),
        "a measurement after the restart",
        |r| r.sources[0].reach != 0,
    );
    assert!(second
        .guard
        .logs()
        .contains("resuming the saved NTS association"));
    assert_eq!(r.sources[0].ke_ok, 0, "no key exchange after the restart");
    assert_eq!(s.ke.metric("nts_ke_key_exchanges_total"), kes);
    assert!(r.sources[0].authenticated);

    // A damaged file is said once and replaced by a key exchange.
    second.guard.stop().unwrap();
    std::fs::write(&file, "nts-association 1\naead 99\n").unwrap();
    let third = start_agent_full(
        &nts_source(s.ke.port()),
        s.pki.ca_path(),
        "",
        &nts_extra,
        false,
    );
    let r = third.wait(
        Duration::from_secs(30),
        "a measurement with a new key exchange",
        |r| r.sources[0].reach != 0,
    );
    assert!(third
        .guard
        .logs()
        .contains("ignoring damaged saved NTS cookies"));
    assert_eq!(r.sources[0].ke_ok, 1);
}

#[test]
fn ipv6_end_to_end() {
    // KE server and time server on ::1 only; the KE server sends clients to "::1".
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate().unwrap();
    let root = dir.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let (ts_port, ts_m, ke_port, ke_m) = (
        testkit::ports::free_port(),
        testkit::ports::free_port(),
        testkit::ports::free_port(),
        testkit::ports::free_port(),
    );
    let ts = stack::start_daemon(
        "nts-time-server",
        stack::cargo_bin("nts-time-server", "nts-time-server"),
        &format!(
            "[server]\nlisten = [\"[::1]:{ts_port}\"]\nworkers = 1\n[clock]\nlocal_reference = true\nstratum = 1\nreference_id = \"LOCL\"\n[keys]\nroot_secret_file = {root:?}\n[metrics]\nlisten = \"127.0.0.1:{ts_m}\"\n"
        ),
        dir.path(),
        "[::1]:0".parse().unwrap(),
        format!("127.0.0.1:{ts_m}").parse().unwrap(),
        "NTP listening",
    )
    .unwrap();
    let ke = stack::start_daemon(
        "nts-ke-server",
        stack::cargo_bin("nts-ke-server", "nts-ke-server"),
        &format!(
            "[server]\nlisten = [\"[::1]:{ke_port}\"]\n[tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n[ntp]\nserver = \"::1\"\nport = {ts_port}\n[cookie_keys]\nroot_secret_file = {root:?}\n[metrics]\nlisten = \"127.0.0.1:{ke_m}\"\n",
            chain = pki.chain_path(),
            key = pki.key_path(),
        ),
        dir.path(),
        "[::1]:0".parse().unwrap(),
        format!("127.0.0.1:{ke_m}").parse().unwrap(),
        "NTS-KE listening",
    )
    .unwrap();
    let source = format!("[[source]]\ntype = \"nts\"\naddress = \"[::1]:{ke_port}\"\n");
    let agent = start_agent(&source, pki.ca_path(), "");
    let r = agent.wait(
        Duration::from_secs(30),
        "an authenticated IPv6 sample",
        |r| r.sources[0].reach != 0,
    );
    let s = &r.sources[0];
    eprintln!("{}", r.render());
    assert_eq!(
        s.name,
        format!("[::1]:{ke_port}"),
        "IPv6 names print with brackets"
    );
    assert_eq!(
        s.ntp_address.as_deref(),
        Some(format!("[::1]:{ts_port}").as_str())
    );
    assert!(s.authenticated && s.ke_ok == 1);
    assert!(s.offset.unwrap().abs() < 1e-3);
    assert!(r.render().contains(&format!("[::1]:{ts_port}")));
    drop((ts, ke));
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
