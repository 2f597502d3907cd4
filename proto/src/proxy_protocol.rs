//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): the
//! header a load balancer puts in front of a TCP stream to say which client
//! it relays. Behind a balancer the NTS-KE server sees only the balancer's
//! address; with this header its per-address limits, logs and metrics can use
//! the client's.
//!
//! The header is believed only from configured balancers ([`admit`]): from
//! anyone else it would let a client claim any address, so it is refused
//! there, and a trusted balancer's connection without one is refused too (a
//! balancer that speaks PROXY always sends it).
//!
//! Parsing is incremental over what has arrived so far ([`parse`]), so the
//! driver can read exactly the header's bytes and hand the rest of the
//! stream, untouched, to TLS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 octets that open a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
/// A version 1 header is at most 107 octets, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The largest version 2 header accepted: the addresses of any family plus
/// room for a few TLVs (which are skipped). A balancer sending more is
/// misconfigured, and reading 64 KiB from anyone before TLS is a cost.
pub const V2_MAX_LEN: usize = 512;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// A relayed TCP connection from `source` to `destination`.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer speaking for itself (a health check: v2 LOCAL), or a
    /// connection whose addresses it does not know or cannot express
    /// (v1 UNKNOWN, v2 UNSPEC/UNIX or not TCP): use the peer's address.
    Unknown,
}

/// A complete header: what it says and how many octets of the stream it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub relayed: Relayed,
    pub len: usize,
}

/// The result of looking at the first octets of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header.
    Header(Header),
    /// A header may start here but is not complete: at least `need` octets
    /// in all are required before looking again.
    Incomplete { need: usize },
    /// The stream does not start with a PROXY header (a TLS ClientHello does not).
    Absent,
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY v1 header is not CRLF-terminated within 107 octets")]
    V1TooLong,
    #[error("PROXY v1 header is malformed: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header has version {0}, not 2")]
    V2Version(u8),
    #[error("PROXY v2 header has unknown command {0}")]
    V2Command(u8),
    #[error("PROXY v2 header of {0} octets is longer than the 512 accepted")]
    V2TooLong(usize),
    #[error("PROXY v2 header has undefined family/transport octet {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 address block of {0} octets is too short for its family")]
    V2ShortAddresses(usize),
}

/// Look at the first octets of a stream (`buf`: what has arrived so far).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if could_start(buf, &V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if could_start(buf, b"PROXY ") {
        return parse_v1(buf);
    }
    Ok(Parsed::Absent)
}

/// The first octets of a stream (at least one) could be those of a PROXY
/// header of either version: what a connection that is not from a trusted
/// balancer is refused for (a TLS ClientHello starts with 0x16).
pub fn starts_like_header(buf: &[u8]) -> bool {
    could_start(buf, &V2_SIGNATURE) || could_start(buf, b"PROXY ")
}

/// `buf` agrees with `prefix` as far as both go, and is not empty.
fn could_start(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    n > 0 && buf[..n] == prefix[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Parsed::Incomplete {
            need: buf.len().max(7) + 1,
        });
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    parts.next(); // "PROXY", checked by the caller
    let relayed = match parts.next() {
        Some("UNKNOWN") => Relayed::Unknown,
        Some(proto @ ("TCP4" | "TCP6")) => v1_addresses(proto == "TCP6", &mut parts)?,
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Parsed::Header(Header { relayed, len }))
}

fn v1_addresses<'a>(
    v6: bool,
    parts: &mut impl Iterator<Item = &'a str>,
) -> Result<Relayed, ProxyError> {
    let mut next = || {
        parts
            .next()
            .ok_or(ProxyError::V1Malformed("too few fields"))
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ProxyError::V1Malformed("bad address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ProxyError::V1Malformed("address of the other family"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        // Decimal without a sign or leading zeros, as the specification writes it.
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ProxyError::V1Malformed("bad port"));
        }
        s.parse().map_err(|_| ProxyError::V1Malformed("bad port"))
    };
    let (src, dst) = (ip(next()?)?, ip(next()?)?);
    let (sport, dport) = (port(next()?)?, port(next()?)?);
    if parts.next().is_some() {
        return Err(ProxyError::V1Malformed("too many fields"));
    }
    Ok(Relayed::Client {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete { need: V2_FIXED_LEN });
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyError::V2Command(c)),
    };
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = V2_FIXED_LEN + body_len;
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong(len));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete { need: len });
    }
    let body = &buf[V2_FIXED_LEN..len];
    // Family in the high nibble (1 INET, 2 INET6), transport in the low (1 STREAM).
    let relayed = match (local, fam) {
        (true, _) => Relayed::Unknown,
        (false, 0x11) => {
            let a = body
                .get(..12)
                .ok_or(ProxyError::V2ShortAddresses(body_len))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            client(ip(0), ip(4), &a[8..12])
        }
        (false, 0x21) => {
            let a = body
                .get(..36)
                .ok_or(ProxyError::V2ShortAddresses(body_len))?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            client(ip(0), ip(16), &a[32..36])
        }
        // UNSPEC, and the families this listener cannot use (UDP, UNIX):
        // the addresses are ignored, as the specification allows.
        (false, 0x00 | 0x12 | 0x22 | 0x31 | 0x32) => Relayed::Unknown,
        // "Other values are unspecified ... and must be rejected as invalid".
        (false, other) => return Err(ProxyError::V2Family(other)),
    };
    Ok(Parsed::Header(Header { relayed, len }))
}

fn client(src: IpAddr, dst: IpAddr, ports: &[u8]) -> Relayed {
    Relayed::Client {
        source: SocketAddr::new(src, u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(dst, u16::from_be_bytes([ports[2], ports[3]])),
    }
}

/// Why a connection is refused at [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("PROXY header from a peer that is not a trusted balancer")]
    Untrusted,
    #[error("no PROXY header from a trusted balancer")]
    Missing,
}

/// The client address a connection stands for, given whether its peer is a
/// trusted balancer and the header it sent (if any).
pub fn admit(
    peer: SocketAddr,
    trusted: bool,
    header: Option<&Header>,
) -> Result<SocketAddr, Refusal> {
    match (trusted, header) {
        (false, None) => Ok(peer),
        (false, Some(_)) => Err(Refusal::Untrusted),
        (true, None) => Err(Refusal::Missing),
        (true, Some(h)) => Ok(match h.relayed {
            Relayed::Client { source, .. } => source,
            Relayed::Unknown => peer,
        }),
    }
}

#[cfg(test)]
mod tests;
