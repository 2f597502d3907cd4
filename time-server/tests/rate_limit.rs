//! The per-address rate limit against a real nts-time-server process, as an
//! abuser would try it: a new source port for every request (the kernel would
//! spread those over the SO_REUSEPORT workers by 4-tuple), plain and NTS, with
//! 1, 2 and 8 workers; and a flood of spoofed loopback addresses meant to
//! evict the abuser's bucket. The answered count per address must be the
//! configured burst plus the rate over the flood's duration, whatever the
//! worker count, and memory must not grow.

use nts_client::ke::{self, KeOutcome};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::ntp_client::{build_request, check_response, PendingRequest};
use nts_proto::ntp_packet::NtpHeader;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use testkit::stack::{Stack, TimeServerOptions};

const RATE: f64 = 2.0;
const BURST: f64 = 4.0;

fn start(workers: usize, slots: usize) -> Stack {
    Stack::start(&TimeServerOptions {
        workers,
        extra: format!(
            "[rate_limit]\nrate = {RATE}\nburst = {BURST}\nkiss_interval = 60.0\nslots = {slots}\n"
        ),
        ..Default::default()
    })
    .unwrap()
}

fn rnd(b: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), b)
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What came back to a flood.
#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    kisses: usize,
    other: usize,
    /// Seconds from the first request to the last.
    elapsed: f64,
}

impl Tally {
    /// What the limit lets through over the flood: the burst at once, then one
    /// request every 1/rate seconds.
    fn expected(&self) -> f64 {
        BURST + (RATE * self.elapsed).floor()
    }

    fn assert_limited(&self, what: &str) {
        let e = self.expected();
        assert!(
            (self.answered as f64 - e).abs() <= 1.0,
            "{what}: {} answered, {e:.1} expected (burst {BURST} + {RATE}/s over {:.2} s)",
            self.answered,
            self.elapsed
        );
    }
}

