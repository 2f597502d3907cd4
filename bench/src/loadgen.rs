//! The load generator: paced NTS or plain NTP requests from many loopback
//! source addresses and ports, responses matched by origin timestamp.
//!
//! One thread drives everything: nonblocking connected UDP sockets (one per
//! source address and port), `sendmmsg` bursts paced against CLOCK_MONOTONIC,
//! `epoll_pwait2` (nanosecond timeout) to sleep between bursts, and `recvmmsg`
//! with kernel receive timestamps (`SO_TIMESTAMPNS`) to drain responses.
//!
//! Matching: the transmit timestamp of each request (which the server returns
//! as the origin timestamp) is `sequence << 32 | salt`; the sequence indexes a
//! fixed table of outstanding requests. NTS Unique Identifiers are derived
//! from the same value, so nothing per request but the table slot is stored.
//!
//! Cookies: each NTS request takes a cookie from a FIFO pool filled by NTS-KE
//! and refilled with the cookie each verified response carries, so a cookie
//! is used once. Lost requests lose their cookie: when the pool falls below
//! half its target, requests carry one Cookie Placeholder (as a real client
//! does for missing cookies); between steps the pool is topped up with more
//! key exchanges; if it still runs dry, cookies from the first exchanges are
//! reused, and counted.

use crate::report::{Latency, Limit, StepResult};
use crate::sys;
use anyhow::{bail, Context, Result};
use nts_client::ke::{key_exchange, KeOutcome};
use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::ntp_client::{
    build_request, check_response, PendingRequest, ResponseCheckError, UNIQUE_ID_LEN,
};
use nts_proto::ntp_packet::NtpTimestamp;
use rand::{RngCore, SeedableRng};
use std::collections::VecDeque;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

const TABLE_BITS: u32 = 20;
const TABLE_MASK: usize = (1 << TABLE_BITS) - 1;
const RX_BUF: usize = 2048;
const CTRL_WORDS: usize = 8; // 64 bytes: room for one SCM_TIMESTAMPNS
/// How far the pacer may fall behind before it skips requests.
const MAX_LAG_NS: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// NTS-protected requests (needs key exchange).
    Nts,
    /// Plain NTPv4 client requests.
    Plain,
    /// Plain-sized (or `echo_len`) datagrams to a UDP echo server; the reply is the request.
    Echo,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nts => "nts",
            Mode::Plain => "plain",
            Mode::Echo => "echo",
        }
    }
}

/// Where to get NTS keys and cookies.
#[derive(Clone)]
pub struct KeParams {
    pub host: String,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    pub aead: AeadAlgorithm,
    pub sessions: usize,
    pub concurrency: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub target: SocketAddr,
    pub sources: Vec<Ipv4Addr>,
    pub ports_per_source: usize,
    pub batch: usize,
    pub timeout: Duration,
    /// NTS: decrypt and check one response in this many (1 = all). Unchecked
    /// responses yield no cookies.
    pub verify_every: u32,
    /// Echo mode: datagram length.
    pub echo_len: usize,
    /// Processes whose CPU use is reported per step.
    pub server_pids: Vec<u32>,
    /// Quiet: no per-step lines on stderr.
    pub quiet: bool,
    /// Shortest sleep between bursts; at high rates requests go out in bursts
    /// of rate * this (spread over the sockets in turn).
    pub min_wait: Duration,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    origin: u64,
    sent_ns: u64,
    session: u32,
    pending: bool,
}

struct Session {
    c2s: AeadKey,
    s2c: AeadKey,
}

#[derive(Default)]
struct Counters {
    sent: u64,
    received: u64,
    late: u64,
    skipped: u64,
    send_errors: u64,
    invalid: u64,
    unmatched: u64,
    naks: u64,
    kisses: u64,
    verified: u64,
    fresh: u64,
    reused: u64,
    placeholders: u64,
    request_len: usize,
}

struct TxBufs {
    bufs: Vec<Vec<u8>>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    seqs: Vec<u32>,
}

