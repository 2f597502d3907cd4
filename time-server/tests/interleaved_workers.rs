//! Interleaved mode on several workers, as chrony uses it: a new source port
//! for every request. The server keeps each client's previous transmit
//! timestamp in the worker that answered it, so every request of an address
//! must reach that worker whether rate limiting is on or off (issue 18: with
//! steering tied to rate limiting, about half the answers on 2 workers were
//! basic).
//!
//! The first request is basic, and the server keeps a transmit timestamp only
//! for a request that asks for interleaved mode (its origin names one of the
//! server's receive timestamps), so basic clients cost it nothing: the second
//! answer is basic too, and every answer from the third on must be interleaved.

use nts_proto::interleaved::InterleavedClient;
use nts_proto::ntp_client::{build_request_interleaved, check_response};
use nts_proto::ntp_packet::NtpTimestamp;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::stack::{Stack, TimeServerOptions};

const EXCHANGES: usize = 24;

fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

/// The first exchange that can be answered interleaved.
const FIRST_INTERLEAVED: usize = 2;

/// Exchanges answered interleaved from [`FIRST_INTERLEAVED`] on.
fn interleaved_answers(server: SocketAddr) -> usize {
    let mut client = InterleavedClient::new();
    let mut buf = Vec::new();
    let mut interleaved = 0;
    for i in 0..EXCHANGES {
        // A new socket each time: the kernel's reuseport hash would pick a
        // worker by 4-tuple.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let pending =
            build_request_interleaved(&mut buf, None, client.request_fields(), &mut |b| {
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), b)
            });
        let t1 = now_ntp();
        sock.send_to(&buf, server).unwrap();
        let mut resp = [0u8; 1024];
        let n = sock
            .recv(&mut resp)
            .expect("the server answers every request");
        let t4 = now_ntp();
        let checked = check_response(&resp[..n], &pending, None).unwrap();
        if i >= FIRST_INTERLEAVED && checked.interleaved {
            interleaved += 1;
        }
        client.complete(&checked.header, checked.interleaved, t1, t4);
        // Give the kernel time to hand the response's transmit timestamp back.
        std::thread::sleep(Duration::from_millis(20));
    }
    interleaved
}

fn check(workers: usize, rate_limit: bool) {
    let stack = Stack::start(&TimeServerOptions {
        workers,
        extra: format!("[rate_limit]\nenabled = {rate_limit}\nrate = 1000.0\nburst = 1000.0\n"),
        server_extra: "interleaved_slots = 4096\n".into(),
        ..Default::default()
    })
    .unwrap();
    let server = stack.ts.addr;
    let got = interleaved_answers(server);
    let want = EXCHANGES - FIRST_INTERLEAVED;
    eprintln!(
        "{workers} workers, rate limiting {}: {got} of {want} answers interleaved",
        if rate_limit { "on" } else { "off" }
    );
    assert_eq!(
        got, want,
        "{workers} workers, rate limiting {}: {got} of {want} answers that could be interleaved were",
        if rate_limit { "on" } else { "off" }
    );
}

#[test]
fn every_answer_that_can_be_interleaved_is_on_two_and_four_workers() {
    for workers in [2, 4] {
        for rate_limit in [false, true] {
            check(workers, rate_limit);
        }
    }
}
