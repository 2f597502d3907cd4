//! Hostile and broken datagrams against a real nts-time-server process: no
//! crash, no response larger than its request, every drop counted by reason;
//! and the per-address rate limiter under a flood from many loopback addresses.

use nts_client::ke::{self, KeOutcome};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::extension_field::{field_type, write_field};
use nts_proto::ntp_client::{build_request, check_response};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use testkit::stack::{Stack, TimeServerOptions};

fn start(ts_extra: &str) -> Stack {
    Stack::start(&TimeServerOptions {
        extra: ts_extra.into(),
        ..Default::default()
    })
    .unwrap()
}

fn key_exchange(s: &Stack) -> KeOutcome {
    let roots = ke::root_store(&[s.pki.ca_path()], false).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(ke::key_exchange(
        "127.0.0.1",
        s.ke.port(),
        ke::tls_config(roots),
        &[AeadAlgorithm::AesSivCmac256],
        Duration::from_secs(10),
    ))
    .unwrap()
}

fn rnd(b: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), b)
}

/// Send one datagram from `sock`, return the answer if one comes within `wait`.
fn ask(sock: &UdpSocket, to: SocketAddr, req: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(req, to).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn malformed_packet_battery() {
    let s = start("[rate_limit]\nenabled = false\n");
    let ko = key_exchange(&s);
    let to = s.ts.addr;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let quick = Duration::from_millis(300);
    let mut cookies = ko.cookies.clone();
    let nts_request = |cookies: &mut Vec<Vec<u8>>| {
        let c = cookies.pop().unwrap();
        let mut req = Vec::new();
        let p = build_request(&mut req, Some((&c, 0, &ko.c2s)), &mut rnd);
        (req, p)
    };

    // A good request works and the response is not larger than the request.
    let (req, p) = nts_request(&mut cookies);
    let resp = ask(&sock, to, &req, Duration::from_secs(2)).expect("answer");
    assert!(resp.len() <= req.len());
    let checked = check_response(&resp, &p, Some(&ko.s2c)).unwrap();
    assert_eq!(checked.cookies.len(), 1);

    let mut sent_sizes = Vec::new();
    let mut check_no_amplification = |req: &[u8], expect_answer: bool, what: &str| {
        let r = ask(&sock, to, req, quick);
        if let Some(r) = &r {
            assert!(r.len() <= req.len(), "{what}: {} > {}", r.len(), req.len());
        }
        assert_eq!(r.is_some(), expect_answer, "{what}");
        sent_sizes.push(req.len());
    };

    // Truncated datagrams.
    check_no_amplification(&req[..47], false, "47 bytes");
    check_no_amplification(&[0x23], false, "1 byte");
    // Bad extension field length.
    let mut bad_len = req.clone();
    bad_len[50..52].copy_from_slice(&0xfff0u16.to_be_bytes());
    check_no_amplification(&bad_len, false, "bad field length");
    // Bad authenticator tag.
    let (mut bad_tag, _) = nts_request(&mut cookies);
    let last = bad_tag.len() - 1;
    bad_tag[last - 3] ^= 0x80;
    check_no_amplification(&bad_tag, false, "bad tag");
    // Replayed request: NTS servers are stateless; it is answered, no larger than itself.
    check_no_amplification(&req, true, "replay");
    // Wrong key id: NTS NAK, echoing the Unique Identifier only.
    let mut wrong_key = ko.cookies[0].clone();
    wrong_key[0] ^= 0xff;
    let mut nak_req = Vec::new();
    let nak_pending = build_request(&mut nak_req, Some((&wrong_key, 0, &ko.c2s)), &mut rnd);
    let nak = ask(&sock, to, &nak_req, Duration::from_secs(2)).expect("NAK");
    assert!(nak.len() <= nak_req.len());
    assert!(matches!(
        check_response(&nak, &nak_pending, Some(&ko.s2c)),
        Err(nts_proto::ntp_client::ResponseCheckError::NtsNak)
    ));
    // A cookie with a valid key id but altered contents: NAK too.
    let mut bad_cookie = ko.cookies[1].clone();
    bad_cookie[40] ^= 1;
    let mut r2 = Vec::new();
    build_request(&mut r2, Some((&bad_cookie, 0, &ko.c2s)), &mut rnd);
    check_no_amplification(&r2, true, "tampered cookie");
    // Giant extension field of an unknown type in a plain request: plain 48-byte answer.
    let mut giant = Vec::new();
    build_request(&mut giant, None, &mut rnd);
    write_field(&mut giant, 0x7f7f, &[0u8; 1400]);
    check_no_amplification(&giant, true, "giant field");
    // Datagram larger than any request we accept.
    let mut huge = Vec::new();
    build_request(&mut huge, None, &mut rnd);
    huge.resize(3000, 0);
    check_no_amplification(&huge, false, "3000 bytes");
    // Too many extension fields.
    let mut many = Vec::new();
    build_request(&mut many, None, &mut rnd);
    for _ in 0..40 {
        write_field(&mut many, 0x7f7f, &[0u8; 12]);
    }
    check_no_amplification(&many, false, "40 fields");
    // Control (mode 6) and private (mode 7) queries are never answered.
    let mut mode6 = vec![0u8; 48];
    mode6[0] = (2 << 3) | 6;
    check_no_amplification(&mode6, false, "mode 6");
    let mut mode7 = vec![0u8; 48];
    mode7[0] = (2 << 3) | 7;
    check_no_amplification(&mode7, false, "mode 7");
    // A Unique Identifier that is too short.
    let mut short_uid = Vec::new();
    build_request(&mut short_uid, None, &mut rnd);
    write_field(&mut short_uid, field_type::UNIQUE_IDENTIFIER, &[1u8; 8]);
    write_field(&mut short_uid, field_type::NTS_COOKIE, &ko.cookies[2]);
    check_no_amplification(&short_uid, false, "short unique id");

    // Random bytes: whatever comes back is never larger.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    for i in 0..2000 {
        let len = 1 + (i * 7919) % 700;
        let mut d = vec![0u8; len];
        rnd(&mut d);
        if i % 2 == 0 && len > 0 {
            d[0] = 0x23;
        }
        sock.send_to(&d, to).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            assert!(n <= 700, "random datagram answered with {n} bytes");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        assert!(n <= 700);
    }
    sock.set_nonblocking(false).unwrap();

    // Still serving, and every case was counted under its reason.
    let (req, p) = nts_request(&mut cookies);
    let resp = ask(&sock, to, &req, Duration::from_secs(2)).expect("still serving");
    check_response(&resp, &p, Some(&ko.s2c)).unwrap();
    assert!(s.ts.guard.is_running());
    let m = |sel: &str| s.ts.metric(sel);
    assert!(m("nts_time_requests_dropped_total{reason=\"too_short\"}") >= 2.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"malformed_extensions\"}") >= 1.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"auth_failed\"}") >= 1.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"too_long\"}") >= 1.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"too_many_extensions\"}") >= 1.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"not_client_mode\"}") >= 2.0);
    assert!(m("nts_time_requests_dropped_total{reason=\"malformed_nts\"}") >= 1.0);
    assert_eq!(m("nts_time_nts_nak_total{reason=\"unknown_key\"}"), 1.0);
    assert_eq!(m("nts_time_nts_nak_total{reason=\"bad_tag\"}"), 1.0);
    assert!(m("nts_time_responses_total{kind=\"nts\"}") >= 3.0);
    assert!(m("nts_time_requests_received_total") >= 2000.0);
    assert_eq!(m("nts_time_timestamp_source{source=\"software\"}"), 1.0);
    // Only packets arriving while the kernel is still turning stamping on may lack a stamp.
    assert!(m("nts_time_user_timestamps_total") < 5.0);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn rate_limit_flood_from_many_addresses() {
    // 2 requests/s per address with a burst of 4; at most one RATE kiss per address per minute.
    let s = start("[rate_limit]\nrate = 2.0\nburst = 4.0\nkiss_interval = 60.0\nslots = 4096\n");
    let to = s.ts.addr;
    let rss_before = rss_kib(s.ts.guard.pid());
    let addresses = 300u32;
    let per_address = 20usize;
    let mut answers = 0usize;
    let mut kisses = 0usize;
    let mut buf = [0u8; 512];
    let mut socks = Vec::new();
    for a in 0..addresses {
        let ip = std::net::Ipv4Addr::from(0x7f00_0000u32 + 0x0001_0000 + a + 2);
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        for _ in 0..per_address {
            let mut req = Vec::new();
            build_request(&mut req, None, &mut rnd);
            sock.send_to(&req, to).unwrap();
        }
        socks.push(sock);
    }
    std::thread::sleep(Duration::from_millis(500));
    for sock in &socks {
        sock.set_nonblocking(true).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let (h, _) = nts_proto::ntp_packet::NtpHeader::parse(&buf[..n]).unwrap();
            if h.kiss_code() == Some(*b"RATE") {
                kisses += 1;
            } else {
                answers += 1;
            }
        }
    }
    let total = addresses as usize * per_address;
    // Each address got about its burst, one kiss, and nothing more.
    assert!(answers <= addresses as usize * 5, "{answers} answers");
    assert!(
        answers >= addresses as usize * 3,
        "{answers} answers: legitimate bursts must pass"
    );
    assert!(kisses <= addresses as usize, "{kisses} kisses");
    assert!(kisses >= addresses as usize / 2, "{kisses} kisses");
    let dropped =
        s.ts.metric("nts_time_requests_dropped_total{reason=\"rate_limited\"}");
    let kissed = s.ts.metric("nts_time_responses_total{kind=\"rate_kiss\"}");
    assert!(
        dropped + kissed + answers as f64 >= total as f64 * 0.99,
        "{dropped} + {kissed} + {answers} of {total}"
    );
    // Memory stays bounded: the table is fixed-size.
    let growth = rss_kib(s.ts.guard.pid()).saturating_sub(rss_before);
    assert!(growth < 4096, "RSS grew by {growth} KiB under the flood");
    // A new client is served at once.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut req = Vec::new();
    let p = build_request(&mut req, None, &mut rnd);
    let resp = ask(&sock, to, &req, Duration::from_secs(2)).expect("fresh client served");
    check_response(&resp, &p, None).unwrap();
    eprintln!("flood: {total} requests from {addresses} addresses: {answers} answered, {kisses} RATE kisses, {dropped} dropped; RSS +{growth} KiB");
}

