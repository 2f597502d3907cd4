//! The server side of NTS-KE (RFC 8915 section 4) as plain functions: decode a
//! request as it streams in, negotiate, and encode the response. The TLS shell
//! in `ke-server` moves the bytes and exports the keys.

use crate::aead::{AeadAlgorithm, AeadKey};
use crate::cookie::{self, CookieContents, COOKIE_NONCE_LEN};
use crate::ke_record::{Decoded, ErrorCode, Record, PROTOCOL_NTPV4};
use crate::key_ring::KeyRing;
use thiserror::Error;

/// ALPN protocol id for NTS-KE.
pub const ALPN: &[u8] = b"ntske/1";
/// TLS exporter label for the C2S and S2C keys.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";
/// Cookies handed out per key exchange: enough for eight polls without a reply lost.
pub const COOKIES_PER_RESPONSE: usize = 8;

/// Exporter context: protocol id (NTPv4 = 0), AEAD id, then 0 for C2S or 1 for S2C.
pub fn exporter_context(alg: AeadAlgorithm, s2c: bool) -> [u8; 5] {
    let id = alg.id().to_be_bytes();
    [0, 0, id[0], id[1], s2c as u8]
}

/// Bounds on what one request may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Total bytes of the request, End of Message included.
    pub max_bytes: usize,
    /// Number of records, End of Message included.
    pub max_records: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024,
            max_records: 64,
        }
    }
}

/// A request that passed decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeRequest {
    pub protocols: Vec<u16>,
    /// AEAD ids in the client's order of preference (empty if the record was absent
    /// because no NTPv4 was asked for).
    pub algorithms: Vec<u16>,
    /// Warnings the client sent: logged, never fatal.
    pub warnings: Vec<u16>,
}

/// Why a request is refused. Each maps to the Error record code the client receives.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("unrecognized critical record type {0}")]
    UnrecognizedCritical(u16),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request exceeds {0} bytes")]
    TooLarge(usize),
    #[error("request has more than {0} records")]
    TooManyRecords(usize),
}

impl RequestError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::UnrecognizedCritical(_) => ErrorCode::UnrecognizedCriticalRecord,
            _ => ErrorCode::BadRequest,
        }
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnrecognizedCritical(_) => "unrecognized_critical",
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "too_large",
            Self::TooManyRecords(_) => "too_many_records",
        }
    }
}

/// Incremental request decoder: feed it what TLS delivers until it returns the request.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: RequestLimits,
    pending: Vec<u8>,
    total: usize,
    records: usize,
    protocols: Option<Vec<u16>>,
    algorithms: Option<Vec<u16>>,
    warnings: Vec<u16>,
    finished: bool,
}

impl RequestDecoder {
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            limits,
            pending: Vec::new(),
            total: 0,
            records: 0,
            protocols: None,
            algorithms: None,
            warnings: Vec::new(),
            finished: false,
        }
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> usize {
        self.total
    }

    /// Consume `data`. Returns `Ok(Some(request))` once End of Message has arrived,
    /// `Ok(None)` when more bytes are needed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<KeRequest>, RequestError> {
        if self.finished {
            if data.is_empty() {
                return Ok(None);
            }
            return Err(RequestError::BadRequest("data after End of Message"));
        }
        self.total = self.total.saturating_add(data.len());
        if self.total > self.limits.max_bytes {
            return Err(RequestError::TooLarge(self.limits.max_bytes));
        }
        self.pending.extend_from_slice(data);
        let mut used = 0;
        let result = loop {
            let decoded = Record::decode(&self.pending[used..])
                .map_err(|_| RequestError::BadRequest("malformed record body"));
            let (record, critical, consumed) = match decoded {
                Err(e) => break Err(e),
                Ok(Decoded::Incomplete) => break Ok(None),
                Ok(Decoded::Record {
                    record,
                    critical,
                    consumed,
                }) => (record, critical, consumed),
            };
            used += consumed;
            self.records += 1;
            if self.records > self.limits.max_records {
                break Err(RequestError::TooManyRecords(self.limits.max_records));
            }
            match self.accept(record, critical) {
                Err(e) => break Err(e),
                Ok(false) => {}
                Ok(true) => {
                    if used != self.pending.len() {
                        break Err(RequestError::BadRequest("data after End of Message"));
                    }
                    break self.finish().map(Some);
                }
            }
        };
        self.pending.drain(..used);
        result
    }

    /// Take in one record; true at End of Message.
    fn accept(&mut self, record: Record, critical: bool) -> Result<bool, RequestError> {
        match record {
            Record::EndOfMessage => return Ok(true),
            Record::NextProtocol(list) => {
                if self.protocols.replace(list).is_some() {
                    return Err(RequestError::BadRequest(
                        "more than one Next Protocol record",
                    ));
                }
            }
            Record::AeadAlgorithm(list) => {
                if self.algorithms.replace(list).is_some() {
                    return Err(RequestError::BadRequest(
                        "more than one AEAD Algorithm record",
                    ));
                }
            }
            Record::Error(_) => {
                return Err(RequestError::BadRequest("client sent an Error record"));
            }
            Record::Warning(code) => self.warnings.push(code),
            // A client may send cookies or a server/port preference; we ignore them.
            Record::NewCookie(_) | Record::Server(_) | Record::Port(_) => {}
            Record::Unknown { record_type, .. } => {
                if critical {
                    return Err(RequestError::UnrecognizedCritical(record_type));
                }
            }
        }
        Ok(false)
    }

    fn finish(&mut self) -> Result<KeRequest, RequestError> {
        self.finished = true;
        let protocols = self
            .protocols
            .take()
            .ok_or(RequestError::BadRequest("missing Next Protocol record"))?;
        let algorithms = self.algorithms.take();
        if protocols.contains(&PROTOCOL_NTPV4) && algorithms.is_none() {
            return Err(RequestError::BadRequest("missing AEAD Algorithm record"));
        }
        Ok(KeRequest {
            protocols,
            algorithms: algorithms.unwrap_or_default(),
            warnings: std::mem::take(&mut self.warnings),
        })
    }
}

