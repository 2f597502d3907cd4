//! PROXY protocol (v1 and v2) on the NTS-KE listener: the async driver of
//! [`nts_proto::proxy_protocol`]. A connection from
//! `server.proxy_trusted_networks` must open with a header, read here with a
//! deadline before TLS and before the per-address limits, which then apply to
//! the client address it carries. Anyone else's connection that opens like a
//! header is refused.

use crate::metrics::{Metrics, ProxyResult};
use nts_proto::proxy_protocol::{self, Header, Parsed, Refusal, Relayed};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The configured balancers (`server.proxy_trusted_networks`).
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<ipnet::IpNet>);

impl Trusted {
    pub fn new(networks: Vec<ipnet::IpNet>) -> Self {
        Self(networks)
    }

    /// PROXY protocol is on (some network is trusted).
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// `ip` (an IPv4-mapped IPv6 address as its IPv4 address: a dual-stack
    /// listener reports IPv4 peers that way) is a trusted balancer.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Why no header could be read.
#[derive(Debug)]
enum ReadFailure {
    Malformed(proxy_protocol::ProxyError),
    /// The peer closed (or the socket failed) inside the header.
    Truncated,
}

/// Read exactly the header's octets (no more: the rest is TLS), guided by
/// what [`proxy_protocol::parse`] says it needs. `None`: the stream does not
/// open with a header.
async fn read_header(stream: &mut TcpStream) -> Result<Option<Header>, ReadFailure> {
    let mut buf = Vec::with_capacity(64);
    let mut need = 1;
    loop {
        let have = buf.len();
        buf.resize(need, 0);
        stream
            .read_exact(&mut buf[have..])
            .await
            .map_err(|_| ReadFailure::Truncated)?;
        match proxy_protocol::parse(&buf).map_err(ReadFailure::Malformed)? {
            Parsed::Header(h) => return Ok(Some(h)),
            Parsed::Absent => return Ok(None),
            // Always progress, whatever `need` says.
            Parsed::Incomplete { need: n } => need = n.max(buf.len() + 1),
        }
    }
}

/// The client a trusted balancer's connection stands for, from its header
/// (read within `deadline`); `None` when the connection is to be closed
/// (counted and logged here).
pub async fn client_of(
    stream: &mut TcpStream,
    peer: SocketAddr,
    deadline: Duration,
    metrics: &Metrics,
) -> Option<SocketAddr> {
    let refuse = |result: ProxyResult, why: &str| {
        metrics.proxy_header(result);
        tracing::debug!(%peer, result = result.label(), "connection from a trusted balancer closed: {why}");
        None
    };
    let header = match tokio::time::timeout(deadline, read_header(stream)).await {
        Err(_) => return refuse(ProxyResult::Timeout, "no complete PROXY header in time"),
        Ok(Err(ReadFailure::Truncated)) => {
            return refuse(ProxyResult::Truncated, "closed inside the PROXY header")
        }
        Ok(Err(ReadFailure::Malformed(e))) => {
            return refuse(ProxyResult::Malformed, &e.to_string())
        }
        Ok(Ok(h)) => h,
    };
    match proxy_protocol::admit(peer, true, header.as_ref()) {
        Err(Refusal::Missing | Refusal::Untrusted) => {
            refuse(ProxyResult::Missing, "it did not open with a PROXY header")
        }
        Ok(client) => {
            let local = matches!(header.map(|h| h.relayed), Some(Relayed::Unknown));
            metrics.proxy_header(if local {
                ProxyResult::Local
            } else {
                ProxyResult::Accepted
            });
            tracing::debug!(%peer, %client, "PROXY header accepted");
            Some(client)
        }
    }
}

/// The first octets a peer sent (it has sent some) open like a PROXY header.
pub async fn opens_like_header(stream: &TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(stream.peek(&mut b).await, Ok(n) if n > 0 && proxy_protocol::starts_like_header(&b[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_peers_match_ipv4_networks() {
        let t = Trusted::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(t.enabled() && !Trusted::default().enabled());
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(!t.contains("::ffff:11.0.0.1".parse().unwrap()));
        assert!(!t.contains("2001:db8::1".parse().unwrap()));
    }
}