#[test]
fn requests_that_waited_too_long_are_dropped() {
    // One worker, no rate limit, 1 ms of queueing allowed: a burst of NTS requests
    // (each costs the server cryptography) queues up and its tail is dropped, counted;
    // what is answered was answered within the age.
    let s = Stack::start(&TimeServerOptions {
        workers: 1,
        server_extra: "max_request_age = 0.001\nreceive_buffer = 16777216".into(),
        extra: "[rate_limit]\nenabled = false\n".into(),
        ..Default::default()
    })
    .unwrap();
    let ko = key_exchange(&s);
    let to = s.ts.addr;
    let mut req = Vec::new();
    let pending = build_request(&mut req, Some((&ko.cookies[0], 0, &ko.c2s)), &mut rnd);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(16 << 20)
        .unwrap();
    let sent = 20_000;
    for _ in 0..sent {
        sock.send_to(&req, to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let mut answered = 0usize;
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        check_response(&buf[..n], &pending, Some(&ko.s2c)).unwrap();
        answered += 1;
    }
    let too_old =
        s.ts.metric("nts_time_requests_dropped_total{reason=\"too_old\"}");
    eprintln!("{sent} sent in a burst: {answered} answered, {too_old} too old");
    assert!(
        too_old > 0.0,
        "nothing counted as too old ({answered} answered)"
    );
    assert!(answered > 0);
    // Nothing else was lost on the server's side: every request it read was
    // answered or dropped as too old. (Counted by the server: the client's
    // socket buffer may overflow with answers once the server is fast enough.)
    let received = s.ts.metric("nts_time_requests_received_total");
    let sent_nts = s.ts.metric("nts_time_responses_total{kind=\"nts\"}");
    assert!(
        sent_nts >= answered as f64,
        "{answered} answers read but the server counts {sent_nts}"
    );
    assert!(
        sent_nts + too_old >= received - 1.0,
        "{sent_nts} + {too_old} < {received}"
    );
}