/// What the server agrees to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// NTPv4 with this AEAD algorithm: cookies follow.
    Ntpv4(AeadAlgorithm),
    /// The client asked for no protocol we speak: empty Next Protocol record.
    NoProtocol,
    /// NTPv4, but none of the client's algorithms: empty AEAD record, no cookies.
    NoAlgorithm,
}

/// Pick the protocol and the first algorithm in the client's list that we support.
pub fn negotiate(req: &KeRequest, supported: &[AeadAlgorithm]) -> Negotiation {
    if !req.protocols.contains(&PROTOCOL_NTPV4) {
        return Negotiation::NoProtocol;
    }
    req.algorithms
        .iter()
        .filter_map(|id| AeadAlgorithm::from_id(*id))
        .find(|a| supported.contains(a))
        .map_or(Negotiation::NoAlgorithm, Negotiation::Ntpv4)
}

/// Where clients should send NTP: Server and Port Negotiation records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NtpTarget {
    pub server: Option<String>,
    pub port: Option<u16>,
}

/// Where a [`ServerNegotiation`] decision sent the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    /// A live time server from the key-sync registry.
    Registry,
    /// The configured `ntp.server` (or, without key sync, this host).
    Fallback,
}

/// How a KE server names the time server in its answer (RFC 8915 sections
/// 4.1.7 and 4.1.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNegotiation {
    /// Time servers register over key sync: only a registered one, or an
    /// explicitly configured fallback, may be named.
    pub key_sync: bool,
    /// The configured target (`ntp.server` / `ntp.port`).
    pub fallback: NtpTarget,
}

impl ServerNegotiation {
    /// The target for one answer, given the live time server the registry
    /// picked (if any). With key sync and no configured server, leaving the
    /// Server record out would send clients to this host, which serves no
    /// NTP: the answer is Internal Server Error instead.
    pub fn choose(
        &self,
        registered: Option<(String, u16)>,
    ) -> Result<(NtpTarget, TargetSource), ErrorCode> {
        match registered {
            Some((host, port)) => Ok((
                NtpTarget {
                    server: Some(host),
                    port: Some(port),
                },
                TargetSource::Registry,
            )),
            None if self.key_sync && self.fallback.server.is_none() => {
                Err(ErrorCode::InternalServerError)
            }
            None => Ok((self.fallback.clone(), TargetSource::Fallback)),
        }
    }
}

/// The cookie key ring has no key for now: the server cannot issue cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("no current cookie key")]
pub struct NoCurrentKey;

