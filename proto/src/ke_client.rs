//! The client side of NTS-KE (RFC 8915 section 4) as plain functions: build the
//! request, decode the server's response as it streams in.

use crate::aead::AeadAlgorithm;
use crate::cookie::MAX_COOKIE_LEN;
use crate::ke_record::{Decoded, ErrorCode, Record, PROTOCOL_NTPV4};
use thiserror::Error;

/// Most cookies kept from one response; extra ones are ignored.
pub const MAX_COOKIES: usize = 16;
/// Largest response accepted, a bound against a hostile server.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// The request: NTPv4, our AEAD algorithms in order of preference, End of Message.
pub fn build_request(algorithms: &[AeadAlgorithm]) -> Vec<u8> {
    let mut out = Vec::new();
    Record::NextProtocol(vec![PROTOCOL_NTPV4]).encode(true, &mut out);
    Record::AeadAlgorithm(algorithms.iter().map(|a| a.id()).collect()).encode(true, &mut out);
    Record::EndOfMessage.encode(true, &mut out);
    out
}

/// What a successful key exchange yields (the keys come from the TLS exporter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeResponse {
    pub aead: AeadAlgorithm,
    pub cookies: Vec<Vec<u8>>,
    pub server: Option<String>,
    pub port: Option<u16>,
    pub warnings: Vec<u16>,
}

/// Why a key exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("server sent error: {0}")]
    ServerError(ErrorCode),
    #[error("server sent unrecognized critical record type {0}")]
    UnrecognizedCritical(u16),
    #[error("server does not support NTPv4")]
    NoProtocol,
    #[error("server supports none of our AEAD algorithms")]
    NoAlgorithm,
    #[error("server chose AEAD algorithm {0}, which we did not offer")]
    UnexpectedAlgorithm(u16),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("server sent no cookies")]
    NoCookies,
    /// RFC 8915 4.1.8 names the UDP port to send NTP to: 0 cannot be one.
    #[error("NTPv4 Port Negotiation record names port 0, where no NTP server can be")]
    ZeroPort,
    #[error("response exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("connection closed before End of Message")]
    Truncated,
}

/// Incremental response decoder.
#[derive(Debug, Default)]
pub struct ResponseDecoder {
    pending: Vec<u8>,
    total: usize,
    protocol: Option<Vec<u16>>,
    aead: Option<Vec<u16>>,
    cookies: Vec<Vec<u8>>,
    server: Option<String>,
    port: Option<u16>,
    warnings: Vec<u16>,
    error: Option<ErrorCode>,
}

impl ResponseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; `Ok(Some(..))` at End of Message.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<KeResponse>, ResponseError> {
        self.total = self.total.saturating_add(data.len());
        if self.total > MAX_RESPONSE_BYTES {
            return Err(ResponseError::TooLarge);
        }
        self.pending.extend_from_slice(data);
        let mut used = 0;
        let result = loop {
            let (record, critical, consumed) = match Record::decode(&self.pending[used..]) {
                Err(_) => break Err(ResponseError::Malformed("bad record body")),
                Ok(Decoded::Incomplete) => break Ok(None),
                Ok(Decoded::Record {
                    record,
                    critical,
                    consumed,
                }) => (record, critical, consumed),
            };
            used += consumed;
            match record {
                Record::EndOfMessage => break self.finish().map(Some),
                Record::NextProtocol(p) => {
                    if self.protocol.replace(p).is_some() {
                        break Err(ResponseError::Malformed("duplicate Next Protocol"));
                    }
                }
                Record::AeadAlgorithm(a) => {
                    if self.aead.replace(a).is_some() {
                        break Err(ResponseError::Malformed("duplicate AEAD Algorithm"));
                    }
                }
                Record::Error(code) => self.error = Some(code),
                Record::Warning(w) => self.warnings.push(w),
                Record::NewCookie(c) => {
                    if c.is_empty() || c.len() > MAX_COOKIE_LEN.max(256) {
                        break Err(ResponseError::Malformed("cookie of unreasonable size"));
                    }
                    if self.cookies.len() < MAX_COOKIES {
                        self.cookies.push(c);
                    }
                }
                Record::Server(s) => self.server = Some(s),
                Record::Port(0) => break Err(ResponseError::ZeroPort),
                Record::Port(p) => self.port = Some(p),
                Record::Unknown { record_type, .. } => {
                    if critical {
                        break Err(ResponseError::UnrecognizedCritical(record_type));
                    }
                }
            }
        };
        self.pending.drain(..used);
        result
    }

    /// Call when the stream ends without End of Message.
    pub fn eof(&self) -> ResponseError {
        match self.error {
            Some(code) => ResponseError::ServerError(code),
            None => ResponseError::Truncated,
        }
    }

    fn finish(&mut self) -> Result<KeResponse, ResponseError> {
        if let Some(code) = self.error {
            return Err(ResponseError::ServerError(code));
        }
        let protocol = self
            .protocol
            .take()
            .ok_or(ResponseError::Malformed("missing Next Protocol"))?;
        if protocol != [PROTOCOL_NTPV4] {
            return Err(if protocol.is_empty() {
                ResponseError::NoProtocol
            } else {
                ResponseError::Malformed("Next Protocol must name exactly NTPv4")
            });
        }
        let aead = self
            .aead
            .take()
            .ok_or(ResponseError::Malformed("missing AEAD Algorithm"))?;
        let aead = match aead.as_slice() {
            [] => return Err(ResponseError::NoAlgorithm),
            [id] => AeadAlgorithm::from_id(*id).ok_or(ResponseError::UnexpectedAlgorithm(*id))?,
            _ => {
                return Err(ResponseError::Malformed(
                    "AEAD record must name one algorithm",
                ))
            }
        };
        if self.cookies.is_empty() {
            return Err(ResponseError::NoCookies);
        }
        Ok(KeResponse {
            aead,
            cookies: std::mem::take(&mut self.cookies),
            server: self.server.take(),
            port: self.port,
            warnings: std::mem::take(&mut self.warnings),
        })
    }
}

