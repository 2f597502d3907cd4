//! A battery of hostile and broken NTS-KE clients against a real server
//! process: each gets the right Error record or is cut off, is counted, and
//! the server keeps answering good clients.

mod common;

use nts_proto::ke_record::{ErrorCode, Record};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn records(list: &[(Record, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (r, c) in list {
        r.encode(*c, &mut out);
    }
    out
}

fn good_records() -> Vec<(Record, bool)> {
    vec![
        (Record::NextProtocol(vec![0]), true),
        (Record::AeadAlgorithm(vec![15]), true),
        (Record::EndOfMessage, true),
    ]
}

enum Ending {
    /// Send, then close our side (TLS close_notify) and read the answer.
    CloseWrite,
    /// Send, keep the connection open and read.
    KeepOpen,
}

/// Send `bytes` over TLS in one write and return what the server answers before closing.
async fn send_raw(
    server: &common::KeServer,
    cfg: Arc<rustls::ClientConfig>,
    bytes: &[u8],
    ending: Ending,
) -> Vec<u8> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    // Writes may fail once the server has answered and closed; that is fine.
    let _ = tls.write_all(bytes).await;
    if let Ending::CloseWrite = ending {
        let _ = tls.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    out
}

fn error_code(response: &[u8]) -> Option<ErrorCode> {
    match Record::decode(response).ok()? {
        nts_proto::ke_record::Decoded::Record {
            record: Record::Error(code),
            ..
        } => Some(code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_of_bad_requests() {
    let server = common::start(
        "handshake_timeout = 1.0\nrequest_timeout = 1.0\nconnections_per_minute = 0\n",
    );
    let cfg = server.client_config();

    // A good client first.
    let ok = server.good_exchange().await;
    assert_eq!(ok.cookies.len(), 8);
    assert_eq!((ok.ntp_server.as_str(), ok.ntp_port), ("127.0.0.1", 4123));

    // Unknown critical record: error 0.
    let mut req = good_records();
    req.insert(
        1,
        (
            Record::Unknown {
                critical: true,
                record_type: 0x3fff,
                body: vec![1, 2],
            },
            true,
        ),
    );
    let resp = send_raw(&server, cfg.clone(), &records(&req), Ending::KeepOpen).await;
    assert_eq!(
        error_code(&resp),
        Some(ErrorCode::UnrecognizedCriticalRecord)
    );

    // Unknown non-critical record: ignored, cookies issued.
    let mut req = good_records();
    req.insert(
        1,
        (
            Record::Unknown {
                critical: false,
                record_type: 0x3fff,
                body: vec![1, 2],
            },
            false,
        ),
    );
    let resp = send_raw(&server, cfg.clone(), &records(&req), Ending::KeepOpen).await;
    let decoded = nts_proto::ke_client::ResponseDecoder::new()
        .feed(&resp)
        .unwrap()
        .unwrap();
    assert_eq!(decoded.cookies.len(), 8);

    // Missing AEAD record, a duplicate Next Protocol, and a malformed body: error 1.
    for bad in [
        records(&[
            (Record::NextProtocol(vec![0]), true),
            (Record::EndOfMessage, true),
        ]),
        records(&[
            (Record::NextProtocol(vec![0]), true),
            (Record::NextProtocol(vec![0]), true),
            (Record::EndOfMessage, true),
        ]),
        vec![0x80, 0x01, 0x00, 0x03, 0, 0, 0, 0x80, 0, 0, 0],
    ] {
        let resp = send_raw(&server, cfg.clone(), &bad, Ending::KeepOpen).await;
        assert_eq!(error_code(&resp), Some(ErrorCode::BadRequest), "{bad:?}");
    }

    // Truncated record, then the client closes its side: error 1.
    let resp = send_raw(
        &server,
        cfg.clone(),
        &[0x80, 0x01, 0x00, 0x02, 0x00],
        Ending::CloseWrite,
    )
    .await;
    assert_eq!(error_code(&resp), Some(ErrorCode::BadRequest));

    // Oversized record announced in the header: cut at the byte limit with error 1.
    let mut huge = vec![0x00, 0x05, 0xff, 0xff];
    huge.extend(vec![0u8; 65535]);
    let resp = send_raw(&server, cfg.clone(), &huge, Ending::KeepOpen).await;
    assert_eq!(error_code(&resp), Some(ErrorCode::BadRequest));

    // 10,000 records: error 1.
    let mut many = Vec::new();
    for _ in 0..10_000 {
        Record::Warning(0).encode(true, &mut many);
    }
    let resp = send_raw(&server, cfg.clone(), &many, Ending::KeepOpen).await;
    assert_eq!(error_code(&resp), Some(ErrorCode::BadRequest));

    // Missing End of Message, connection kept open: cut off at request_timeout, no answer.
    let start = Instant::now();
    let req = records(&good_records()[..2]);
    let resp = send_raw(&server, cfg.clone(), &req, Ending::KeepOpen).await;
    assert!(resp.is_empty(), "{resp:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(900) && start.elapsed() < Duration::from_secs(5)
    );

    // Slow client: one byte every 300 ms never finishes within request_timeout.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let start = Instant::now();
    let mut cut = false;
    for b in records(&good_records()) {
        if tls.write_all(&[b]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let elapsed = start.elapsed();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "slow client must not get cookies");
    // Either our writes failed once the server hung up, or the whole request (sent over
    // about 4 s) went unanswered; the hang-up comes no sooner than request_timeout.
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(cut || elapsed > Duration::from_secs(3), "{elapsed:?}");

    // Idle TCP connection that never starts TLS: cut at handshake_timeout.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("server must close an idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // No ALPN: handshake completes, the server closes without an answer.
    let roots = nts_client::ke::root_store(&[server.ca()], false).unwrap();
    let mut no_alpn = (*nts_client::ke::tls_config(roots.clone())).clone();
    no_alpn.alpn_protocols.clear();
    let resp = send_raw(
        &server,
        Arc::new(no_alpn),
        &records(&good_records()),
        Ending::KeepOpen,
    )
    .await;
    assert!(resp.is_empty());

    // TLS 1.2 only: the handshake fails.
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls12 = tls12;
    tls12.alpn_protocols = vec![b"ntske/1".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    assert!(r.is_err(), "TLS 1.2 must be refused");

    // The server still serves a good client.
    assert_eq!(server.good_exchange().await.cookies.len(), 8);

    // Everything was counted.
    let m = |s: &str| server.metric(s);
    assert_eq!(
        m("nts_ke_request_errors_total{reason=\"unrecognized_critical\"}"),
        1
    );
    assert!(m("nts_ke_request_errors_total{reason=\"bad_request\"}") >= 4);
    assert!(
        m("nts_ke_request_errors_total{reason=\"too_large\"}")
            + m("nts_ke_request_errors_total{reason=\"too_many_records\"}")
            >= 2
    );
    assert_eq!(
        m("nts_ke_connections_cut_off_total{reason=\"request_timeout\"}"),
        2
    );
    assert!(m("nts_ke_connections_cut_off_total{reason=\"handshake_timeout\"}") >= 1);
    assert_eq!(m("nts_ke_connections_cut_off_total{reason=\"no_alpn\"}"), 1);
    assert!(m("nts_ke_connections_cut_off_total{reason=\"handshake_failed\"}") >= 1);
    assert_eq!(m("nts_ke_key_exchanges_total"), 3);
    assert_eq!(m("nts_ke_cookies_issued_total"), 24);
    assert!(server.guard.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_rate_limit_and_connection_cap() {
    let server =
        common::start("connections_per_minute = 5\nmax_connections = 3\nhandshake_timeout = 2.0\n");
    // 5 exchanges pass, the 6th from the same address is refused at once.
    for _ in 0..5 {
        server.good_exchange().await;
    }
    let r = nts_client::ke::key_exchange(
        "127.0.0.1",
        server.addr.port(),
        server.client_config(),
        &nts_proto::aead::AeadAlgorithm::ALL,
        Duration::from_secs(5),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(
        server.metric("nts_ke_connections_refused_total{reason=\"rate_limited\"}"),
        1
    );

    // Another address is not affected: connect from 127.0.0.2.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(server.client_config())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(&records(&good_records())).await.unwrap();
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap();
    let decoded = nts_proto::ke_client::ResponseDecoder::new()
        .feed(&resp)
        .unwrap()
        .unwrap();
    assert_eq!(decoded.cookies.len(), 8);

    // Connection cap: three idle connections from other addresses hold every slot.
    let mut idle = Vec::new();
    for i in 3..6 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("127.0.0.{i}:0").parse().unwrap())
            .unwrap();
        idle.push(sock.connect(server.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new client still gets its key exchange: the oldest idle connection
    // (every address holds one) makes room, the others stay.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(server.client_config())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a new client is admitted when every slot is taken: {e}\n{}",
                server.guard.logs()
            )
        });
    tls.write_all(&records(&good_records()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.guard.logs()));
    let mut resp = Vec::new();
    tls.read_to_end(&mut resp).await.unwrap();
    let decoded = nts_proto::ke_client::ResponseDecoder::new()
        .feed(&resp)
        .unwrap()
        .unwrap();
    assert_eq!(decoded.cookies.len(), 8);
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(1), idle[0].read(&mut buf))
        .await
        .expect("the oldest idle connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    for still in &mut idle[1..] {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), still.read(&mut buf))
                .await
                .is_err(),
            "only the oldest was closed"
        );
    }
    assert_eq!(
        server.metric("nts_ke_connections_evicted_total{reason=\"table_full\"}"),
        1
    );
    drop(idle);
    // Once the idle ones are gone, service resumes.
    let ok = testkit::wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        (server.metric("nts_ke_active_connections") == 0).then_some(())
    });
    assert!(ok.is_some());
}
