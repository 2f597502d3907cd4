//! One worker: a thread that owns one `SO_REUSEPORT` socket and moves
//! datagrams in batches (`recvmmsg`/`sendmmsg`, `nts_ops::batch_socket`). Buffers are allocated once;
//! the loop itself does not allocate or lock: keys and clock state are read
//! through `ArcSwap`, counters are this worker's own atomics.

use crate::clock_state::{now_nanos, now_ntp};
use crate::coalesce::Coalescer;
use crate::keys::KeyStore;
use crate::metrics::WorkerMetrics;
use crate::timestamping::{parse_control, pick, write_pktinfo, PhcConversion, TimestampSource};
use crate::tx_timestamps::{write_request, ErrorQueue, SentStamp};
use arc_swap::ArcSwap;
use nts_ops::batch_socket::{RxBatch, TxBatch};
use nts_proto::interleaved::{mark_receive, ClientAddress, TransmitTable};
use nts_proto::ntp_packet::NtpTimestamp;
use nts_proto::ntp_server::{
    over_rate_reason_of, parse_request, respond_to, DropReason, RequestContext, Response,
    ServerClock, ServerPolicy, MAX_REQUEST_LEN,
};
use nts_proto::rate_limit::{RateLimiter, Verdict};
use nts_proto::time::MonoTime;
use rand::{RngCore, SeedableRng};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const RX_CTRL: usize = 256;
const TX_CTRL: usize = 64;

/// State every worker reads.
pub struct Shared {
    pub keys: Arc<KeyStore>,
    pub clock: ArcSwap<ServerClock>,
    pub policy: ServerPolicy,
    pub source: TimestampSource,
    pub phc: ArcSwap<PhcConversion>,
    pub stop: AtomicBool,
    /// What health is decided from.
    pub serving: Arc<crate::ServingState>,
}

/// Per-worker rate limit settings.
#[derive(Debug, Clone, Copy)]
pub struct RateSettings {
    pub rate: f64,
    pub burst: f64,
    pub kiss_interval_ms: u64,
    pub slots: usize,
}

/// Per-worker packet path settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Datagrams per recvmmsg/sendmmsg.
    pub batch: usize,
    /// Answer from the address each datagram was sent to (wildcard binds).
    pub use_pktinfo: bool,
    pub rate: Option<RateSettings>,
    /// Requests whose kernel receive timestamp is older than this are dropped.
    pub max_request_age_ns: u64,
    /// Entries of this worker's interleaved-mode table (0: basic mode only).
    pub interleaved_slots: usize,
    /// Ask the NIC for transmit timestamps too (hardware timestamping is on).
    pub hardware_tx: bool,
    /// Longest wait for more requests after a short batch (0: never wait).
    pub batch_wait_ns: u64,
}

/// How long after a response asked for a transmit timestamp the error queue
/// is still read on every wake-up (hardware stamps can come late).
const STAMP_WAIT_NS: u64 = 200_000_000;

