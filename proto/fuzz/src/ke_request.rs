//! `ke_request`: the server's NTS-KE request decoder fed in pieces (see
//! [`ChunkPlan`]).
//!
//! Checks: the decoder never reports success with more than `max_bytes`
//! received; it counts every byte fed until it finishes; it finishes at most
//! once; feeding in pieces gives the same outcome as feeding the whole stream
//! at once; a decoded request re-encodes to one that decodes the same; and the
//! negotiation and response built from it are accepted by our own client.

use crate::ChunkPlan;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::cookie::cookie_len;
use nts_proto::ke_client::{ResponseDecoder, ResponseError};
use nts_proto::ke_record::{Record, PROTOCOL_NTPV4};
use nts_proto::ke_server::{
    encode_response, negotiate, KeRequest, Negotiation, NtpTarget, RequestDecoder, RequestError,
    RequestLimits,
};

/// Limits for a selector: 0 is the default; others are small, to reach them quickly.
pub fn limits(selector: u8) -> RequestLimits {
    match selector {
        0 => RequestLimits::default(),
        s => RequestLimits {
            max_bytes: usize::from(s) * 32,
            max_records: usize::from(s) + 2,
        },
    }
}

type Outcome = Result<Option<KeRequest>, RequestError>;

/// The outcome of the whole stream fed in pieces: the first error, or the request
/// if End of Message arrived (data after it being an error), or `None`.
fn feed_pieces(plan: &ChunkPlan<'_>, limits: RequestLimits) -> Outcome {
    let mut dec = RequestDecoder::new(limits);
    let mut fed = 0usize;
    let mut done: Option<KeRequest> = None;
    for piece in plan.chunks() {
        if done.is_none() {
            fed += piece.len();
        }
        let r = dec.feed(piece);
        if done.is_none() {
            assert_eq!(
                dec.bytes_received(),
                fed,
                "bytes_received does not count what was fed"
            );
        }
        match r {
            Err(e) => {
                if matches!(e, RequestError::TooLarge(_)) {
                    assert!(fed > limits.max_bytes, "TooLarge at {fed} bytes");
                }
                return Err(e);
            }
            Ok(r) => {
                assert!(
                    dec.bytes_received() <= limits.max_bytes,
                    "accepted {} bytes, limit {}",
                    dec.bytes_received(),
                    limits.max_bytes
                );
                if let Some(req) = r {
                    assert!(done.is_none(), "request decoded twice");
                    done = Some(req);
                }
            }
        }
    }
    Ok(done)
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(true, &mut out);
    }
    out
}

fn check_request(req: &KeRequest, limits: RequestLimits) {
    // Re-encoding what was understood is no bigger than the original and decodes the same.
    let mut records = vec![Record::NextProtocol(req.protocols.clone())];
    if req.protocols.contains(&PROTOCOL_NTPV4) || !req.algorithms.is_empty() {
        records.push(Record::AeadAlgorithm(req.algorithms.clone()));
    }
    records.extend(req.warnings.iter().map(|w| Record::Warning(*w)));
    records.push(Record::EndOfMessage);
    let again = RequestDecoder::new(limits).feed(&encode(&records));
    assert_eq!(again.as_ref(), Ok(&Some(req.clone())), "re-encoded request");

    // Negotiation and our client's view of the response.
    let neg = negotiate(req, &AeadAlgorithm::ALL);
    let cookie = vec![0xc0; cookie_len(AeadAlgorithm::AesSivCmac256)];
    let target = NtpTarget {
        server: Some("ntp.example".into()),
        port: Some(123),
    };
    let response = encode_response(neg, std::slice::from_ref(&cookie), &target);
    let decoded = ResponseDecoder::new().feed(&response);
    match neg {
        Negotiation::Ntpv4(alg) => {
            assert!(req.protocols.contains(&PROTOCOL_NTPV4));
            let first = req
                .algorithms
                .iter()
                .find_map(|id| AeadAlgorithm::from_id(*id));
            assert_eq!(
                first,
                Some(alg),
                "not the client's first supported algorithm"
            );
            let resp = decoded
                .expect("client refuses our response")
                .expect("response incomplete");
            assert_eq!(resp.aead, alg);
            assert_eq!(resp.cookies, [cookie]);
            assert_eq!(resp.server.as_deref(), Some("ntp.example"));
            assert_eq!(resp.port, Some(123));
        }
        Negotiation::NoProtocol => {
            assert!(!req.protocols.contains(&PROTOCOL_NTPV4));
            assert_eq!(decoded, Err(ResponseError::NoProtocol));
        }
        Negotiation::NoAlgorithm => {
            assert!(req.protocols.contains(&PROTOCOL_NTPV4));
            assert!(req
                .algorithms
                .iter()
                .all(|id| AeadAlgorithm::from_id(*id).is_none()));
            assert_eq!(decoded, Err(ResponseError::NoAlgorithm));
        }
    }
}

/// Returns the outcome of feeding in pieces.
pub fn check(data: &[u8]) -> Outcome {
    let plan = ChunkPlan::parse(data);
    let limits = limits(plan.selector);
    let pieces = feed_pieces(&plan, limits);
    let whole = RequestDecoder::new(limits).feed(plan.payload);
    if plan.payload.len() <= limits.max_bytes {
        // Same result, except that the error message may differ when End of Message
        // is followed by more data: in one piece "data after End of Message" is
        // checked first, in pieces the request may be judged incomplete first.
        // The client gets the same Error record either way.
        let class = |o: &Outcome| {
            o.as_ref()
                .map_err(|e| (e.error_code(), e.reason()))
                .cloned()
        };
        assert_eq!(
            class(&pieces),
            class(&whole),
            "pieces and whole stream disagree"
        );
        if !matches!(
            &whole,
            Err(RequestError::BadRequest("data after End of Message"))
        ) {
            assert_eq!(pieces, whole, "pieces and whole stream disagree");
        }
    } else {
        assert_eq!(whole, Err(RequestError::TooLarge(limits.max_bytes)));
        assert!(
            pieces.is_err(),
            "{} bytes accepted in pieces",
            plan.payload.len()
        );
    }
    if let Ok(Some(req)) = &pieces {
        check_request(req, limits);
    }
    pieces
}
