//! NTP over UDP: one connected socket per request, with the kernel's send
//! and receive timestamps where it gives them (`SO_TIMESTAMPING`). Moving
//! bytes and reading clocks only: what the bytes mean is decided in
//! `nts_proto::source`.

use nts_ops::socket_timestamps::{self, parse_control, RecvMeta};
use nts_proto::interleaved::InterleavedClient;
use nts_proto::ntp_client::{build_request_interleaved, check_response, ResponseCheckError};
use nts_proto::ntp_packet::{NtpHeader, NtpTimestamp};
use nts_proto::source::{Judgement, Measurement};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// When a request left and its answer arrived (our clock).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub t1: NtpTimestamp,
    pub t4: NtpTimestamp,
    pub stamps: StampSources,
}

#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Check(#[from] ResponseCheckError),
}

/// The system clock as an NTP timestamp.
pub fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

fn nanos_to_ntp(n: u64) -> NtpTimestamp {
    NtpTimestamp::from_unix(n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

/// `recvmsg` with a control buffer; returns the length and what the control messages said.
fn recv_meta(fd: RawFd, buf: &mut [u8], flags: i32) -> std::io::Result<(usize, RecvMeta)> {
    let mut ctrl = [0u8; 512];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; it points at buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = ctrl.len();
    // SAFETY: recvmsg on our own socket with valid buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        n as usize,
        parse_control(&ctrl[..msg.msg_controllen.min(ctrl.len())]),
    ))
}

/// Where the timestamps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StampSources {
    /// t1 from the kernel's transmit timestamp (else a clock read before sending).
    pub kernel_tx: bool,
    /// t4 from the kernel's receive timestamp (else a clock read after receiving).
    pub kernel_rx: bool,
}

/// A socket connected to one server, for one request and its answers.
pub struct NtpSocket {
    sock: UdpSocket,
    stamping: bool,
}

impl NtpSocket {
    pub fn connect(server: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = if server.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let std_sock = std::net::UdpSocket::bind(bind)?;
        std_sock.connect(server)?;
        std_sock.set_nonblocking(true)?;
        let stamping = socket_timestamps::enable_rx_tx(&std_sock).is_ok();
        Ok(Self {
            sock: UdpSocket::from_std(std_sock)?,
            stamping,
        })
    }

    /// Send `request`; returns when it left (the kernel's stamp where available).
    pub async fn send(&self, request: &[u8]) -> std::io::Result<(NtpTimestamp, bool)> {
        let mut t1 = now_ntp();
        self.sock.send(request).await?;
        if !self.stamping {
            return Ok((t1, false));
        }
        let fd = self.sock.as_raw_fd();
        // The transmit stamp arrives on the error queue almost at once.
        let tx = tokio::time::timeout(
            Duration::from_millis(20),
            self.sock.async_io(Interest::ERROR, || {
                let mut b = [0u8; 64];
                recv_meta(fd, &mut b, libc::MSG_ERRQUEUE)
            }),
        )
        .await;
        if let Ok(Ok((
            _,
            RecvMeta {
                software: Some(t), ..
            },
        ))) = tx
        {
            t1 = nanos_to_ntp(t);
            return Ok((t1, true));
        }
        Ok((t1, false))
    }

    /// The next datagram and when it arrived. ICMP errors (port
    /// unreachable) are skipped: like any unauthenticated signal, they end nothing.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, NtpTimestamp, bool)> {
        let fd = self.sock.as_raw_fd();
        loop {
            match self
                .sock
                .async_io(Interest::READABLE, || recv_meta(fd, buf, 0))
                .await
            {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
                Ok((n, meta)) => {
                    return Ok(match meta.software {
                        Some(t) => (n, nanos_to_ntp(t), true),
                        None => (n, now_ntp(), false),
                    })
                }
            }
        }
    }
}

/// Send `request` to `server` and hand every datagram that comes back to
/// `judge` until it returns `Some` or `timeout` passes. Whatever `judge`
/// refuses (forged, stray, garbage) is ignored and the wait goes on, so a
/// packet that arrives first never wins over the genuine answer.
pub async fn exchange<T>(
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
    mut judge: impl FnMut(&[u8]) -> Option<T>,
) -> Result<(T, Timing), ExchangeError> {
    let sock = NtpSocket::connect(server)?;
    let (t1, kernel_tx) = sock.send(request).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let (n, t4, kernel_rx) = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))??;
        if let Some(v) = judge(&buf[..n]) {
            let stamps = StampSources {
                kernel_tx,
                kernel_rx,
            };
            return Ok((v, Timing { t1, t4, stamps }));
        }
    }
}

/// The four timestamps an answer measures with, in interleaved mode when
/// `state` holds the source's state (then, possibly, the previous exchange's).
pub fn timestamps(
    header: &NtpHeader,
    timing: Timing,
    interleaved: bool,
    state: Option<&mut InterleavedClient>,
) -> nts_proto::interleaved::Timestamps {
    match state {
        Some(x) => x.complete(header, interleaved, timing.t1, timing.t4),
        None => nts_proto::interleaved::Timestamps {
            t1: timing.t1,
            t2: header.receive_timestamp,
            t3: header.transmit_timestamp,
            t4: timing.t4,
        },
    }
}

/// One plain (unauthenticated) NTP exchange for the one-shot query, in
/// interleaved mode when `interleave` holds the source's state. Kiss codes
/// are returned as errors: without NTS there is nothing better to go on.
pub async fn plain_exchange(
    server: SocketAddr,
    timeout: Duration,
    interleave: Option<&mut InterleavedClient>,
) -> Result<Measurement, ExchangeError> {
    let mut req = Vec::with_capacity(48);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let fields = interleave.as_ref().and_then(|x| x.request_fields());
    let pending = build_request_interleaved(&mut req, None, fields, &mut rng);
    let (judged, timing) = exchange(server, &req, timeout, |d| {
        let j = Judgement::of(check_response(d, &pending, None));
        j.ends_exchange().then_some(j)
    })
    .await?;
    match judged {
        Judgement::Accept(c) => {
            let ts = timestamps(&c.header, timing, c.interleaved, interleave);
            Ok(Measurement::new(server, c.header, ts, c.interleaved, false))
        }
        Judgement::Kiss(code) => Err(ResponseCheckError::Kiss(code).into()),
        Judgement::Nak | Judgement::Ignore(_) => Err(ExchangeError::Timeout(timeout)),
    }
}
