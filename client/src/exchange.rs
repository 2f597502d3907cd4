//! One NTP exchange over UDP, NTS-protected or plain: send, wait for the
//! matching answer, check it, and compute offset and delay from the four
//! timestamps (RFC 5905 section 8).

use nts_proto::aead::AeadKey;
use nts_proto::ntp_client::{build_request, check_response, ResponseCheckError};
use nts_proto::ntp_packet::{LeapIndicator, NtpHeader, NtpTimestamp};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::net::UdpSocket;

/// NTS credentials for one request.
pub struct NtsCredentials<'a> {
    pub cookie: &'a [u8],
    pub c2s: &'a AeadKey,
    pub s2c: &'a AeadKey,
    /// Cookie placeholders to add (to receive this many extra cookies).
    pub placeholders: usize,
}

/// A checked measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Server clock minus ours, in seconds.
    pub offset: f64,
    /// Round-trip delay minus the server's processing time, in seconds.
    pub delay: f64,
    pub header: NtpHeader,
    pub authenticated: bool,
    pub cookies: Vec<Vec<u8>>,
}

#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Check(#[from] ResponseCheckError),
    #[error("server is unsynchronized (leap indicator 3 or stratum 0/16)")]
    Unsynchronized,
}

fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

/// Offset and delay from client send (t1), server receive (t2), server send (t3), client receive (t4).
pub fn offset_delay(
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    t4: NtpTimestamp,
) -> (f64, f64) {
    let offset = (t2.diff_seconds(t1) + t3.diff_seconds(t4)) / 2.0;
    let delay = t4.diff_seconds(t1) - t3.diff_seconds(t2);
    (offset, delay)
}

/// Query `server` once. Answers that do not match the request (origin timestamp,
/// Unique Identifier, authenticator) are ignored until `timeout`; an NTS NAK or a
/// kiss-o'-death that matches is returned as an error.
pub async fn exchange(
    server: SocketAddr,
    nts: Option<NtsCredentials<'_>>,
    timeout: Duration,
) -> Result<Sample, ExchangeError> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let mut req = Vec::with_capacity(512);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let pending = build_request(
        &mut req,
        nts.as_ref().map(|n| (n.cookie, n.placeholders, n.c2s)),
        &mut rng,
    );
    let t1 = now_ntp();
    sock.send(&req).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => return Err(ExchangeError::Timeout(timeout)),
            Ok(r) => r?,
        };
        let t4 = now_ntp();
        let checked =
            match check_response(&buf[..n], &pending, nts.as_ref().map(|n| n.s2c)) {
                Ok(c) => c,
                // Spoofed or stale datagrams: keep waiting for the real answer.
                Err(
                    ResponseCheckError::OriginMismatch
                    | ResponseCheckError::UniqueIdMismatch
                    | ResponseCheckError::Malformed(_),
                ) => continue,
                Err(
                    ResponseCheckError::AuthenticationFailed | ResponseCheckError::Unauthenticated,
                ) if nts.is_some() => continue,
                Err(e) => return Err(e.into()),
            };
        let h = checked.header;
        if h.leap == LeapIndicator::Unsynchronized || h.stratum == 0 || h.stratum >= 16 {
            return Err(ExchangeError::Unsynchronized);
        }
        let (offset, delay) = offset_delay(t1, h.receive_timestamp, h.transmit_timestamp, t4);
        return Ok(Sample {
            offset,
            delay,
            header: h,
            authenticated: checked.authenticated,
            cookies: checked.cookies,
        });
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