/// Peer address out of a sockaddr_storage.
fn peer_ip(sa: &libc::sockaddr_storage) -> Option<IpAddr> {
    match sa.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(sa as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

fn nanos_to_ntp(n: u64) -> NtpTimestamp {
    NtpTimestamp::from_unix(n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

/// Serve on `sock` until `shared.stop` is set. `sock` must have a receive timeout
/// so the stop flag is seen.
pub fn run(
    sock: socket2::Socket,
    shared: Arc<Shared>,
    metrics: &WorkerMetrics,
    settings: WorkerSettings,
) {
    let WorkerSettings {
        batch,
        use_pktinfo,
        rate,
        max_request_age_ns,
        interleaved_slots,
        hardware_tx,
        batch_wait_ns,
    } = settings;
    let mut coalescer = Coalescer::new(batch_wait_ns, batch);
    if batch_wait_ns > 0 {
        // Waits of tens of microseconds need a timer that fires on time (the
        // default slack is 50 µs). Per thread; failure only makes waits longer.
        // SAFETY: plain prctl on this thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    }
    let mut table = TransmitTable::new(interleaved_slots);
    metrics
        .interleaved_table_bytes
        .set(table.memory_bytes() as i64);
    let mut errqueue = ErrorQueue::default();
    let mut stamps_until = 0u64;
    let fd = sock.as_raw_fd();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut limiter = rate.map(|r| {
        RateLimiter::new(r.slots, r.rate, r.burst)
            .with_kiss_interval(std::time::Duration::from_millis(r.kiss_interval_ms))
    });
    metrics
        .rate_limit_table_bytes
        .set(limiter.as_ref().map_or(0, |l| l.memory_bytes() as i64));
    let started = Instant::now();

    let mut rx = RxBatch::new(batch, MAX_REQUEST_LEN, RX_CTRL);
    let mut tx = TxBatch::new(batch, MAX_REQUEST_LEN, TX_CTRL);

    while !shared.stop.load(Ordering::Relaxed) {
        let n = rx.recv(sock.as_fd()).unwrap_or(0); // 0: timeout (stop check) or EINTR
        if stamps_until != 0 {
            let now = now_nanos();
            drain_stamps(&mut errqueue, fd, &shared, &mut table, metrics);
            if now > stamps_until {
                stamps_until = 0;
            }
        }
        if n == 0 {
            continue;
        }
        let batch_time = now_nanos();
        let keys = shared.keys.load();
        let clock = shared.clock.load();
        let phc = **shared.phc.load();
        let unix_now = batch_time / 1_000_000_000;
        let mono = MonoTime::from_duration(started.elapsed());
        for i in 0..n {
            metrics.received.inc();
            let d = rx.get(i);
            if d.truncated {
                metrics.dropped(DropReason::TooLong);
                continue;
            }
            let meta = parse_control(d.control);
            let ts = match pick(&meta, shared.source, &phc) {
                Some(t) => t,
                None => {
                    metrics.user_timestamps.inc();
                    batch_time
                }
            };
            // Bounded queueing: under overload the socket buffer becomes a queue;
            // answering what waited too long only makes every answer late.
            if batch_time.saturating_sub(ts) > max_request_age_ns {
                metrics.dropped(DropReason::TooOld);
                continue;
            }
            let Some(ip) = peer_ip(d.peer) else {
                continue;
            };
            // Parsed once: the rate limit's label, the interleaved table and
            // the answer all read this view.
            let parsed = parse_request(d.data, &shared.policy);
            let verdict = match limiter.as_mut() {
                Some(l) => l.check(ip, mono),
                None => Verdict::Allow,
            };
            if verdict == Verdict::Drop {
                metrics.dropped(over_rate_reason_of(&parsed));
                continue;
            }
            let request = match parsed {
                Ok(r) => r,
                Err(why) => {
                    metrics.dropped(why);
                    continue;
                }
            };
            let client = ClientAddress::from(ip);
            let decision = table.decide(&request.header, client);
            let ctx = RequestContext {
                receive_timestamp: nanos_to_ntp(ts),
                unix_now,
                clock: &clock,
                ring: &keys,
                policy: &shared.policy,
                rate_kiss: verdict == Verdict::Kiss,
                previous_transmit: decision.previous_transmit,
            };
            let (tx_buf, tx_ctrl) = tx.next_slot();
            let result = respond_to(
                &request,
                &ctx,
                tx_buf,
                &mut |b| rng.fill_bytes(b),
                &mut now_ntp,
            );
            let resp = match result {
                Ok(r) => r,
                Err(why) => {
                    metrics.dropped(why);
                    continue;
                }
            };
            let timed = match resp {
                Response::Plain(_) => {
                    metrics.plain.inc();
                    true
                }
                Response::Nts { cookies, .. } => {
                    metrics.nts.inc();
                    metrics.cookies_issued.add(cookies as u64);
                    true
                }
                Response::Nak { why, .. } => {
                    metrics.nak(why.reason());
                    false
                }
                Response::Rate(_) => {
                    metrics.rate_kiss.inc();
                    false
                }
            };
            let stamp = timed && decision.track;
            if timed && decision.previous_transmit.is_some() {
                metrics.interleaved.inc();
            }
            if stamp {
                // The same value respond() put in the receive field: the key
                // the looped-back copy will name.
                table.track(mark_receive(nanos_to_ntp(ts)), client);
                metrics.interleaved_tracked.inc();
            }
            let mut ctrl_len = if use_pktinfo {
                write_pktinfo(&meta, tx_ctrl)
            } else {
                0
            };
            if stamp {
                ctrl_len += write_request(hardware_tx, &mut tx_ctrl[ctrl_len..]);
                stamps_until = batch_time + STAMP_WAIT_NS;
            }
            tx.queue(resp.len(), ctrl_len, d.peer, d.peer_len);
        }
        drop(keys);
        drop(clock);
        if let Some(l) = &limiter {
            metrics.rate_overflowed.set(l.overflowed() as i64);
        }
        let sent = tx.send(sock.as_fd());
        metrics.send_errors.add(sent.errors as u64);
        if stamps_until != 0 {
            // Software stamps are made while sendmmsg runs: read them now.
            drain_stamps(&mut errqueue, fd, &shared, &mut table, metrics);
        }
        let wait = coalescer.after_batch(n, started.elapsed().as_nanos() as u64);
        if wait > 0 {
            metrics.batch_waits.inc();
            std::thread::sleep(std::time::Duration::from_nanos(wait));
        }
    }
}

/// Move the transmit stamps waiting on the error queue into the table.
fn drain_stamps(
    q: &mut ErrorQueue,
    fd: i32,
    shared: &Shared,
    table: &mut TransmitTable,
    metrics: &WorkerMetrics,
) {
    let phc = **shared.phc.load();
    q.drain(fd, shared.source, &phc, |s| match s {
        Some(SentStamp {
            key,
            nanos,
            hardware,
        }) => {
            if table.record_transmit(key, nanos_to_ntp(nanos), hardware) {
                if hardware {
                    metrics.tx_stamps_hardware.inc();
                } else {
                    metrics.tx_stamps_software.inc();
                }
            } else {
                metrics.tx_stamps_unmatched.inc();
            }
        }
        None => metrics.tx_stamps_unmatched.inc(),
    });
}