struct RxBufs {
    data: Vec<u8>,
    ctrl: Vec<[u64; CTRL_WORDS]>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

/// Everything but the sockets and buffers, so receive processing can borrow it
/// while the receive buffers are borrowed too.
struct State {
    mode: Mode,
    timeout_ns: u64,
    verify_every: u32,
    verify_counter: u32,
    salt: u32,
    seq: u32,
    step_first_seq: u32,
    outstanding: u64,
    table: Vec<Slot>,
    sessions: Vec<Session>,
    pool: VecDeque<(u32, Vec<u8>)>,
    pool_target: usize,
    reuse_bank: Vec<(u32, Vec<u8>)>,
    reuse_next: usize,
    c: Counters,
    lat: Vec<u32>,
    rng: rand::rngs::StdRng,
}

pub struct Generator {
    cfg: Config,
    socks: Vec<OwnedFd>,
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
    tx: TxBufs,
    rx: RxBufs,
    plain_template: Vec<u8>,
    st: State,
    ke: Option<(KeParams, tokio::runtime::Runtime)>,
    pub aead: Option<AeadAlgorithm>,
    pub cookie_len: Option<usize>,
}

/// The request table, written once so its pages are not faulted in during a step.
fn pretouched_table() -> Vec<Slot> {
    let mut t = Vec::with_capacity(1 << TABLE_BITS);
    t.resize(
        1 << TABLE_BITS,
        Slot {
            origin: u64::MAX,
            ..Slot::default()
        },
    );
    t
}

fn uid_for(origin: u64) -> [u8; UNIQUE_ID_LEN] {
    let mut u = [0xA5u8; UNIQUE_ID_LEN];
    u[..8].copy_from_slice(&origin.to_be_bytes());
    u
}

fn last_os_error_code() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Run `n` key exchanges, `concurrency` at a time.
pub fn key_exchanges(
    rt: &tokio::runtime::Runtime,
    p: &KeParams,
    n: usize,
) -> Result<Vec<KeOutcome>> {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(n);
        let mut started = 0;
        let mut first_error = None;
        while out.len() < n {
            while started < n && set.len() < p.concurrency.max(1) {
                let (host, tls, alg, t) = (p.host.clone(), p.tls.clone(), p.aead, p.timeout);
                let port = p.port;
                set.spawn(async move { key_exchange(&host, port, tls, &[alg], t).await });
                started += 1;
            }
            match set.join_next().await {
                Some(Ok(Ok(o))) => out.push(o),
                Some(Ok(Err(e))) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
                Some(Err(e)) => {
                    first_error.get_or_insert_with(|| e.to_string());
                }
                None => break,
            }
        }
        if out.is_empty() {
            bail!(
                "NTS-KE with {}:{} failed: {}",
                p.host,
                p.port,
                first_error.unwrap_or_default()
            );
        }
        Ok(out)
    })
}

