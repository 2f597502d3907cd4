//! One NTP exchange over UDP, NTS-protected or plain: send, wait for the
//! matching answer, check it, and compute offset and delay from the four
//! timestamps (RFC 5905 section 8).

use nts_ops::socket_timestamps::{self, parse_control, RecvMeta};
use nts_proto::aead::AeadKey;
use nts_proto::interleaved::{InterleavedClient, Timestamps};
use nts_proto::ntp_client::{
    build_request, build_request_interleaved, check_response, ResponseCheckError,
};
use nts_proto::ntp_packet::{LeapIndicator, NtpHeader, NtpTimestamp};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// A checked measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Server clock minus ours, in seconds.
    pub offset: f64,
    /// Round-trip delay minus the server's processing time, in seconds.
    pub delay: f64,
    pub header: NtpHeader,
    pub authenticated: bool,
    /// Our send and receive times (the kernel's where available), and the
    /// server's receive and transmit times of the same exchange (in
    /// interleaved mode, the previous one: not the header's fields).
    pub t1: NtpTimestamp,
    pub t2: NtpTimestamp,
    pub t3: NtpTimestamp,
    pub t4: NtpTimestamp,
    pub stamps: StampSources,
    /// Measured in interleaved mode: the server's transmit timestamp was taken
    /// after its previous response left, and the four timestamps are that
    /// previous exchange's.
    pub interleaved: bool,
}

impl Sample {
    /// The measurement made by an answer with `header`, sent and received at `timing`.
    pub fn new(header: NtpHeader, timing: Timing, authenticated: bool) -> Self {
        let (offset, delay) = offset_delay(
            timing.t1,
            header.receive_timestamp,
            header.transmit_timestamp,
            timing.t4,
        );
        Self {
            offset,
            delay,
            header,
            authenticated,
            t1: timing.t1,
            t2: header.receive_timestamp,
            t3: header.transmit_timestamp,
            t4: timing.t4,
            stamps: timing.stamps,
            interleaved: false,
        }
    }

    /// The measurement an answer makes for a source in interleaved mode:
    /// `state` turns it into the four timestamps of the exchange it completes.
    pub fn with_interleave(
        header: NtpHeader,
        timing: Timing,
        authenticated: bool,
        interleaved: bool,
        state: Option<&mut InterleavedClient>,
    ) -> Self {
        let Some(state) = state else {
            return Self::new(header, timing, authenticated);
        };
        let ts = state.complete(&header, interleaved, timing.t1, timing.t4);
        let (offset, delay) = ts.offset_delay();
        Self {
            offset,
            delay,
            header,
            authenticated,
            t1: ts.t1,
            t2: ts.t2,
            t3: ts.t3,
            t4: ts.t4,
            stamps: timing.stamps,
            interleaved,
        }
    }

    /// The server says it is not synchronized (leap indicator 3, stratum 0 or 16).
    pub fn unsynchronized(&self) -> bool {
        let h = &self.header;
        h.leap == LeapIndicator::Unsynchronized || h.stratum == 0 || h.stratum >= 16
    }
}

/// When a request left and its answer arrived.
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

fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

