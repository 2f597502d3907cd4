//! The NTS-KE server's answer policy (RFC 8915 section 4), as one pure
//! function: from the decoded request, the keys exported from the TLS
//! session, the cookie key ring, the time and where the client should send
//! NTP, the bytes to write back and what happened (for metrics and logs).
//! The listener only reads TLS, exports the keys and writes these bytes.

use crate::aead::{AeadAlgorithm, AeadKey};
use crate::ke_record::ErrorCode;
use crate::ke_server::{
    encode_error, encode_response, make_cookies, negotiate, KeRequest, Negotiation, RequestError,
    ServerNegotiation, TargetSource, COOKIES_PER_RESPONSE,
};
use crate::key_ring::KeyRing;
use crate::time::UnixTime;

/// The session keys exported from TLS for the negotiated algorithm.
#[derive(Debug, Clone)]
pub struct ExportedKeys {
    pub c2s: AeadKey,
    pub s2c: AeadKey,
}

/// What an answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeOutcome {
    /// Cookies issued for this algorithm, the client sent to a time server.
    Issued {
        alg: AeadAlgorithm,
        cookies: usize,
        source: TargetSource,
        server: Option<String>,
        port: Option<u16>,
    },
    /// No protocol in common: empty Next Protocol record.
    NoProtocol,
    /// No algorithm in common: empty AEAD Algorithm record.
    NoAlgorithm,
    /// No live time server and no fallback: Internal Server Error.
    NoTimeServer,
    /// The keys could not be exported or the ring has no current key.
    CannotIssue,
    /// The request was refused with an Error record (metric label).
    Refused(&'static str),
}

/// An answer: the records to write and what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeAnswer {
    pub bytes: Vec<u8>,
    pub outcome: KeOutcome,
}

/// Everything the answer depends on besides the request.
pub struct AnswerInput<'a> {
    /// The keys the TLS session exported for the negotiated algorithm, or
    /// None when the export failed.
    pub keys: Option<ExportedKeys>,
    pub ring: &'a KeyRing,
    pub now: UnixTime,
    pub negotiation: &'a ServerNegotiation,
}

/// The algorithm to export keys for, or None when the answer needs no keys.
pub fn keys_needed(request: &KeRequest, supported: &[AeadAlgorithm]) -> Option<AeadAlgorithm> {
    match negotiate(request, supported) {
        Negotiation::Ntpv4(alg) => Some(alg),
        Negotiation::NoProtocol | Negotiation::NoAlgorithm => None,
    }
}

