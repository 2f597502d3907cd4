//! Real NTS clients (chrony 4.3, NTPsec 1.2.2) and NTPsec's ntpdig against
//! nts-ke-server plus nts-time-server on loopback. No client touches the clock:
//! chronyd runs with -x, NTPsec without CAP_SYS_TIME.

use std::time::Duration;
use testkit::chrony::{ChronyClient, NtsSource};
use testkit::stack::{Stack, TimeServerOptions};

fn stack_with(ts_opts: TimeServerOptions) -> Stack {
    Stack::start(&ts_opts).unwrap()
}

#[test]
fn chrony_client_gets_cookies_and_authenticated_time() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let s = stack_with(TimeServerOptions::default());
    // chrony is told only the KE port: the NTP port comes from Port Negotiation.
    let client = ChronyClient::builder(&bins)
        .source(NtsSource {
            host: "127.0.0.1".into(),
            ke_port: s.ke.port(),
            ntp_port: None,
        })
        .trusted_certs(s.pki.ca_path())
        .start()
        .unwrap();
    let status = client
        .wait_until(
            Duration::from_secs(60),
            "8 cookies, authenticated, selected",
            |st| {
                st.authdata
                    .first()
                    .is_some_and(|a| a.cookies == 8 && a.nak == 0)
                    && st
                        .ntpdata
                        .first()
                        .is_some_and(|n| n.authenticated && n.total_good_rx >= 4)
                    && st.sources.first().is_some_and(|src| src.reach != 0)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.ke.guard.logs(), s.ts.guard.logs()));
    let auth = &status.authdata[0];
    assert_eq!(
        auth.cookie_length, 104,
        "AES-SIV-CMAC-256 cookies are 104 bytes"
    );
    assert_eq!(auth.key_type, 15);
    let ntp = &status.ntpdata[0];
    assert_eq!(
        ntp.remote_port,
        s.ts.port(),
        "NTP went to the negotiated port"
    );
    assert_eq!(ntp.stratum, 1);
    assert!(ntp.tests_passed(), "{:?}", ntp.tests);
    // Same clock on both ends: the offset is tiny.
    let src = &status.sources[0];
    assert!(
        src.measured_offset.abs() < 0.001,
        "offset {}",
        src.measured_offset
    );
    assert_eq!(s.ke.metric("nts_ke_key_exchanges_total"), 1.0);
    assert!(s.ts.metric("nts_time_responses_total{kind=\"nts\"}") >= 4.0);
    assert_eq!(
        s.ts.metric("nts_time_requests_dropped_total{reason=\"auth_failed\"}"),
        0.0
    );
    eprintln!(
        "chrony via nts-time-server: offset {:+.1} us, delay {:.1} us, {} good responses",
        src.measured_offset * 1e6,
        ntp.peer_delay * 1e6,
        ntp.total_good_rx
    );
}

#[test]
fn ntpsec_client_gets_cookies_and_authenticated_time() {
    let Some(bins) = testkit::peers::require_ntpsec() else {
        return;
    };
    let s = stack_with(TimeServerOptions::default());
    // NTPsec verifies DNS names only: use localhost.
    let client = testkit::ntpsec::NtpsecClient::builder(&bins)
        .nts_server("localhost", s.ke.port())
        .ca(s.pki.ca_path())
        .start()
        .unwrap();
    let ke = client
        .wait_for_nts_ke(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ke.guard.logs()));
    assert!(ke.ok, "{ke:?}");
    assert_eq!(ke.cookies, Some(8));
    assert_eq!(ke.aead, Some(15));
    assert_eq!(ke.ntp_port, Some(s.ts.port()));
    let counters = client
        .wait_for_nts_responses(3, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ts.guard.logs()));
    assert_eq!(counters.client_recvs_error(), 0);
    assert!(s.ts.metric("nts_time_responses_total{kind=\"nts\"}") >= 3.0);
}

