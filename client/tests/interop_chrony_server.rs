//! Our client code against chrony's NTS server (chronyd -x): key exchange
//! over TLS 1.3 with 8 cookies, then NTS-protected NTP with the cookies,
//! authenticated by chrony and checked by us.

use nts_client::ke;
use nts_proto::aead::AeadAlgorithm;
use std::time::Duration;
use testkit::certs::TestPki;
use testkit::chrony::ChronyServer;
use testkit::nts_probe::{nts_probe, NtsCredentials};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_exchange_and_nts_time_from_chrony() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let pki = TestPki::generate().unwrap();
    let server = ChronyServer::builder(&bins, &pki).start().unwrap();
    let roots = ke::root_store(&[pki.ca_path()], false).unwrap();
    let outcome = ke::key_exchange(
        "127.0.0.1",
        server.ke_port(),
        ke::tls_config(roots.clone()),
        &AeadAlgorithm::ALL,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("KE with chrony failed: {e}\n{}", server.logs()));
    assert_eq!(outcome.cookies.len(), 8);
    // chrony 4.3 implements AES-SIV-CMAC-256 only.
    assert_eq!(outcome.aead, AeadAlgorithm::AesSivCmac256);
    assert_eq!(
        outcome.ntp_port,
        server.ntp_port(),
        "chrony negotiates its NTP port"
    );

    // Use three cookies, asking for replacements through placeholders.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], outcome.ntp_port));
    let mut cookies = outcome.cookies.clone();
    for placeholders in [0, 1, 2] {
        let cookie = cookies.pop().unwrap();
        let probe = nts_probe(
            addr,
            NtsCredentials {
                cookie: &cookie,
                c2s: &outcome.c2s,
                s2c: &outcome.s2c,
                placeholders,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("NTS exchange with chrony failed: {e}\n{}", server.logs()));
        let sample = &probe.sample;
        assert!(sample.authenticated);
        assert_eq!(probe.cookies.len(), placeholders + 1);
        assert_eq!(sample.header.stratum, 1);
        assert!(sample.offset.abs() < 0.001, "{}", sample.offset);
        cookies.extend(probe.cookies);
    }
    assert_eq!(cookies.len(), 8 + 3);

    // A TLS client that does not trust chrony's CA is refused.
    let other = TestPki::generate().unwrap();
    let wrong = ke::root_store(&[other.ca_path()], false).unwrap();
    let err = ke::key_exchange(
        "127.0.0.1",
        server.ke_port(),
        ke::tls_config(wrong),
        &AeadAlgorithm::ALL,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ke::KeError::Tls(..)), "{err}");
    let stats = server.serverstats().unwrap();
    assert!(stats.authenticated_ntp_packets >= 3, "{stats:?}");
}
