//! PROXY protocol on the NTS-KE listener, end to end over loopback TCP: a
//! relay on 127.0.0.1 (the trusted balancer) puts a v1 or v2 header in front
//! of a real client's NTS-KE exchange; the address it carries is the one the
//! per-address limits apply to; headers from 127.0.0.2 (untrusted) are
//! refused, and a trusted peer without a complete header is closed.

mod common;

use nts_proto::proxy_protocol::V2_SIGNATURE;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const SERVER: &str = "proxy_trusted_networks = [\"127.0.0.1/32\"]\nmax_connections_per_address = 1\nhandshake_timeout = 1.0\n";

/// A v2 PROXY (TCP over IPv4) header naming `source` as the client.
fn v2(source: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(ip), port) = (source.ip(), source.port()) else {
        panic!("IPv4 only here")
    };
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
    h.extend_from_slice(&ip.octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&4460u16.to_be_bytes());
    h.extend_from_slice(&[0x04, 0x00, 0x04, b'n', b'o', b'o', b'p']); // a NOOP TLV, skipped
    h
}

fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

fn v1(source: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} 127.0.0.1 {} 4460\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

/// A relay (the balancer): each client connection to it becomes a connection
/// from 127.0.0.1 to `target` opening with `header`.
async fn relay(target: SocketAddr, header: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let mut up = TcpStream::connect(target).await.unwrap();
                up.write_all(&header).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            });
        }
    });
    addr
}

async fn exchange_via(server: &common::KeServer, port: u16) -> Result<usize, String> {
    nts_client::ke::key_exchange(
        "127.0.0.1",
        port,
        server.client_config(),
        &nts_proto::aead::AeadAlgorithm::ALL,
        Duration::from_secs(5),
    )
    .await
    .map(|o| o.cookies.len())
    .map_err(|e| e.to_string())
}

/// A raw connection from `source` that sends `first` and then stays silent.
async fn raw(source: Ipv4Addr, target: SocketAddr, first: &[u8]) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let mut s = sock.connect(target).await.unwrap();
    s.write_all(first).await.unwrap();
    s
}

/// The server closes `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn wait_metric(server: &common::KeServer, selector: &str, value: u64) {
    let seen = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        (server.metric(selector) == value).then_some(())
    });
    assert!(
        seen.is_some(),
        "{selector} = {} not {value}\n{}",
        server.metric(selector),
        server.guard.logs()
    );
}

#[tokio::test]
async fn exchanges_through_v2_v1_and_local_headers_succeed() {
    let server = common::start(SERVER);
    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for header in [v2(client), v1(client), v2_local()] {
        let port = relay(server.addr, header).await.port();
        assert_eq!(exchange_via(&server, port).await, Ok(8));
    }
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"accepted\"}",
        2,
    );
    wait_metric(&server, "nts_ke_proxy_headers_total{result=\"local\"}", 1);
    wait_metric(&server, "nts_ke_key_exchanges_total", 3);
    assert!(
        server.guard.logs().contains("client=192.0.2.7:40000"),
        "{}",
        server.guard.logs()
    );
}

#[tokio::test]
async fn the_carried_address_is_the_one_limited() {
    // max_connections_per_address = 1: all three come from 127.0.0.1, but
    // only the two carrying the same client evict each other.
    let server = common::start(SERVER);
    let forged: SocketAddr = "192.0.2.7:1000".parse().unwrap();
    let other: SocketAddr = "192.0.2.8:1000".parse().unwrap();
    let lo = Ipv4Addr::LOCALHOST;
    let mut first = raw(lo, server.addr, &v2(forged)).await;
    wait_metric(&server, "nts_ke_active_connections", 1);
    let mut second = raw(lo, server.addr, &v1(forged)).await;
    assert!(closed_within(&mut first, Duration::from_secs(5)).await);
    wait_metric(
        &server,
        "nts_ke_connections_evicted_total{reason=\"prefix_full\"}",
        1,
    );
    let mut third = raw(lo, server.addr, &v2(other)).await;
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"accepted\"}",
        3,
    );
    wait_metric(&server, "nts_ke_active_connections", 2);
    for (reason, n) in [("prefix_full", 1), ("table_full", 0)] {
        assert_eq!(
            server.metric(&format!(
                "nts_ke_connections_evicted_total{{reason=\"{reason}\"}}"
            )),
            n,
            "another carried client takes its own slot ({reason})"
        );
    }
    assert!(!closed_within(&mut second, Duration::from_millis(300)).await);
    assert!(!closed_within(&mut third, Duration::from_millis(10)).await);
}

#[tokio::test]
async fn headers_from_untrusted_peers_and_trusted_peers_without_one_are_refused() {
    let server = common::start(SERVER);
    let claimed: SocketAddr = "192.0.2.7:1000".parse().unwrap();
    let untrusted = Ipv4Addr::new(127, 0, 0, 2);
    for header in [v2(claimed), v1(claimed)] {
        let mut s = raw(untrusted, server.addr, &header).await;
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    }
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"untrusted\"}",
        2,
    );
    // A trusted peer straight to the server, no header: the ClientHello is refused.
    assert!(exchange_via(&server, server.addr.port()).await.is_err());
    wait_metric(&server, "nts_ke_proxy_headers_total{result=\"missing\"}", 1);
    // A malformed header from a trusted peer.
    let mut s = raw(
        Ipv4Addr::LOCALHOST,
        server.addr,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 01 4460\r\n",
    )
    .await;
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"malformed\"}",
        1,
    );
    assert_eq!(server.metric("nts_ke_key_exchanges_total"), 0);
}

#[tokio::test]
async fn a_truncated_header_times_out_or_ends_truncated() {
    let server = common::start(SERVER);
    let header = v2("192.0.2.7:1000".parse().unwrap());
    let mut stalled = raw(Ipv4Addr::LOCALHOST, server.addr, &header[..20]).await;
    // handshake_timeout = 1.0: closed after about a second, not before.
    assert!(!closed_within(&mut stalled, Duration::from_millis(500)).await);
    assert!(closed_within(&mut stalled, Duration::from_secs(3)).await);
    wait_metric(&server, "nts_ke_proxy_headers_total{result=\"timeout\"}", 1);
    let cut = raw(Ipv4Addr::LOCALHOST, server.addr, &header[..9]).await;
    drop(cut);
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"truncated\"}",
        1,
    );
    assert_eq!(server.metric("nts_ke_active_connections"), 0);
}

#[tokio::test]
async fn headers_beyond_max_connections_being_read_are_refused() {
    // max_connections = 1: one header may be read at a time; the stalled one
    // holds that place until handshake_timeout, so the next is closed at once.
    let server = common::start(&format!("{SERVER}max_connections = 1\n"));
    let header = v2("192.0.2.7:1000".parse().unwrap());
    let mut stalled = raw(Ipv4Addr::LOCALHOST, server.addr, &header[..20]).await;
    let mut next = raw(Ipv4Addr::LOCALHOST, server.addr, &header).await;
    assert!(closed_within(&mut next, Duration::from_millis(900)).await);
    wait_metric(
        &server,
        "nts_ke_proxy_headers_total{result=\"overloaded\"}",
        1,
    );
    assert_eq!(
        server.metric("nts_ke_proxy_headers_total{result=\"timeout\"}"),
        0,
        "the stalled header is still being read"
    );
    assert!(closed_within(&mut stalled, Duration::from_secs(3)).await);
    wait_metric(&server, "nts_ke_proxy_headers_total{result=\"timeout\"}", 1);
}