#[test]
fn ntpdig_gets_plain_ntp() {
    let Some(bins) = testkit::peers::require_ntpsec() else {
        return;
    };
    // ntpdig only speaks to port 123: hold the machine-wide lock NTPsec tests use for it.
    let _lock = testkit::ports::ResourceLock::acquire(
        testkit::ntpsec::PORT_123_LOCK,
        Duration::from_secs(300),
    )
    .expect("port 123 lock");
    let s = stack_with(TimeServerOptions {
        port: Some(123),
        ..Default::default()
    });
    let ntpdig = bins
        .ntpd
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("bin/ntpdig");
    let out = std::process::Command::new(&bins.capsh)
        .args(["--drop=cap_sys_time", "--"])
        .arg("-c")
        .arg(format!(
            "exec {} {} -j -t 5 127.0.0.1",
            bins.python3.display(),
            ntpdig.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ntpdig failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ntpdig -j prints one JSON object per server.
    assert!(
        text.contains("\"stratum\": 1") || text.contains("\"stratum\":1"),
        "{text}"
    );
    let offset: f64 = text
        .split("\"offset\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no offset in {text}"));
    assert!(offset.abs() < 0.01, "{offset}");
    assert_eq!(s.ts.metric("nts_time_responses_total{kind=\"plain\"}"), 1.0);
}

/// chrony with `xleave` over NTS: from its third response on, every answer
/// is interleaved (RFC 9769), carrying the kernel's transmit timestamp of the
/// previous response. A second chrony in basic mode runs alongside, and the
/// interleaved one's measured offset is no worse.
#[test]
fn chrony_xleave_client_gets_interleaved_responses() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let s = stack_with(TimeServerOptions::default());
    let source = NtsSource {
        host: "127.0.0.1".into(),
        ke_port: s.ke.port(),
        ntp_port: None,
    };
    let start = |name: &str, xleave: bool| {
        let mut b = ChronyClient::builder(&bins)
            .name(name)
            .source(source.clone())
            .trusted_certs(s.pki.ca_path())
            .poll(-2, -2);
        if xleave {
            b = b.server_option("xleave");
        }
        b.start().unwrap()
    };
    let xleave = start("chrony-xleave", true);
    let basic = start("chrony-basic", false);
    let ready = |c: &ChronyClient, want_interleaved: bool| {
        c.wait_until(Duration::from_secs(60), "authenticated responses", |st| {
            st.ntpdata.first().is_some_and(|n| {
                n.authenticated && n.total_good_rx >= 6 && n.interleaved == want_interleaved
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ts.guard.logs()))
    };
    ready(&xleave, true);
    ready(&basic, false);
    // Samples of both, side by side: chrony's last measurement each 0.25 s poll.
    let (mut xo, mut bo, mut xd, mut bd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut interleaved_seen = 0;
    for _ in 0..24 {
        std::thread::sleep(Duration::from_millis(250));
        let x = xleave.ntpdata().unwrap().remove(0);
        let b = basic.ntpdata().unwrap().remove(0);
        assert!(x.authenticated && b.authenticated);
        assert!(!b.interleaved, "basic client answered interleaved");
        if x.interleaved {
            interleaved_seen += 1;
        }
        xo.push(x.offset.abs());
        bo.push(b.offset.abs());
        xd.push(x.peer_delay);
        bd.push(b.peer_delay);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (xo, bo, xd, bd) = (
        median(&mut xo),
        median(&mut bo),
        median(&mut xd),
        median(&mut bd),
    );
    eprintln!(
        "chrony xleave+NTS vs basic: median |offset| {:.2} vs {:.2} us, median delay {:.2} vs {:.2} us, {interleaved_seen}/24 interleaved",
        xo * 1e6,
        bo * 1e6,
        xd * 1e6,
        bd * 1e6
    );
    assert!(interleaved_seen >= 20, "{interleaved_seen}/24 interleaved");
    // Same clock at both ends: both offsets are measurement error. Interleaved
    // must not be worse (a margin for a loaded 2-core machine).
    assert!(xo <= bo.max(5e-6) * 2.0, "interleaved {xo} vs basic {bo}");
    assert!(s.ts.metric("nts_time_interleaved_responses_total") >= 20.0);
    assert!(s.ts.metric("nts_time_transmit_timestamps_total{source=\"software\"}") >= 20.0);
    assert_eq!(
        s.ts.metric("nts_time_transmit_timestamps_unmatched_total"),
        0.0
    );
}