impl Generator {
    /// Open the sockets; for NTS, run the key exchanges (the target then
    /// defaults to the negotiated server and port, unless `cfg.target` has a
    /// non-zero port).
    pub fn new(mut cfg: Config, ke: Option<KeParams>) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut sessions = Vec::new();
        let mut pool = VecDeque::new();
        let mut reuse_bank = Vec::new();
        let mut aead = None;
        let mut cookie_len = None;
        let ke = match (cfg.mode, ke) {
            (Mode::Nts, Some(p)) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let outs = key_exchanges(&rt, &p, p.sessions)?;
                if cfg.target.port() == 0 {
                    let o = &outs[0];
                    let ip = o.ntp_server.parse().with_context(|| {
                        format!("negotiated NTP server {:?} is not an address", o.ntp_server)
                    })?;
                    cfg.target = SocketAddr::new(ip, o.ntp_port);
                }
                for o in outs {
                    aead = Some(o.aead);
                    let i = sessions.len() as u32;
                    cookie_len = o.cookies.first().map(Vec::len);
                    if let Some(c) = o.cookies.first() {
                        reuse_bank.push((i, c.clone()));
                    }
                    pool.extend(o.cookies.into_iter().map(|c| (i, c)));
                    sessions.push(Session {
                        c2s: o.c2s,
                        s2c: o.s2c,
                    });
                }
                Some((p, rt))
            }
            (Mode::Nts, None) => bail!("NTS mode needs a key exchange server"),
            _ => None,
        };
        if cfg.target.port() == 0 {
            bail!("no target port");
        }
        let SocketAddr::V4(target) = cfg.target else {
            bail!("only IPv4 targets are supported (sources are 127.0.0.x)");
        };

        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: ep is a fresh descriptor we own.
        let epfd = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut socks = Vec::new();
        for src in &cfg.sources {
            for _ in 0..cfg.ports_per_source.max(1) {
                let s = open_socket(*src, target)
                    .with_context(|| format!("UDP socket {src} -> {target}"))?;
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: socks.len() as u64,
                };
                // SAFETY: valid epoll and socket descriptors, ev lives for the call.
                let r = unsafe {
                    libc::epoll_ctl(
                        epfd.as_raw_fd(),
                        libc::EPOLL_CTL_ADD,
                        s.as_raw_fd(),
                        &mut ev,
                    )
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error()).context("epoll_ctl");
                }
                socks.push(s);
            }
        }
        if socks.is_empty() {
            bail!("no source sockets");
        }

        let batch = cfg.batch.max(1);
        let mut plain_template = Vec::new();
        build_request(&mut plain_template, None, &mut |b| rng.fill_bytes(b));
        if cfg.mode == Mode::Echo && cfg.echo_len > plain_template.len() {
            plain_template.resize(cfg.echo_len, 0);
        }
        let pool_target = pool.len();
        let salt = rng.next_u32();
        Ok(Self {
            events: vec![libc::epoll_event { events: 0, u64: 0 }; socks.len().min(256)],
            socks,
            epfd,
            tx: TxBufs {
                bufs: (0..batch).map(|_| Vec::with_capacity(1024)).collect(),
                // SAFETY: all-zero is a valid value for these C structs.
                iov: vec![unsafe { zeroed() }; batch],
                // SAFETY: all-zero is a valid value of this plain C struct.
                hdr: vec![unsafe { zeroed() }; batch],
                seqs: Vec::with_capacity(batch),
            },
            rx: RxBufs {
                data: vec![0; batch * RX_BUF],
                ctrl: vec![[0; CTRL_WORDS]; batch],
                // SAFETY: as above.
                iov: vec![unsafe { zeroed() }; batch],
                // SAFETY: all-zero is a valid value of this plain C struct.
                hdr: vec![unsafe { zeroed() }; batch],
            },
            plain_template,
            st: State {
                mode: cfg.mode,
                timeout_ns: cfg.timeout.as_nanos() as u64,
                verify_every: cfg.verify_every.max(1),
                verify_counter: 0,
                salt,
                seq: 1,
                step_first_seq: 1,
                outstanding: 0,
                table: pretouched_table(),
                sessions,
                pool,
                pool_target,
                reuse_bank,
                reuse_next: 0,
                c: Counters::default(),
                lat: Vec::new(),
                rng,
            },
            ke,
            aead,
            cookie_len,
            cfg,
        })
    }

    pub fn target(&self) -> SocketAddr {
        self.cfg.target
    }

    pub fn sockets(&self) -> usize {
        self.socks.len()
    }

    pub fn ke_sessions(&self) -> usize {
        self.st.sessions.len()
    }

    /// More key exchanges until the pool is back at its target (at most `max_ke` exchanges).
    fn top_up_cookies(&mut self, max_ke: usize) -> Result<()> {
        let Some((p, rt)) = &self.ke else {
            return Ok(());
        };
        let missing = self.st.pool_target.saturating_sub(self.st.pool.len());
        if missing < self.st.pool_target / 4 {
            return Ok(());
        }
        let n = missing.div_ceil(8).clamp(1, max_ke);
        for o in key_exchanges(rt, p, n)? {
            let i = self.st.sessions.len() as u32;
            self.st.pool.extend(o.cookies.into_iter().map(|c| (i, c)));
            self.st.sessions.push(Session {
                c2s: o.c2s,
                s2c: o.s2c,
            });
        }
        Ok(())
    }

    /// Send `k` (at most `batch`) requests on socket `si`.
    fn send_burst(&mut self, si: usize, k: usize) {
        let k = k.min(self.tx.bufs.len());
        let st = &mut self.st;
        self.tx.seqs.clear();
        for i in 0..k {
            let seq = st.seq;
            st.seq = st.seq.wrapping_add(1);
            let origin = (u64::from(seq) << 32) | u64::from(st.salt);
            let out = &mut self.tx.bufs[i];
            let mut session = 0u32;
            match st.mode {
                Mode::Plain | Mode::Echo => {
                    out.clear();
                    out.extend_from_slice(&self.plain_template);
                    out[40..48].copy_from_slice(&origin.to_be_bytes());
                }
                Mode::Nts => {
                    let (s, cookie, fresh) = match st.pool.pop_front() {
                        Some((s, c)) => (s, c, true),
                        None => {
                            let (s, c) = &st.reuse_bank[st.reuse_next % st.reuse_bank.len()];
                            st.reuse_next += 1;
                            (*s, c.clone(), false)
                        }
                    };
                    if fresh {
                        st.c.fresh += 1;
                    } else {
                        st.c.reused += 1;
                    }
                    let placeholders = usize::from(st.pool.len() < st.pool_target / 2);
                    st.c.placeholders += placeholders as u64;
                    session = s;
                    let c2s = &st.sessions[s as usize].c2s;
                    let rng = &mut st.rng;
                    let mut call = 0;
                    let p = build_request(out, Some((&cookie, placeholders, c2s)), &mut |b| {
                        match call {
                            0 => b.copy_from_slice(&uid_for(origin)[..b.len()]),
                            1 => b.copy_from_slice(&origin.to_be_bytes()),
                            _ => rng.fill_bytes(b),
                        }
                        call += 1;
                    });
                    debug_assert_eq!(p.origin.0, origin);
                }
            }
            st.c.request_len = out.len();
            let slot = &mut st.table[seq as usize & TABLE_MASK];
            if slot.pending {
                // A request older than the table: long lost.
                st.outstanding -= 1;
            }
            *slot = Slot {
                origin,
                sent_ns: 0,
                session,
                pending: true,
            };
            self.tx.seqs.push(seq);
        }
        for i in 0..k {
            self.tx.iov[i] = libc::iovec {
                iov_base: self.tx.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: self.tx.bufs[i].len(),
            };
            let h = &mut self.tx.hdr[i];
            h.msg_hdr.msg_name = std::ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = &mut self.tx.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        let now = sys::real_ns();
        for &seq in &self.tx.seqs {
            st.table[seq as usize & TABLE_MASK].sent_ns = now;
        }
        let fd = self.socks[si].as_raw_fd();
        let mut done = 0;
        while done < k {
            // SAFETY: headers [done, k) point at live buffers set up above.
            let r = unsafe {
                libc::sendmmsg(fd, self.tx.hdr[done..].as_mut_ptr(), (k - done) as u32, 0)
            };
            if r <= 0 {
                if r < 0 && last_os_error_code() == libc::EINTR {
                    continue;
                }
                break;
            }
            done += r as usize;
        }
        st.c.sent += done as u64;
        st.outstanding += done as u64;
        for &seq in &self.tx.seqs[done..] {
            st.table[seq as usize & TABLE_MASK].pending = false;
        }
        st.c.send_errors += (k - done) as u64;
    }

    /// Wait up to `timeout_ns` for responses and process all that are ready.
    fn poll(&mut self, timeout_ns: u64) {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: epoll_pwait2(epfd, events, maxevents, timeout, sigmask = NULL, sigsetsize).
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if n <= 0 {
            return;
        }
        for e in 0..n as usize {
            let si = self.events[e].u64 as usize;
            let fd = self.socks[si].as_raw_fd();
            self.drain(fd);
        }
    }

    fn drain(&mut self, fd: RawFd) {
        let batch = self.rx.hdr.len();
        loop {
            for i in 0..batch {
                self.rx.iov[i] = libc::iovec {
                    iov_base: self.rx.data[i * RX_BUF..].as_mut_ptr() as *mut libc::c_void,
                    iov_len: RX_BUF,
                };
                let h = &mut self.rx.hdr[i];
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
                h.msg_hdr.msg_iov = &mut self.rx.iov[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = self.rx.ctrl[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_controllen = CTRL_WORDS * 8;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            // SAFETY: headers point at buffers owned by self.rx, sized as declared.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.rx.hdr.as_mut_ptr(),
                    batch as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                return;
            }
            let user_now = sys::real_ns();
            for i in 0..n as usize {
                let h = &self.rx.hdr[i];
                let len = (h.msg_len as usize).min(RX_BUF);
                let ts = kernel_rx_ns(&h.msg_hdr).unwrap_or(user_now);
                let data = &self.rx.data[i * RX_BUF..i * RX_BUF + len];
                self.st.on_datagram(data, ts);
            }
            if (n as usize) < batch {
                return;
            }
        }
    }

    /// Send at `rate` per second for `duration`, then wait for stragglers (up to the timeout).
    pub fn run_step(&mut self, rate: f64, duration: Duration) -> StepResult {
        self.st.c = Counters::default();
        self.st.lat.clear();
        self.st
            .lat
            .reserve((rate * duration.as_secs_f64()) as usize + 1024);
        self.st.step_first_seq = self.st.seq;
        let server_cpu0: Option<f64> = self.server_cpu();
        let machine0 = sys::machine_cpu_ticks();
        let rcvbuf0 = sys::udp_rcvbuf_errors();
        let cpu0 = sys::self_cpu_secs();
        let start = sys::mono_ns();
        let dur_ns = duration.as_nanos() as u64;
        let end = start + dur_ns;
        let ns_per_req = 1e9 / rate;
        let mut scheduled: u64 = 0;
        let mut next_sock = 0usize;
        let n_socks = self.socks.len();
        let batch = self.tx.bufs.len();
        let min_wait = self.cfg.min_wait.as_nanos() as u64;
        loop {
            let now = sys::mono_ns();
            if now >= end {
                break;
            }
            let target = (((now - start) as f64) / ns_per_req) as u64;
            let mut due = target.saturating_sub(scheduled);
            let max_lag = ((MAX_LAG_NS as f64 / ns_per_req) as u64).max(batch as u64);
            if due > max_lag {
                self.st.c.skipped += due - max_lag;
                scheduled += due - max_lag;
                due = max_lag;
            }
            while due > 0 {
                let k = (due as usize).min(batch);
                self.send_burst(next_sock, k);
                next_sock = (next_sock + 1) % n_socks;
                due -= k as u64;
                scheduled += k as u64;
            }
            let next_due = start + ((scheduled + 1) as f64 * ns_per_req) as u64;
            let now = sys::mono_ns();
            let wait = next_due
                .saturating_sub(now)
                .max(min_wait)
                .min(end.saturating_sub(now));
            self.poll(wait);
        }
        let sent_end = sys::mono_ns();
        let wall_send = (sent_end - start) as f64 / 1e9;
        let drain_end = sent_end + self.st.timeout_ns;
        while self.st.outstanding > 0 {
            let now = sys::mono_ns();
            if now >= drain_end {
                break;
            }
            self.poll((drain_end - now).min(20_000_000));
        }
        let wall_all = (sys::mono_ns() - start) as f64 / 1e9;
        let gen_cpu = (sys::self_cpu_secs() - cpu0) / wall_all;
        let server_cpu = match (server_cpu0, self.server_cpu()) {
            (Some(a), Some(b)) => Some((b - a) / wall_all),
            _ => None,
        };
        let machine_busy = match (machine0, sys::machine_cpu_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * sys::ncpus() as f64)
            }
            _ => None,
        };
        let udp_rcvbuf_errors = match (rcvbuf0, sys::udp_rcvbuf_errors()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        // Whatever is still outstanding is lost; forget it so it is not counted later.
        self.forget_outstanding();
        let c = &self.st.c;
        let latency_us = Latency::from_ns(&mut self.st.lat);
        let r = StepResult {
            offered_rate: rate,
            duration_s: wall_send,
            sent: c.sent,
            received: c.received,
            loss_pct: if c.sent > 0 {
                100.0 * (c.sent.saturating_sub(c.received)) as f64 / c.sent as f64
            } else {
                0.0
            },
            send_rate: c.sent as f64 / wall_send,
            recv_rate: c.received as f64 / wall_send,
            latency_us,
            late: c.late,
            skipped: c.skipped,
            send_errors: c.send_errors,
            invalid: c.invalid,
            unmatched: c.unmatched,
            naks: c.naks,
            kisses: c.kisses,
            verified: c.verified,
            cookies_fresh: c.fresh,
            cookies_reused: c.reused,
            placeholder_requests: c.placeholders,
            cookie_pool_end: self.st.pool.len() as u64,
            gen_cpu,
            server_cpu,
            machine_busy,
            other_load: match (machine_busy, server_cpu) {
                (Some(m), Some(sc)) => Some((m - sc - gen_cpu).max(0.0)),
                _ => None,
            },
            retries: 0,
            disturbed: false,
            udp_rcvbuf_errors,
            request_len: c.request_len,
        };
        if !self.cfg.quiet {
            eprintln!("  {}", step_line(&r));
        }
        r
    }

    fn forget_outstanding(&mut self) {
        if self.st.outstanding == 0 {
            return;
        }
        let from = self.st.step_first_seq;
        let to = self.st.seq;
        let mut s = from;
        while s != to {
            self.st.table[s as usize & TABLE_MASK].pending = false;
            s = s.wrapping_add(1);
        }
        self.st.outstanding = 0;
    }

    fn server_cpu(&self) -> Option<f64> {
        if self.cfg.server_pids.is_empty() {
            return None;
        }
        self.cfg
            .server_pids
            .iter()
            .map(|&p| sys::proc_cpu_secs(p))
            .sum()
    }

    /// One step, repeated (at most twice, after waiting for the machine to
    /// calm down) when other processes used more than `max_other` cores during it.
    fn measured_step(&mut self, rate: f64, p: &FindMax) -> Result<StepResult> {
        let mut tries = 0;
        loop {
            self.top_up_cookies(256)?;
            let mut r = self.run_step(rate, p.step);
            std::thread::sleep(p.pause);
            r.retries = tries;
            let disturbed = r.other_load.is_some_and(|o| o > p.max_other);
            if !disturbed || tries >= 2 {
                r.disturbed = disturbed;
                return Ok(r);
            }
            tries += 1;
            if !self.cfg.quiet {
                eprintln!(
                    "  (other processes used {:.2} cores during that step: waiting, then again)",
                    r.other_load.unwrap_or(0.0)
                );
            }
            sys::wait_quiet(p.max_other, Duration::from_secs(10));
        }
    }

    /// Step the offered rate up geometrically until a step fails (loss at or
    /// above `loss_threshold` percent, or the generator sent less than 97% of
    /// the offered rate: the two cores are saturated), or `max_rate` or the
    /// time budget is reached; then bisect between the last good and the first
    /// failing rate with `refine` more steps.
    pub fn find_max(
        &mut self,
        p: &FindMax,
    ) -> Result<(Vec<StepResult>, Option<StepResult>, Limit)> {
        self.warm_up(p.start_rate);
        let t0 = std::time::Instant::now();
        let budget_left = |t0: &std::time::Instant| p.budget.saturating_sub(t0.elapsed());
        let step_cost = 3 * (p.step + self.cfg.timeout + p.pause);
        let mut steps = Vec::new();
        let mut best: Option<StepResult> = None;
        let verdict = |r: &StepResult| {
            if r.loss_pct >= p.loss_threshold {
                Some(Limit::Loss)
            } else if r.send_rate < 0.97 * r.offered_rate {
                Some(Limit::Generator)
            } else {
                None
            }
        };
        let mut rate = p.start_rate;
        let mut bad_rate = None;
        let mut limit;
        loop {
            if budget_left(&t0) < step_cost {
                limit = Limit::Time;
                break;
            }
            let r = self.measured_step(rate, p)?;
            steps.push(r.clone());
            if let Some(why) = verdict(&r) {
                bad_rate = Some(rate);
                limit = why;
                break;
            }
            if best.as_ref().is_none_or(|b| r.recv_rate > b.recv_rate) {
                best = Some(r);
            }
            if rate >= p.max_rate {
                limit = Limit::MaxRate;
                break;
            }
            rate = (rate * p.factor).min(p.max_rate);
        }
        if let Some(mut hi) = bad_rate {
            let mut lo = best
                .as_ref()
                .map_or(p.start_rate / p.factor, |b| b.offered_rate);
            for _ in 0..p.refine {
                if budget_left(&t0) < step_cost || hi / lo < 1.03 {
                    break;
                }
                let mid = (lo * hi).sqrt();
                let r = self.measured_step(mid, p)?;
                steps.push(r.clone());
                match verdict(&r) {
                    None => {
                        if best.as_ref().is_none_or(|b| r.recv_rate > b.recv_rate) {
                            best = Some(r);
                        }
                        lo = mid;
                    }
                    Some(why) => {
                        limit = why;
                        hi = mid;
                    }
                }
            }
        }
        Ok((steps, best, limit))
    }

    /// Half a second of load that is not reported: first-touch page faults,
    /// cold caches and lazy set-up on both sides stay out of the first step.
    fn warm_up(&mut self, rate: f64) {
        let quiet = std::mem::replace(&mut self.cfg.quiet, true);
        self.run_step(rate.min(20_000.0), Duration::from_millis(500));
        self.cfg.quiet = quiet;
        std::thread::sleep(Duration::from_millis(100));
    }

    /// A fixed-rate run (after a warm-up).
    pub fn fixed(&mut self, rate: f64, duration: Duration) -> Result<StepResult> {
        self.warm_up(rate);
        self.top_up_cookies(256)?;
        Ok(self.run_step(rate, duration))
    }
}

/// Parameters of a find-max search.
#[derive(Debug, Clone)]
pub struct FindMax {
    pub start_rate: f64,
    pub factor: f64,
    pub max_rate: f64,
    pub step: Duration,
    pub pause: Duration,
    pub loss_threshold: f64,
    pub refine: usize,
    pub budget: Duration,
    /// Cores other processes may use during a step before it is repeated.
    pub max_other: f64,
}

/// One human-readable line per step.
pub fn step_line(r: &StepResult) -> String {
    let mut s = format!(
        "offered {:>8.0}/s sent {:>8.0}/s recv {:>8.0}/s loss {:>6.2}%  lat us p50 {:>7.1} p90 {:>7.1} p99 {:>8.1} max {:>8.1}  cpu gen {:.2} srv {} machine {}",
        r.offered_rate,
        r.send_rate,
        r.recv_rate,
        r.loss_pct,
        r.latency_us.p50,
        r.latency_us.p90,
        r.latency_us.p99,
        r.latency_us.max,
        r.gen_cpu,
        r.server_cpu.map_or("-".into(), |c| format!("{c:.2}")),
        r.machine_busy.map_or("-".into(), |c| format!("{c:.2}")),
    );
    if r.disturbed {
        s.push_str(" DISTURBED");
    }
    for (n, v) in [
        ("skipped", r.skipped),
        ("send_err", r.send_errors),
        ("late", r.late),
        ("invalid", r.invalid),
        ("unmatched", r.unmatched),
        ("nak", r.naks),
        ("kiss", r.kisses),
        ("cookie_reuse", r.cookies_reused),
        ("placeholders", r.placeholder_requests),
        ("rcvbuf_drops", r.udp_rcvbuf_errors.unwrap_or(0)),
        ("retries", u64::from(r.retries)),
    ] {
        if v > 0 {
            s.push_str(&format!(" {n} {v}"));
        }
    }
    s
}

impl State {
    fn on_datagram(&mut self, data: &[u8], rx_ns: u64) {
        if data.len() < 48 {
            self.c.invalid += 1;
            return;
        }
        let off = if self.mode == Mode::Echo { 40 } else { 24 };
        let mut o = [0u8; 8];
        o.copy_from_slice(&data[off..off + 8]);
        let origin = u64::from_be_bytes(o);
        if origin as u32 != self.salt {
            self.c.unmatched += 1;
            return;
        }
        let seq = (origin >> 32) as u32;
        let slot = &mut self.table[seq as usize & TABLE_MASK];
        if !slot.pending || slot.origin != origin {
            self.c.unmatched += 1;
            return;
        }
        slot.pending = false;
        let (sent_ns, session) = (slot.sent_ns, slot.session);
        self.outstanding = self.outstanding.saturating_sub(1);
        if seq.wrapping_sub(self.step_first_seq) > (1 << 31) {
            // From an earlier step.
            self.c.unmatched += 1;
            return;
        }
        let pending = || PendingRequest {
            unique_id: uid_for(origin),
            origin: NtpTimestamp(origin),
            interleaved_origin: None,
        };
        match self.mode {
            Mode::Echo => {}
            Mode::Plain => match check_response(data, &pending(), None) {
                Ok(_) => {}
                Err(ResponseCheckError::Kiss(_)) => {
                    self.c.kisses += 1;
                    return;
                }
                Err(_) => {
                    self.c.invalid += 1;
                    return;
                }
            },
            Mode::Nts => {
                let verify = self.verify_counter % self.verify_every == 0;
                self.verify_counter = self.verify_counter.wrapping_add(1);
                if verify {
                    let s2c = &self.sessions[session as usize].s2c;
                    match check_response(data, &pending(), Some(s2c)) {
                        Ok(c) => {
                            self.c.verified += 1;
                            for ck in c.cookies {
                                if self.pool.len() < 2 * self.pool_target {
                                    self.pool.push_back((session, ck));
                                }
                            }
                        }
                        Err(ResponseCheckError::NtsNak) => {
                            self.c.naks += 1;
                            return;
                        }
                        Err(ResponseCheckError::Kiss(_)) => {
                            self.c.kisses += 1;
                            return;
                        }
                        Err(_) => {
                            self.c.invalid += 1;
                            return;
                        }
                    }
                } else if data[0] & 7 != 4 || data.len() <= 48 {
                    // Unverified: at least a server-mode answer with extension fields.
                    self.c.invalid += 1;
                    return;
                }
            }
        }
        let lat = rx_ns.saturating_sub(sent_ns);
        if lat > self.timeout_ns {
            self.c.late += 1;
            return;
        }
        self.c.received += 1;
        self.lat.push(lat.min(u64::from(u32::MAX)) as u32);
    }
}

fn open_socket(src: Ipv4Addr, target: SocketAddrV4) -> Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    sys::setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    s.connect(&SocketAddr::V4(target).into())?;
    Ok(s.into())
}