fn nanos_to_ntp(n: u64) -> NtpTimestamp {
    NtpTimestamp::from_unix(n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

/// Offset and delay from client send (t1), server receive (t2), server send (t3), client receive (t4).
pub fn offset_delay(
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    t4: NtpTimestamp,
) -> (f64, f64) {
    Timestamps { t1, t2, t3, t4 }.offset_delay()
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

/// Where the four timestamps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StampSources {
    /// t1 from the kernel's transmit timestamp (else a clock read before sending).
    pub kernel_tx: bool,
    /// t4 from the kernel's receive timestamp (else a clock read after receiving).
    pub kernel_rx: bool,
}

/// Send `request` to `server` and hand every datagram that comes back to
/// `judge` until it returns `Some` or `timeout` passes. Whatever `judge`
/// refuses (forged, stray, garbage) is ignored and the wait goes on, so a
/// packet that arrives first never wins over the genuine answer. Send and
/// receive times come from the kernel (`SO_TIMESTAMPING`) where it provides
/// them.
pub async fn exchange<T>(
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
    mut judge: impl FnMut(&[u8]) -> Option<T>,
) -> Result<(T, Timing), ExchangeError> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal");
    let std_sock = std::net::UdpSocket::bind(bind)?;
    std_sock.connect(server)?;
    std_sock.set_nonblocking(true)?;
    let stamping = socket_timestamps::enable_rx_tx(&std_sock).is_ok();
    let sock = UdpSocket::from_std(std_sock)?;
    let fd = sock.as_raw_fd();
    let mut t1 = now_ntp();
    sock.send(request).await?;
    let mut stamps = StampSources::default();
    if stamping {
        // The transmit stamp arrives on the error queue almost at once.
        let tx = tokio::time::timeout(
            Duration::from_millis(20),
            sock.async_io(Interest::ERROR, || {
                let mut b = [0u8; 64];
                recv_meta(fd, &mut b, libc::MSG_ERRQUEUE)
            }),
        )
        .await;
        if let Ok(Ok((_, meta))) = tx {
            if let Some(t) = meta.software {
                t1 = nanos_to_ntp(t);
                stamps.kernel_tx = true;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let got = tokio::time::timeout_at(
            deadline,
            sock.async_io(Interest::READABLE, || recv_meta(fd, &mut buf, 0)),
        )
        .await;
        let (n, meta) = match got {
            Err(_) => return Err(ExchangeError::Timeout(timeout)),
            // ICMP errors (port unreachable) surface here: keep waiting, as for any
            // unauthenticated signal, until the timeout.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Ok(r) => r?,
        };
        let t4 = match meta.software {
            Some(t) => {
                stamps.kernel_rx = true;
                nanos_to_ntp(t)
            }
            None => now_ntp(),
        };
        if let Some(v) = judge(&buf[..n]) {
            return Ok((v, Timing { t1, t4, stamps }));
        }
    }
}

/// One plain (unauthenticated) NTP exchange, in interleaved mode when
/// `interleave` holds the source's state. Kiss codes are returned as
/// errors: without NTS there is nothing better to go on.
pub async fn plain_exchange(
    server: SocketAddr,
    timeout: Duration,
    interleave: Option<&mut InterleavedClient>,
) -> Result<Sample, ExchangeError> {
    let mut req = Vec::with_capacity(48);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let fields = interleave.as_ref().and_then(|x| x.request_fields());
    let pending = build_request_interleaved(&mut req, None, fields, &mut rng);
    let (checked, timing) = exchange(server, &req, timeout, |d| {
        match check_response(d, &pending, None) {
            Err(
                ResponseCheckError::OriginMismatch
                | ResponseCheckError::UniqueIdMismatch
                | ResponseCheckError::Malformed(_),
            ) => None,
            other => Some(other),
        }
    })
    .await?;
    let c = checked?;
    Ok(Sample::with_interleave(
        c.header,
        timing,
        false,
        c.interleaved,
        interleave,
    ))
}

/// NTS credentials for a one-shot probe.
pub struct NtsCredentials<'a> {
    pub cookie: &'a [u8],
    pub c2s: &'a AeadKey,
    pub s2c: &'a AeadKey,
    /// Cookie placeholders to add (to receive this many extra cookies).
    pub placeholders: usize,
}

/// What a probe got: the measurement and the new cookies.
#[derive(Debug, Clone)]
pub struct Probe {
    pub sample: Sample,
    pub cookies: Vec<Vec<u8>>,
}

/// One NTS exchange with explicit credentials, for diagnostics and tests
/// that want to see what a server does with a given cookie. Unlike the
/// agent's sources ([`nts_proto::nts_source`]), it reports an NTS NAK at
/// once as an error; forged and stray datagrams are still ignored, and if
/// only forgeries came back the timeout reports the authentication failure.
pub async fn nts_probe(
    server: SocketAddr,
    creds: NtsCredentials<'_>,
    timeout: Duration,
) -> Result<Probe, ExchangeError> {
    let mut req = Vec::with_capacity(1024);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let pending = build_request(
        &mut req,
        Some((creds.cookie, creds.placeholders, creds.c2s)),
        &mut rng,
    );
    let mut forged = false;
    let r = exchange(server, &req, timeout, |d| {
        match check_response(d, &pending, Some(creds.s2c)) {
            Err(ResponseCheckError::AuthenticationFailed | ResponseCheckError::Unauthenticated) => {
                forged = true;
                None
            }
            Err(
                ResponseCheckError::OriginMismatch
                | ResponseCheckError::UniqueIdMismatch
                | ResponseCheckError::Malformed(_),
            ) => None,
            other => Some(other),
        }
    })
    .await;
    match r {
        Ok((checked, timing)) => {
            let c = checked?;
            Ok(Probe {
                sample: Sample::new(c.header, timing, c.authenticated),
                cookies: c.cookies,
            })
        }
        Err(ExchangeError::Timeout(_)) if forged => Err(ExchangeError::Check(
            ResponseCheckError::AuthenticationFailed,
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_timestamps() {
        let t = |s: f64| {
            NtpTimestamp::from_unix(1_800_000_000 + s.trunc() as u64, (s.fract() * 1e9) as u32)
        };
        // Server 1 s ahead, 10 ms each way, 1 ms in the server.
        let (o, d) = offset_delay(t(0.0), t(1.010), t(1.011), t(0.021));
        assert!((o - 1.0).abs() < 1e-6, "{o}");
        assert!((d - 0.020).abs() < 1e-6, "{d}");
    }
}
