//! NTS-KE under an idle-connection flood from many addresses (issue 21): each
//! flooding address stays under the per-address connection-rate limit and
//! holds a few silent connections, together far more than
//! `server.max_connections`. A legitimate client must still get its key
//! exchanges.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Addresses in the flood, and silent connections each keeps open.
const ADDRESSES: u32 = 300;
const PER_ADDRESS: u32 = 2;

/// Keep `PER_ADDRESS` silent connections open from each of `ADDRESSES`
/// loopback addresses, reopening one a second after the server closes it
/// (one new connection per second per address: under the default limit).
fn flood(target: SocketAddr) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..ADDRESSES {
        let source = IpAddr::V4(Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8));
        for _ in 0..PER_ADDRESS {
            tasks.push(tokio::spawn(async move {
                loop {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(SocketAddr::new(source, 0)).unwrap();
                    if let Ok(mut s) = sock.connect(target).await {
                        let mut b = [0u8; 256];
                        while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_exchanges_succeed_during_an_idle_flood_from_300_addresses() {
    // 600 silent connections against 256 slots.
    let server = common::start("max_connections = 256\n");
    let flood = flood(server.addr);
    let full = testkit::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        (server.metric("nts_ke_active_connections") >= 256).then_some(())
    });
    assert!(full.is_some(), "the flood did not fill the slots");
    let (mut ok, mut failed) = (0u32, Vec::new());
    let t0 = Instant::now();
    for _ in 0..40 {
        let r = nts_client::ke::key_exchange(
            "127.0.0.1",
            server.addr.port(),
            server.client_config(),
            &nts_proto::aead::AeadAlgorithm::ALL,
            Duration::from_secs(5),
        )
        .await;
        match r {
            Ok(o) if o.cookies.len() == 8 => ok += 1,
            Ok(o) => failed.push(format!("{} cookies", o.cookies.len())),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let took = t0.elapsed();
    let still_full = server.metric("nts_ke_active_connections");
    for f in &flood {
        f.abort();
    }
    println!(
        "{ok}/40 key exchanges succeeded in {took:?} during the flood ({still_full} connections open at the end)"
    );
    assert!(
        ok >= 38,
        "only {ok}/40 key exchanges succeeded during the flood: {failed:?}"
    );
    assert!(still_full >= 200, "the flood was not holding the slots");
}