/// Check the server's choice against what we offered.
pub fn check_algorithm(resp: &KeResponse, offered: &[AeadAlgorithm]) -> Result<(), ResponseError> {
    if offered.contains(&resp.aead) {
        Ok(())
    } else {
        Err(ResponseError::UnexpectedAlgorithm(resp.aead.id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ke_server::{self, RequestDecoder, RequestLimits};

    #[test]
    fn request_is_accepted_by_our_server() {
        let req = build_request(&AeadAlgorithm::ALL);
        let decoded = RequestDecoder::new(RequestLimits::default())
            .feed(&req)
            .unwrap()
            .unwrap();
        assert_eq!(decoded.protocols, vec![0]);
        assert_eq!(decoded.algorithms, vec![17, 15]);
    }

    #[test]
    fn error_responses() {
        let out = ke_server::encode_error(ErrorCode::BadRequest);
        assert_eq!(
            ResponseDecoder::new().feed(&out),
            Err(ResponseError::ServerError(ErrorCode::BadRequest))
        );
        let mut d = ResponseDecoder::new();
        let mut partial = Vec::new();
        Record::Error(ErrorCode::InternalServerError).encode(true, &mut partial);
        assert_eq!(d.feed(&partial), Ok(None));
        assert_eq!(
            d.eof(),
            ResponseError::ServerError(ErrorCode::InternalServerError)
        );
        assert_eq!(ResponseDecoder::new().eof(), ResponseError::Truncated);
    }

    fn response(records: &[(Record, bool)]) -> Result<Option<KeResponse>, ResponseError> {
        let mut out = Vec::new();
        for (r, c) in records {
            r.encode(*c, &mut out);
        }
        ResponseDecoder::new().feed(&out)
    }

    #[test]
    fn response_checks() {
        use Record::*;
        assert_eq!(
            response(&[(NextProtocol(vec![]), true), (EndOfMessage, true)]),
            Err(ResponseError::NoProtocol)
        );
        assert_eq!(
            response(&[
                (NextProtocol(vec![0]), true),
                (AeadAlgorithm(vec![]), true),
                (EndOfMessage, true)
            ]),
            Err(ResponseError::NoAlgorithm)
        );
        assert_eq!(
            response(&[
                (NextProtocol(vec![0]), true),
                (AeadAlgorithm(vec![15]), true),
                (EndOfMessage, true)
            ]),
            Err(ResponseError::NoCookies)
        );
        assert_eq!(
            response(&[
                (NextProtocol(vec![0]), true),
                (AeadAlgorithm(vec![99]), true),
                (NewCookie(vec![1; 10]), false),
                (EndOfMessage, true)
            ]),
            Err(ResponseError::UnexpectedAlgorithm(99))
        );
        assert_eq!(
            response(&[
                (NextProtocol(vec![0]), true),
                (
                    Unknown {
                        critical: true,
                        record_type: 77,
                        body: vec![]
                    },
                    true
                ),
            ]),
            Err(ResponseError::UnrecognizedCritical(77))
        );
        // A warning is not fatal.
        let ok = response(&[
            (NextProtocol(vec![0]), true),
            (Warning(5), true),
            (AeadAlgorithm(vec![15]), true),
            (NewCookie(vec![1; 10]), false),
            (EndOfMessage, true),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(ok.warnings, vec![5]);
        assert!(check_algorithm(&ok, &[crate::aead::AeadAlgorithm::AesSivCmac512]).is_err());
    }

    /// Port 0 cannot be sent to; a client that took it failed every NTP
    /// exchange and ran key exchange again every few seconds.
    #[test]
    fn port_zero_is_a_ke_failure() {
        use Record::*;
        let r = response(&[
            (NextProtocol(vec![0]), true),
            (AeadAlgorithm(vec![15]), true),
            (NewCookie(vec![1; 10]), false),
            (Port(0), false),
            (EndOfMessage, true),
        ]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("NTPv4 Port Negotiation") && e.contains("port 0"),
            "{e}"
        );
        let ok = response(&[
            (NextProtocol(vec![0]), true),
            (AeadAlgorithm(vec![15]), true),
            (NewCookie(vec![1; 10]), false),
            (Port(4123), false),
            (EndOfMessage, true),
        ]);
        assert_eq!(ok.unwrap().unwrap().port, Some(4123));
    }

    #[test]
    fn oversized_response() {
        let mut d = ResponseDecoder::new();
        assert_eq!(
            d.feed(&vec![0u8; MAX_RESPONSE_BYTES + 1]),
            Err(ResponseError::TooLarge)
        );
    }
}