/// Send `req` `count` times from `src`, a new socket (so a new source port) each
/// time, every `gap`; then collect what came back, checked by `check`.
fn flood(
    src: Ipv4Addr,
    to: SocketAddr,
    req: &[u8],
    count: usize,
    gap: Duration,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> Tally {
    let mut socks = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let sock = UdpSocket::bind((src, 0)).unwrap();
        sock.send_to(req, to).unwrap();
        socks.push(sock);
        if let Some(wait) = (start + gap * (i as u32 + 1)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let mut t = Tally {
        elapsed: start.elapsed().as_secs_f64() - gap.as_secs_f64(),
        ..Default::default()
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 1024];
    for sock in &socks {
        sock.set_nonblocking(true).unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let (h, _) = NtpHeader::parse(&buf[..n]).unwrap();
            if h.kiss_code() == Some(*b"RATE") {
                t.kisses += 1;
            } else {
                match check(&buf[..n]) {
                    Ok(()) => t.answered += 1,
                    Err(e) => {
                        eprintln!("unexpected answer: {e}");
                        t.other += 1;
                    }
                }
            }
        }
    }
    t
}

#[test]
fn new_source_port_per_request_is_limited_whatever_the_workers() {
    for workers in [1usize, 2, 8] {
        let s = start(workers, 4096);
        let to = s.ts.addr;
        let pid = s.ts.guard.pid();
        assert_eq!(s.ts.metric("nts_time_workers"), workers as f64);
        assert_eq!(
            s.ts.metric("nts_time_rate_limit_steering"),
            (workers > 1) as u8 as f64
        );
        // 4096 entries of 16 bytes and 4096 sketch cells of 8 bytes per worker.
        assert_eq!(
            s.ts.metric("nts_time_rate_limit_table_bytes"),
            (workers * 4096 * 24) as f64
        );
        // Warm up (code pages and stack touched by the first plain and NTS
        // answers count in RSS), then measure.
        let ko = key_exchange(&s);
        warm_up(to, &ko);
        let rss_before = rss_kib(pid);

        // Plain NTP: the limit, and one RATE kiss in the kiss interval.
        let mut req = Vec::new();
        let pending = build_request(&mut req, None, &mut rnd);
        let plain = flood(
            Ipv4Addr::new(127, 0, 9, 2),
            to,
            &req,
            150,
            Duration::from_millis(10),
            &|r| {
                check_response(r, &pending, None)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        eprintln!(
            "{workers} workers, plain: {plain:?}, expected {:.1}",
            plain.expected()
        );
        plain.assert_limited("plain");
        assert_eq!(plain.kisses, 1, "plain: {plain:?}");
        assert_eq!(plain.other, 0);

        // NTS: the same limit, no kiss at all (an NTS client must ignore unauthenticated ones).
        let mut req = Vec::new();
        let pending: PendingRequest =
            build_request(&mut req, Some((&ko.cookies[0], 0, &ko.c2s)), &mut rnd);
        let nts = flood(
            Ipv4Addr::new(127, 0, 9, 3),
            to,
            &req,
            150,
            Duration::from_millis(10),
            &|r| {
                check_response(r, &pending, Some(&ko.s2c))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        eprintln!(
            "{workers} workers, NTS: {nts:?}, expected {:.1}",
            nts.expected()
        );
        nts.assert_limited("NTS");
        assert_eq!(nts.kisses, 0, "NTS: {nts:?}");
        assert_eq!(nts.other, 0);
        let dropped_nts =
            s.ts.metric("nts_time_requests_dropped_total{reason=\"rate_limited_nts\"}");
        assert_eq!(dropped_nts as usize, 150 - nts.answered);
        let dropped_plain =
            s.ts.metric("nts_time_requests_dropped_total{reason=\"rate_limited\"}");
        assert_eq!(dropped_plain as usize, 150 - plain.answered - 1);
        assert_eq!(s.ts.metric("nts_time_rate_limit_overflow_total"), 0.0);

        let growth = rss_kib(pid).saturating_sub(rss_before);
        eprintln!("{workers} workers: RSS +{growth} KiB");
        // Flat: allocator and thread noise on a loaded machine stays well under this,
        // while state per flooding address (tens of thousands of them, or a table
        // touched lazily: 1.5 MiB per worker) would be far above it.
        assert!(growth < 512, "RSS grew by {growth} KiB");
    }
}

#[test]
fn spoofed_address_flood_does_not_free_an_abuser() {
    // A small table (64 entries per worker) that the spoofed flood overruns many times.
    let s = start(2, 64);
    let to = s.ts.addr;
    let pid = s.ts.guard.pid();
    warm_up(to, &key_exchange(&s));
    let rss_before = rss_kib(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spoofer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // The abuser has its bucket by the time the flood starts.
            std::thread::sleep(Duration::from_millis(500));
            let mut req = Vec::new();
            build_request(&mut req, None, &mut rnd);
            let mut sent = 0u32;
            // One request from each of many 127.1.x.y addresses (loopback takes any 127/8 source).
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 200_000 {
                let ip = Ipv4Addr::from(0x7f01_0000u32 + 1 + (sent % 60_000));
                if let Ok(sock) = UdpSocket::bind((ip, 0)) {
                    let _ = sock.send_to(&req, to);
                }
                sent += 1;
            }
            sent
        })
    };
    let mut req = Vec::new();
    let pending = build_request(&mut req, None, &mut rnd);
    // 100 requests a second for 2.5 s, a new source port each time.
    let abuser = flood(
        Ipv4Addr::new(127, 0, 9, 66),
        to,
        &req,
        250,
        Duration::from_millis(10),
        &|r| {
            check_response(r, &pending, None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spoofed = spoofer.join().unwrap();
    eprintln!(
        "abuser under a flood of {spoofed} spoofed requests: {abuser:?}, expected {:.1}",
        abuser.expected()
    );
    assert!(
        spoofed > 2_000,
        "the spoofed flood was too small: {spoofed}"
    );
    // Its bucket survived the flood: exactly the limit, neither reset (more) nor
    // pushed into the overflow sketch (less).
    abuser.assert_limited("abuser");
    assert!(abuser.kisses <= 1);
    // The flood overran the table: its newcomers were limited through the sketch.
    assert!(s.ts.metric("nts_time_rate_limit_overflow_total") > 0.0);
    let growth = rss_kib(pid).saturating_sub(rss_before);
    eprintln!("RSS +{growth} KiB under the spoofed flood");
    // Flat: allocator and thread noise on a loaded machine stays well under this,
    // while state per flooding address (tens of thousands of them, or a table
    // touched lazily: 1.5 MiB per worker) would be far above it.
    assert!(growth < 512, "RSS grew by {growth} KiB");
    // The server answers a newcomer once the flood's one-shot entries have refilled
    // (1/rate seconds); during a flood this far beyond the table (a 64-entry table,
    // tens of thousands of addresses a second) newcomers share the sketch's limit.
    std::thread::sleep(Duration::from_millis(700));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = Vec::new();
    let p = build_request(&mut req, None, &mut rnd);
    sock.send_to(&req, to).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("newcomer served");
    check_response(&buf[..n], &p, None).unwrap();
}

#[test]
fn ipv6_clients_are_steered_and_limited_too() {
    // Two workers on [::1]: the IPv6 steering program (source /64) is accepted by the
    // kernel and a client changing ports still gets one bucket.
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    let (port, mport) = (testkit::ports::free_port(), testkit::ports::free_port());
    let config = format!(
        "[server]\nlisten = [\"[::1]:{port}\"]\nworkers = 2\n\
         [rate_limit]\nrate = {RATE}\nburst = {BURST}\nkiss_interval = 60.0\n\
         [clock]\nlocal_reference = true\nstratum = 1\nreference_id = \"LOCL\"\n\
         [keys]\nroot_secret_file = {root:?}\n\
         [metrics]\nlisten = \"127.0.0.1:{mport}\"\n"
    );
    let d = testkit::stack::start_daemon(
        "nts-time-server",
        testkit::stack::cargo_bin("nts-time-server", "nts-time-server"),
        &config,
        dir.path(),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTP listening",
    )
    .unwrap();
    assert_eq!(d.metric("nts_time_rate_limit_steering"), 1.0);
    let mut req = Vec::new();
    let pending = build_request(&mut req, None, &mut rnd);
    let mut socks = Vec::new();
    for _ in 0..20 {
        let s = UdpSocket::bind("[::1]:0").unwrap();
        s.send_to(&req, d.addr).unwrap();
        socks.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (mut answered, mut kisses) = (0, 0);
    let mut buf = [0u8; 512];
    for s in &socks {
        s.set_nonblocking(true).unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            if NtpHeader::parse(&buf[..n]).unwrap().0.kiss_code() == Some(*b"RATE") {
                kisses += 1;
            } else {
                check_response(&buf[..n], &pending, None).unwrap();
                answered += 1;
            }
        }
    }
    assert_eq!((answered, kisses), (BURST as usize, 1));
}

/// A few plain and NTS exchanges from an address the floods do not use.
fn warm_up(to: SocketAddr, ko: &KeOutcome) {
    let sock = UdpSocket::bind("127.0.0.5:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1024];
    for i in 0..4 {
        let mut req = Vec::new();
        let p = if i % 2 == 0 {
            build_request(&mut req, None, &mut rnd)
        } else {
            build_request(&mut req, Some((&ko.cookies[1], 0, &ko.c2s)), &mut rnd)
        };
        sock.send_to(&req, to).unwrap();
        let n = sock.recv(&mut buf).expect("warm-up answer");
        let keys = (i % 2 == 1).then_some(&ko.s2c);
        check_response(&buf[..n], &p, keys).unwrap();
    }
}
