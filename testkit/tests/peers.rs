//! The harness against real peers: chrony and NTPsec NTS clients against
//! chrony's NTS server, all on loopback.
//!
//! Skipped (with a `skipped:` line) when the peers are not installed, unless
//! `NTS_REQUIRE_PEERS=1`, which makes that a failure.

use std::time::Duration;

use testkit::certs::TestPki;
use testkit::chrony::{AuthMode, ChronyClient, ChronyServer, SourceState};
use testkit::ntpsec::NtpsecClient;
use testkit::peers;

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn chrony_client_against_chrony_server() {
    let Some(bins) = peers::require_chrony() else {
        return;
    };
    let pki = TestPki::generate().expect("generate test PKI");
    let server = ChronyServer::builder(&bins, &pki)
        .start()
        .expect("start chrony NTS server");
    let client = ChronyClient::builder(&bins)
        .nts_server("127.0.0.1", server.ke_port(), server.ntp_port())
        .trusted_certs(pki.ca_path())
        .start()
        .expect("start chrony NTS client");

    // NTS-KE done: 8 cookies held (chrony's NTS-KE server sends 8).
    let auth = client
        .wait_for_cookies(8, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].name, "127.0.0.1");
    assert_eq!(auth[0].mode, AuthMode::Nts);
    assert_eq!(auth[0].cookies, 8, "{auth:?}");
    assert_eq!(auth[0].key_type, 15, "AEAD_AES_SIV_CMAC_256: {auth:?}");
    assert_eq!(auth[0].key_length, 256);
    assert!(auth[0].cookie_length > 0);

    // Authenticated NTP responses.
    let ntp = client
        .wait_for_authenticated_response(TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert_eq!(ntp[0].remote_port, server.ntp_port());
    assert_eq!(ntp[0].remote_addr, "127.0.0.1");
    assert!(ntp[0].authenticated);
    assert!(ntp[0].tests_passed(), "{ntp:?}");
    assert_eq!(ntp[0].stratum, 1);

    // The source becomes selectable and reachable.
    let status = client
        .wait_until(TIMEOUT, "the source to be selected", |s| {
            s.sources
                .iter()
                .any(|src| src.state == SourceState::Selected && src.reach != 0)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert_eq!(status.sources[0].stratum, 1);

    // The server saw our NTS-KE connection and authenticated NTP packets.
    let stats = server
        .wait_for_stats(TIMEOUT, "authenticated packets at the server", |s| {
            s.nts_ke_connections_accepted >= 1 && s.authenticated_ntp_packets >= 1
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", client.logs()));
    assert_eq!(stats.nts_ke_connections_dropped, 0, "{stats:?}");

    // Explicit shutdown works and reaps both processes.
    client.stop().expect("stop client");
    server.stop().expect("stop server");
    assert!(!client.process().is_running());
    assert!(!server.process().is_running());
}

#[test]
fn chrony_client_rejects_untrusted_server() {
    let Some(bins) = peers::require_chrony() else {
        return;
    };
    let pki = TestPki::generate().expect("generate test PKI");
    let other = TestPki::generate().expect("generate second PKI");
    let server = ChronyServer::builder(&bins, &pki)
        .start()
        .expect("start chrony NTS server");
    // Trusts another CA: NTS-KE must fail, no cookies.
    let client = ChronyClient::builder(&bins)
        .nts_server("127.0.0.1", server.ke_port(), server.ntp_port())
        .trusted_certs(other.ca_path())
        .start()
        .expect("start chrony NTS client");
    // chrony 4.3 logs: "TLS handshake with 127.0.0.1:PORT (127.0.0.1) failed :
    // Error in the certificate verification. The certificate is NOT trusted. ..."
    let log = client
        .process()
        .wait_for_log_contains("TLS handshake with", TIMEOUT)
        .expect("a failed TLS handshake in chronyd's log");
    assert!(log.contains("certificate verification"), "{log}");
    let auth = client.authdata().expect("authdata");
    assert_eq!(auth[0].cookies, 0, "{auth:?}");
    assert!(auth[0].ke_attempts >= 1, "{auth:?}");
    let ntp = client.ntpdata().expect("ntpdata");
    assert!(
        ntp.iter().all(|d| d.total_valid_rx == 0),
        "no valid responses expected: {ntp:?}"
    );
}

#[test]
fn ntpsec_client_against_chrony_server() {
    let Some(chrony) = peers::require_chrony() else {
        return;
    };
    let Some(ntpsec) = peers::require_ntpsec() else {
        return;
    };
    let pki = TestPki::generate().expect("generate test PKI");
    let server = ChronyServer::builder(&chrony, &pki)
        .start()
        .expect("start chrony NTS server");
    // "localhost": OpenSSL's host check in NTPsec matches DNS names only.
    let client = NtpsecClient::builder(&ntpsec)
        .nts_server("localhost", server.ke_port())
        .ca(pki.ca_path())
        .start()
        .expect("start NTPsec NTS client");

    let ke = client
        .wait_for_nts_ke(TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert!(ke.ok);
    assert_eq!(ke.cookies, Some(8), "{ke:?}");
    assert_eq!(ke.aead, Some(15), "{ke:?}");
    assert_eq!(ke.ntp_port, Some(server.ntp_port()), "{ke:?}");
    assert_eq!(ke.server, format!("localhost:{}", server.ke_port()));

    // Authenticated NTP exchanges, counted by ntpd itself and by the server.
    let counters = client
        .wait_for_nts_responses(1, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    assert_eq!(counters.ke_probes_good(), 1, "{counters:?}");
    assert_eq!(counters.client_recvs_error(), 0, "{counters:?}");
    let stats = server
        .wait_for_stats(TIMEOUT, "authenticated packets at the server", |s| {
            s.authenticated_ntp_packets >= 1
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", client.logs()));
    assert!(stats.nts_ke_connections_accepted >= 1, "{stats:?}");

    let peers = client.peers().expect("ntpq -p");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].remote, "127.0.0.1");
    assert_ne!(peers[0].reach, 0, "{peers:?}");
}
