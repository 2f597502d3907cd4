//! What a received datagram means for a source: the one mapping from the
//! response check's result to a decision, used by NTS and plain sources,
//! the one-shot query and the test probe alike.

use crate::ntp_client::{CheckedResponse, ResponseCheckError};

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Does not parse as an NTP server response.
    Malformed,
    /// Origin timestamp or Unique Identifier is not our request's: stray, stale or replayed.
    Mismatch,
    /// No authenticator (an unauthenticated answer or kiss).
    Unauthenticated,
    /// The authenticator does not verify: forged or corrupted.
    Forged,
    /// A second NAK for the same request.
    RepeatedNak,
}

/// A response check's result, sorted by what the receiver does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Passed every check: use it.
    Accept(CheckedResponse),
    /// A kiss-o'-death that counts: authenticated for NTS, any for plain NTP.
    Kiss([u8; 4]),
    /// An NTS NAK (unauthenticated by nature): note it, keep waiting.
    Nak,
    /// Not ours or not genuine: ignore it, keep waiting.
    Ignore(Ignored),
}

impl Judgement {
    /// The single mapping from [`crate::ntp_client::check_response`]'s result.
    /// An NTS kiss is only ever reported by the check after its authenticator
    /// opened, so every `Kiss` here is one the source may act on.
    pub fn of(result: Result<CheckedResponse, ResponseCheckError>) -> Self {
        use ResponseCheckError as E;
        match result {
            Ok(c) => Self::Accept(c),
            Err(E::Kiss(code)) => Self::Kiss(code),
            Err(E::NtsNak) => Self::Nak,
            Err(E::Malformed(_)) => Self::Ignore(Ignored::Malformed),
            Err(E::OriginMismatch | E::UniqueIdMismatch) => Self::Ignore(Ignored::Mismatch),
            Err(E::Unauthenticated) => Self::Ignore(Ignored::Unauthenticated),
            Err(E::AuthenticationFailed) => Self::Ignore(Ignored::Forged),
        }
    }

    /// Whether the exchange ends here (an answer or a kiss); a NAK or an
    /// ignored datagram leaves it waiting for the genuine answer.
    pub fn ends_exchange(&self) -> bool {
        matches!(self, Self::Accept(_) | Self::Kiss(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntp_client::ResponseCheckError as E;

    #[test]
    fn only_answers_and_kisses_end_an_exchange() {
        let cases = [
            (E::Malformed("x"), Judgement::Ignore(Ignored::Malformed)),
            (E::OriginMismatch, Judgement::Ignore(Ignored::Mismatch)),
            (E::UniqueIdMismatch, Judgement::Ignore(Ignored::Mismatch)),
            (
                E::Unauthenticated,
                Judgement::Ignore(Ignored::Unauthenticated),
            ),
            (E::AuthenticationFailed, Judgement::Ignore(Ignored::Forged)),
            (E::NtsNak, Judgement::Nak),
        ];
        for (e, want) in cases {
            let j = Judgement::of(Err(e));
            assert_eq!(j, want);
            assert!(!j.ends_exchange(), "{e:?}");
        }
        assert!(Judgement::of(Err(E::Kiss(*b"RATE"))).ends_exchange());
    }
}
