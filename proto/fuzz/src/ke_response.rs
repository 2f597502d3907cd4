//! `ke_response`: the client's NTS-KE response decoder fed in pieces (see
//! [`ChunkPlan`]; the selector picks which algorithms the client offered).
//!
//! Checks: nothing is accepted past `MAX_RESPONSE_BYTES`; a response never
//! holds more than `MAX_COOKIES` cookies or a cookie of unreasonable size,
//! or port 0;
//! feeding in pieces gives the same first outcome as feeding the whole stream at
//! once; a decoded response re-encodes to one that decodes the same.

use crate::ChunkPlan;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::cookie::MAX_COOKIE_LEN;
use nts_proto::ke_client::{
    check_algorithm, KeResponse, ResponseDecoder, ResponseError, MAX_COOKIES, MAX_RESPONSE_BYTES,
};
use nts_proto::ke_record::{Record, PROTOCOL_NTPV4};

type Outcome = Result<Option<KeResponse>, ResponseError>;

/// The first outcome of feeding in pieces: the first error or response, else `None`.
fn feed_pieces(plan: &ChunkPlan<'_>) -> Outcome {
    let mut dec = ResponseDecoder::new();
    let mut fed = 0usize;
    for piece in plan.chunks() {
        fed += piece.len();
        match dec.feed(piece) {
            Err(e) => {
                if e == ResponseError::TooLarge {
                    assert!(fed > MAX_RESPONSE_BYTES, "TooLarge at {fed} bytes");
                }
                return Err(e);
            }
            Ok(r) => {
                assert!(fed <= MAX_RESPONSE_BYTES, "accepted {fed} bytes");
                if r.is_some() {
                    return Ok(r);
                }
            }
        }
    }
    // The stream ended without End of Message: what the client reports then.
    let e = dec.eof();
    assert!(matches!(
        e,
        ResponseError::Truncated | ResponseError::ServerError(_)
    ));
    Ok(None)
}

fn check_response(resp: &KeResponse, selector: u8) {
    assert!(!resp.cookies.is_empty() && resp.cookies.len() <= MAX_COOKIES);
    for c in &resp.cookies {
        assert!(
            !c.is_empty() && c.len() <= MAX_COOKIE_LEN.max(256),
            "cookie of {}",
            c.len()
        );
    }
    if let Some(s) = &resp.server {
        assert!(!s.is_empty() && s.is_ascii());
    }
    assert_ne!(resp.port, Some(0), "port 0 accepted");
    let offered: &[AeadAlgorithm] = match selector % 3 {
        0 => &AeadAlgorithm::ALL,
        1 => &[AeadAlgorithm::AesSivCmac256],
        _ => &[AeadAlgorithm::AesSivCmac512],
    };
    assert_eq!(
        check_algorithm(resp, offered).is_ok(),
        offered.contains(&resp.aead)
    );

    let mut out = Vec::new();
    Record::NextProtocol(vec![PROTOCOL_NTPV4]).encode(true, &mut out);
    Record::AeadAlgorithm(vec![resp.aead.id()]).encode(true, &mut out);
    for w in &resp.warnings {
        Record::Warning(*w).encode(true, &mut out);
    }
    if let Some(s) = &resp.server {
        Record::Server(s.clone()).encode(false, &mut out);
    }
    if let Some(p) = resp.port {
        Record::Port(p).encode(false, &mut out);
    }
    for c in &resp.cookies {
        Record::NewCookie(c.clone()).encode(false, &mut out);
    }
    Record::EndOfMessage.encode(true, &mut out);
    // At most as many bytes as the records they came from.
    assert!(out.len() <= MAX_RESPONSE_BYTES);
    let again = ResponseDecoder::new().feed(&out);
    assert_eq!(
        again.as_ref(),
        Ok(&Some(resp.clone())),
        "re-encoded response"
    );
}

pub fn check(data: &[u8]) -> Outcome {
    let plan = ChunkPlan::parse(data);
    let pieces = feed_pieces(&plan);
    let whole = ResponseDecoder::new().feed(plan.payload);
    if plan.payload.len() <= MAX_RESPONSE_BYTES {
        assert_eq!(pieces, whole, "pieces and whole stream disagree");
    } else {
        assert_eq!(whole, Err(ResponseError::TooLarge));
        assert!(
            pieces != Ok(None),
            "{} bytes without an outcome",
            plan.payload.len()
        );
    }
    if let Ok(Some(resp)) = &pieces {
        check_response(resp, plan.selector);
    }
    pieces
}