/// Answer a decoded request. `place` is asked for a registered time server
/// (host, port) only when cookies were issued, so a placement is spent only
/// on an answer that names it.
pub fn answer(
    request: &KeRequest,
    supported: &[AeadAlgorithm],
    input: AnswerInput<'_>,
    place: &mut dyn FnMut() -> Option<(String, u16)>,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> KeAnswer {
    let neg = negotiate(request, supported);
    let fallback = &input.negotiation.fallback;
    let alg = match neg {
        Negotiation::Ntpv4(alg) => alg,
        Negotiation::NoProtocol => return plain(neg, fallback, KeOutcome::NoProtocol),
        Negotiation::NoAlgorithm => return plain(neg, fallback, KeOutcome::NoAlgorithm),
    };
    let now = u64::try_from(input.now.as_secs()).unwrap_or(0);
    let cookies = input.keys.as_ref().and_then(|k| {
        (k.c2s.algorithm() == alg && k.s2c.algorithm() == alg).then_some(())?;
        make_cookies(input.ring, now, &k.c2s, &k.s2c, COOKIES_PER_RESPONSE, rng).ok()
    });
    let Some(cookies) = cookies else {
        return error(ErrorCode::InternalServerError, KeOutcome::CannotIssue);
    };
    match input.negotiation.choose(place()) {
        Ok((target, source)) => KeAnswer {
            bytes: encode_response(neg, &cookies, &target),
            outcome: KeOutcome::Issued {
                alg,
                cookies: cookies.len(),
                source,
                server: target.server,
                port: target.port,
            },
        },
        Err(code) => error(code, KeOutcome::NoTimeServer),
    }
}

/// The answer to a request that did not decode.
pub fn refuse(why: &RequestError) -> KeAnswer {
    error(why.error_code(), KeOutcome::Refused(why.reason()))
}

/// The answer to a client that closed its side before End of Message.
pub fn truncated() -> KeAnswer {
    error(ErrorCode::BadRequest, KeOutcome::Refused("bad_request"))
}

fn plain(neg: Negotiation, fallback: &crate::ke_server::NtpTarget, o: KeOutcome) -> KeAnswer {
    KeAnswer {
        bytes: encode_response(neg, &[], fallback),
        outcome: o,
    }
}

fn error(code: ErrorCode, outcome: KeOutcome) -> KeAnswer {
    KeAnswer {
        bytes: encode_error(code),
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ke_client::ResponseDecoder;
    use crate::ke_record::PROTOCOL_NTPV4;
    use crate::ke_server::NtpTarget;
    use crate::key_ring::{KeySchedule, RootSecret};

    const NOW: i64 = 1_800_000_000;

    fn ring() -> KeyRing {
        let root = RootSecret::from_bytes(&[7; 32]).unwrap();
        KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), NOW as u64)
    }

    fn keys(alg: AeadAlgorithm) -> ExportedKeys {
        ExportedKeys {
            c2s: AeadKey::new(alg, &vec![1; alg.key_len()]).unwrap(),
            s2c: AeadKey::new(alg, &vec![2; alg.key_len()]).unwrap(),
        }
    }

    fn request(protocols: Vec<u16>, algorithms: Vec<u16>) -> KeRequest {
        KeRequest {
            protocols,
            algorithms,
            warnings: Vec::new(),
        }
    }

    fn run(
        req: &KeRequest,
        keys: Option<ExportedKeys>,
        ring: &KeyRing,
        neg: &ServerNegotiation,
        placed: Option<(String, u16)>,
    ) -> (KeAnswer, usize) {
        let mut asked = 0;
        let a = answer(
            req,
            &AeadAlgorithm::ALL,
            AnswerInput {
                keys,
                ring,
                now: UnixTime::from_secs(NOW),
                negotiation: neg,
            },
            &mut || {
                asked += 1;
                placed.clone()
            },
            &mut rand::rngs::OsRng,
        );
        (a, asked)
    }

    #[test]
    fn issues_eight_cookies_and_names_the_placed_server() {
        let ring = ring();
        let alg = AeadAlgorithm::AesSivCmac256;
        let req = request(vec![PROTOCOL_NTPV4], vec![alg.id()]);
        assert_eq!(keys_needed(&req, &AeadAlgorithm::ALL), Some(alg));
        let neg = ServerNegotiation {
            key_sync: true,
            fallback: NtpTarget::default(),
        };
        let (a, asked) = run(
            &req,
            Some(keys(alg)),
            &ring,
            &neg,
            Some(("ts.example".into(), 123)),
        );
        assert_eq!(asked, 1);
        assert_eq!(
            a.outcome,
            KeOutcome::Issued {
                alg,
                cookies: COOKIES_PER_RESPONSE,
                source: TargetSource::Registry,
                server: Some("ts.example".into()),
                port: Some(123),
            }
        );
        let mut d = ResponseDecoder::new();
        let r = d.feed(&a.bytes).unwrap().unwrap();
        assert_eq!(r.cookies.len(), COOKIES_PER_RESPONSE);
        assert_eq!(r.server.as_deref(), Some("ts.example"));
        // No live server under key sync and no fallback: Internal Server Error.
        let (a, _) = run(&req, Some(keys(alg)), &ring, &neg, None);
        assert_eq!(a.outcome, KeOutcome::NoTimeServer);
        assert_eq!(a.bytes, encode_error(ErrorCode::InternalServerError));
    }

    #[test]
    fn refusals_spend_no_placement() {
        let ring = ring();
        let neg = ServerNegotiation {
            key_sync: false,
            fallback: NtpTarget::default(),
        };
        let alg = AeadAlgorithm::AesSivCmac512;
        let ok = request(vec![PROTOCOL_NTPV4], vec![alg.id()]);
        for (req, keys, ring, want) in [
            (
                request(vec![9], vec![alg.id()]),
                None,
                &ring,
                KeOutcome::NoProtocol,
            ),
            (
                request(vec![PROTOCOL_NTPV4], vec![999]),
                None,
                &ring,
                KeOutcome::NoAlgorithm,
            ),
            (ok.clone(), None, &ring, KeOutcome::CannotIssue),
            // Keys of another algorithm than the one negotiated.
            (
                ok.clone(),
                Some(keys(AeadAlgorithm::AesSivCmac256)),
                &ring,
                KeOutcome::CannotIssue,
            ),
            (
                ok.clone(),
                Some(keys(alg)),
                &KeyRing::from_keys(Vec::new()),
                KeOutcome::CannotIssue,
            ),
        ] {
            let (a, asked) = run(&req, keys, ring, &neg, Some(("x".into(), 1)));
            assert_eq!(a.outcome, want);
            assert_eq!(asked, 0, "{want:?}");
        }
        assert_eq!(truncated().bytes, encode_error(ErrorCode::BadRequest));
    }
}