/// The SCM_TIMESTAMPNS receive time, if present.
fn kernel_rx_ns(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: h's control pointer and length describe the buffer the kernel filled.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let mut ts: libc::timespec = zeroed();
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(c),
                    &mut ts as *mut _ as *mut u8,
                    size_of::<libc::timespec>(),
                );
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator relies on build_request asking `random` for the Unique
    /// Identifier first and the transmit timestamp second.
    #[test]
    fn requests_carry_our_origin_and_unique_id() {
        let c2s = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[7; 32]).unwrap();
        let cookie = vec![0x42u8; 104];
        let origin = (123u64 << 32) | 0xdead_beef;
        let mut out = Vec::new();
        let mut call = 0;
        let p = build_request(&mut out, Some((&cookie, 0, &c2s)), &mut |b| {
            match call {
                0 => b.copy_from_slice(&uid_for(origin)[..b.len()]),
                1 => b.copy_from_slice(&origin.to_be_bytes()),
                _ => b.fill(9),
            }
            call += 1;
        });
        assert_eq!(p.origin.0, origin);
        assert_eq!(p.unique_id, uid_for(origin));
        assert_eq!(&out[40..48], &origin.to_be_bytes());
        // The Unique Identifier field follows the header: type, length, body.
        assert_eq!(&out[52..84], &uid_for(origin));
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let l = Latency::from_ns(&mut v);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (500.0, 900.0, 990.0, 1000.0));
        assert_eq!(Latency::from_ns(&mut []).max, 0.0);
    }

    #[test]
    fn table_is_a_power_of_two() {
        assert_eq!(pretouched_table().len(), TABLE_MASK + 1);
    }
}