/// Seal `n` cookies carrying `c2s`/`s2c` with the ring's current key.
pub fn make_cookies(
    ring: &KeyRing,
    now: u64,
    c2s: &AeadKey,
    s2c: &AeadKey,
    n: usize,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Result<Vec<Vec<u8>>, NoCurrentKey> {
    let key = ring.current(now).ok_or(NoCurrentKey)?;
    let contents = CookieContents {
        c2s: c2s.clone(),
        s2c: s2c.clone(),
    };
    Ok((0..n)
        .map(|_| {
            let mut nonce = [0u8; COOKIE_NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            cookie::seal(key, &contents, &nonce)
        })
        .collect())
}

/// Encode a successful (or "nothing in common") response.
pub fn encode_response(neg: Negotiation, cookies: &[Vec<u8>], target: &NtpTarget) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + cookies.iter().map(|c| c.len() + 4).sum::<usize>());
    match neg {
        Negotiation::NoProtocol => {
            Record::NextProtocol(vec![]).encode(true, &mut out);
        }
        Negotiation::NoAlgorithm => {
            Record::NextProtocol(vec![PROTOCOL_NTPV4]).encode(true, &mut out);
            Record::AeadAlgorithm(vec![]).encode(true, &mut out);
        }
        Negotiation::Ntpv4(alg) => {
            Record::NextProtocol(vec![PROTOCOL_NTPV4]).encode(true, &mut out);
            Record::AeadAlgorithm(vec![alg.id()]).encode(true, &mut out);
            if let Some(server) = &target.server {
                Record::Server(server.clone()).encode(false, &mut out);
            }
            if let Some(port) = target.port {
                Record::Port(port).encode(false, &mut out);
            }
            for c in cookies {
                Record::NewCookie(c.clone()).encode(false, &mut out);
            }
        }
    }
    Record::EndOfMessage.encode(true, &mut out);
    out
}

