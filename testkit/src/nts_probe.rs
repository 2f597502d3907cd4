//! One NTS exchange with explicit credentials, for tests that want to see
//! what a time server does with a given cookie (a refused key, a key set
//! from another root secret, a restart). Unlike the agent's sources, it
//! reports an NTS NAK at once as an error; forged and stray datagrams are
//! still ignored, and if only forgeries came back the timeout reports the
//! authentication failure. Timestamps come from the system clock (a test
//! tool: no kernel timestamps).

use nts_proto::aead::AeadKey;
use nts_proto::interleaved::Timestamps;
use nts_proto::ntp_client::{build_request, check_response, ResponseCheckError};
use nts_proto::ntp_packet::{NtpHeader, NtpTimestamp};
use nts_proto::source::{Ignored, Judgement};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// NTS credentials for a probe.
pub struct NtsCredentials<'a> {
    /// The cookie to send.
    pub cookie: &'a [u8],
    /// Client-to-server key.
    pub c2s: &'a AeadKey,
    /// Server-to-client key.
    pub s2c: &'a AeadKey,
    /// Cookie placeholders to add (to receive this many extra cookies).
    pub placeholders: usize,
}

/// What the answer measured.
#[derive(Debug, Clone)]
pub struct ProbeSample {
    /// Server clock minus ours (seconds).
    pub offset: f64,
    /// Round trip minus the server's time (seconds).
    pub delay: f64,
    /// The answer's header.
    pub header: NtpHeader,
    /// The answer was NTS-authenticated.
    pub authenticated: bool,
}

/// What a probe got: the measurement and the new cookies.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The measurement.
    pub sample: ProbeSample,
    /// Cookies from the answer's encrypted part.
    pub cookies: Vec<Vec<u8>>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The socket failed.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing usable came back.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The time server's answer was refused (a NAK, a kiss, forgeries only).
    #[error(transparent)]
    Check(#[from] ResponseCheckError),
}

fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

/// Send one NTS request with `creds` to `server` and wait up to `timeout`.
pub async fn nts_probe(
    server: SocketAddr,
    creds: NtsCredentials<'_>,
    timeout: Duration,
) -> Result<Probe, ProbeError> {
    let mut req = Vec::with_capacity(1024);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let pending = build_request(
        &mut req,
        Some((creds.cookie, creds.placeholders, creds.c2s)),
        &mut rng,
    );
    let bind: SocketAddr = if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    let t1 = now_ntp();
    sock.send(&req).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut forged = false;
    let mut buf = [0u8; 2048];
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) if forged => return Err(ResponseCheckError::AuthenticationFailed.into()),
            Err(_) => return Err(ProbeError::Timeout(timeout)),
            // ICMP port unreachable: keep waiting, as for any unauthenticated signal.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Ok(r) => r?,
        };
        let t4 = now_ntp();
        match Judgement::of(check_response(&buf[..n], &pending, Some(creds.s2c))) {
            Judgement::Accept(c) => {
                let ts = Timestamps {
                    t1,
                    t2: c.header.receive_timestamp,
                    t3: c.header.transmit_timestamp,
                    t4,
                };
                let (offset, delay) = ts.offset_delay();
                let sample = ProbeSample {
                    offset,
                    delay,
                    header: c.header,
                    authenticated: c.authenticated,
                };
                return Ok(Probe {
                    sample,
                    cookies: c.cookies,
                });
            }
            Judgement::Kiss(code) => return Err(ResponseCheckError::Kiss(code).into()),
            Judgement::Nak => return Err(ResponseCheckError::NtsNak.into()),
            Judgement::Ignore(Ignored::Forged | Ignored::Unauthenticated) => forged = true,
            Judgement::Ignore(_) => {}
        }
    }
}