/// Encode an Error response.
pub fn encode_error(code: ErrorCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    Record::Error(code).encode(true, &mut out);
    Record::EndOfMessage.encode(true, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_negotiation_never_names_this_host_under_key_sync() {
        let here = NtpTarget::default();
        let named = NtpTarget {
            server: Some("ntp.example.net".into()),
            port: Some(123),
        };
        let live = Some(("192.0.2.1".to_string(), 4123));
        for key_sync in [false, true] {
            let n = ServerNegotiation {
                key_sync,
                fallback: here.clone(),
            };
            let (t, src) = n.choose(live.clone()).unwrap();
            assert_eq!(
                (t.server.as_deref(), t.port, src),
                (Some("192.0.2.1"), Some(4123), TargetSource::Registry)
            );
            let none = n.choose(None);
            if key_sync {
                assert_eq!(none, Err(ErrorCode::InternalServerError));
            } else {
                assert_eq!(none, Ok((here.clone(), TargetSource::Fallback)));
            }
        }
        let n = ServerNegotiation {
            key_sync: true,
            fallback: named.clone(),
        };
        assert_eq!(n.choose(None), Ok((named, TargetSource::Fallback)));
    }
    use crate::ke_record::Record;
    use crate::key_ring::{KeySchedule, RootSecret};

    fn encode(records: &[(Record, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (r, c) in records {
            r.encode(*c, &mut out);
        }
        out
    }

    fn good() -> Vec<u8> {
        encode(&[
            (Record::NextProtocol(vec![0]), true),
            (Record::AeadAlgorithm(vec![17, 15]), true),
            (Record::EndOfMessage, true),
        ])
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<KeRequest>, RequestError> {
        RequestDecoder::new(RequestLimits::default()).feed(bytes)
    }

    #[test]
    fn good_request_in_one_piece_and_byte_by_byte() {
        let req = decode_all(&good()).unwrap().unwrap();
        assert_eq!(req.protocols, vec![0]);
        assert_eq!(req.algorithms, vec![17, 15]);
        let mut d = RequestDecoder::new(RequestLimits::default());
        let bytes = good();
        for (i, b) in bytes.iter().enumerate() {
            let r = d.feed(&[*b]).unwrap();
            assert_eq!(r.is_some(), i == bytes.len() - 1);
        }
        assert_eq!(
            negotiate(&req, &[AeadAlgorithm::AesSivCmac256]),
            Negotiation::Ntpv4(AeadAlgorithm::AesSivCmac256)
        );
        assert_eq!(
            negotiate(&req, &AeadAlgorithm::ALL),
            Negotiation::Ntpv4(AeadAlgorithm::AesSivCmac512)
        );
    }

    #[test]
    fn errors_map_to_codes() {
        let unknown_critical = encode(&[
            (Record::NextProtocol(vec![0]), true),
            (
                Record::Unknown {
                    critical: true,
                    record_type: 0x4000,
                    body: vec![],
                },
                true,
            ),
        ]);
        let e = decode_all(&unknown_critical).unwrap_err();
        assert_eq!(e, RequestError::UnrecognizedCritical(0x4000));
        assert_eq!(e.error_code(), ErrorCode::UnrecognizedCriticalRecord);

        // Unknown non-critical records are ignored.
        let unknown = encode(&[
            (Record::NextProtocol(vec![0]), true),
            (
                Record::Unknown {
                    critical: false,
                    record_type: 0x4000,
                    body: vec![1],
                },
                false,
            ),
            (Record::AeadAlgorithm(vec![15]), true),
            (Record::Warning(3), true),
            (Record::EndOfMessage, true),
        ]);
        let req = decode_all(&unknown).unwrap().unwrap();
        assert_eq!(req.warnings, vec![3]);

        let cases: Vec<Vec<(Record, bool)>> = vec![
            // no Next Protocol
            vec![
                (Record::AeadAlgorithm(vec![15]), true),
                (Record::EndOfMessage, true),
            ],
            // no AEAD
            vec![
                (Record::NextProtocol(vec![0]), true),
                (Record::EndOfMessage, true),
            ],
            // duplicate Next Protocol
            vec![
                (Record::NextProtocol(vec![0]), true),
                (Record::NextProtocol(vec![0]), true),
            ],
            // Error from the client
            vec![(Record::Error(ErrorCode::BadRequest), true)],
        ];
        for c in cases {
            let e = decode_all(&encode(&c)).unwrap_err();
            assert_eq!(e.error_code(), ErrorCode::BadRequest, "{c:?}");
        }
        // Malformed body.
        assert_eq!(
            decode_all(&[0x80, 1, 0, 1, 0]).unwrap_err().error_code(),
            ErrorCode::BadRequest
        );
        // Trailing data after End of Message.
        let mut trailing = good();
        trailing.push(0);
        assert!(decode_all(&trailing).is_err());
    }

    #[test]
    fn limits() {
        let mut many = Vec::new();
        for _ in 0..10_000 {
            Record::Warning(1).encode(true, &mut many);
        }
        let e = RequestDecoder::new(RequestLimits {
            max_bytes: 1 << 20,
            max_records: 64,
        })
        .feed(&many)
        .unwrap_err();
        assert_eq!(e, RequestError::TooManyRecords(64));
        let e = decode_all(&many).unwrap_err();
        assert_eq!(e, RequestError::TooLarge(1024));
        // An oversized record announced in its header is cut off at the byte limit.
        let mut d = RequestDecoder::new(RequestLimits::default());
        assert_eq!(d.feed(&[0, 5, 0xff, 0xff]), Ok(None));
        assert_eq!(d.feed(&[0u8; 1020]), Ok(None));
        assert_eq!(d.feed(&[0u8; 1]), Err(RequestError::TooLarge(1024)));
    }

    #[test]
    fn negotiation_edges() {
        let req = KeRequest {
            protocols: vec![1, 2],
            algorithms: vec![],
            warnings: vec![],
        };
        assert_eq!(
            negotiate(&req, &AeadAlgorithm::ALL),
            Negotiation::NoProtocol
        );
        let req = KeRequest {
            protocols: vec![0],
            algorithms: vec![1, 2],
            warnings: vec![],
        };
        assert_eq!(
            negotiate(&req, &AeadAlgorithm::ALL),
            Negotiation::NoAlgorithm
        );
        let out = encode_response(Negotiation::NoAlgorithm, &[], &NtpTarget::default());
        assert_eq!(
            out,
            encode(&[
                (Record::NextProtocol(vec![0]), true),
                (Record::AeadAlgorithm(vec![]), true),
                (Record::EndOfMessage, true)
            ])
        );
    }

    #[test]
    fn response_with_cookies() {
        let root = RootSecret::from_bytes(&[5; 32]).unwrap();
        let ring = KeyRing::derive(&root, &KeySchedule::default(), 1_000_000);
        let alg = AeadAlgorithm::AesSivCmac256;
        let c2s = AeadKey::new(alg, &[1; 32]).unwrap();
        let s2c = AeadKey::new(alg, &[2; 32]).unwrap();
        let cookies =
            make_cookies(&ring, 1_000_000, &c2s, &s2c, 8, &mut rand::thread_rng()).unwrap();
        assert_eq!(cookies.len(), 8);
        assert_ne!(cookies[0], cookies[1]);
        let target = NtpTarget {
            server: Some("127.0.0.1".into()),
            port: Some(4123),
        };
        let out = encode_response(Negotiation::Ntpv4(alg), &cookies, &target);
        let resp = crate::ke_client::ResponseDecoder::new()
            .feed(&out)
            .unwrap()
            .unwrap();
        assert_eq!(resp.aead, alg);
        assert_eq!(resp.cookies, cookies);
        assert_eq!(resp.server.as_deref(), Some("127.0.0.1"));
        assert_eq!(resp.port, Some(4123));
        for c in &resp.cookies {
            let opened = cookie::open(&ring, c, 1_000_000).unwrap();
            assert_eq!(opened.c2s, c2s);
        }
        assert!(make_cookies(
            &KeyRing::default(),
            0,
            &c2s,
            &s2c,
            8,
            &mut rand::thread_rng()
        )
        .is_err());
    }

    #[test]
    fn context_bytes() {
        assert_eq!(
            exporter_context(AeadAlgorithm::AesSivCmac256, false),
            [0, 0, 0, 15, 0]
        );
        assert_eq!(
            exporter_context(AeadAlgorithm::AesSivCmac512, true),
            [0, 0, 0, 17, 1]
        );
    }
}
