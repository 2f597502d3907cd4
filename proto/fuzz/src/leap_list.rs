//! `leap_list`: `LeapSecondsList::parse` over any text. A list it accepts
//! holds what it promised (entries in increasing time, TAI-UTC steps of one
//! second, a hash that matches), written back in canonical form (with the
//! hash computed here, independently) it parses to the same list, and its
//! queries answer consistently with its entries without panicking.
//!
//! A fuzzer cannot guess SHA-1 hashes, so an input refused only for its hash
//! is tried again with the hash the parser computed put in its `#h` line: it
//! must then be accepted, and everything past the hash check gets fuzzed too.

use nts_proto::clock::leap::{LeapListError, LeapSecondsList, LeapStatus};
use sha1::{Digest, Sha1};

/// What one input reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The input was UTF-8 (the agent reads the file as a string).
    pub text: bool,
    /// The list was accepted.
    pub accepted: bool,
    /// Only after its `#h` line was replaced by the right hash.
    pub rehashed: bool,
}

/// `text` with every `#h` line replaced by `hex` (40 digits) in five groups.
fn with_hash(text: &str, hex: &str) -> String {
    let groups: Vec<&str> = (0..5).map(|i| &hex[i * 8..i * 8 + 8]).collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("#h") {
            out.push_str("#h\t");
            out.push_str(&groups.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The canonical text of `list`, hashed the way the IERS list is.
pub fn canonical(list: &LeapSecondsList) -> String {
    let mut hashed = format!("{}{}", list.updated_ntp, list.expires_ntp);
    let mut s = format!("#$\t{}\n#@\t{}\n", list.updated_ntp, list.expires_ntp);
    for e in &list.entries {
        hashed.push_str(&format!("{}{}", e.ntp_seconds, e.tai_utc));
        s.push_str(&format!("{}\t{}\t# entry\n", e.ntp_seconds, e.tai_utc));
    }
    let digest = Sha1::digest(hashed.as_bytes());
    let groups: Vec<String> = digest
        .chunks(4)
        .map(|c| format!("{:x}", u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    s.push_str(&format!("#h\t{}\n", groups.join(" ")));
    s
}

pub fn check(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome {
            text: false,
            accepted: false,
            rehashed: false,
        };
    };
    let (list, rehashed) = match LeapSecondsList::parse(text) {
        Ok(l) => (l, false),
        Err(LeapListError::HashMismatch { actual, .. }) => {
            let fixed = with_hash(text, &actual);
            match LeapSecondsList::parse(&fixed) {
                Ok(l) => (l, true),
                Err(e) => panic!("refused with the right hash: {e}\n{fixed}"),
            }
        }
        Err(_) => {
            return Outcome {
                text: true,
                accepted: false,
                rehashed: false,
            }
        }
    };
    assert!(!list.entries.is_empty(), "accepted a list without entries");
    for w in list.entries.windows(2) {
        assert!(w[0].ntp_seconds < w[1].ntp_seconds, "not increasing: {w:?}");
        let step = i64::from(w[1].tai_utc) - i64::from(w[0].tai_utc);
        assert_eq!(step.abs(), 1, "a step that is not one second: {w:?}");
    }
    let again = LeapSecondsList::parse(&canonical(&list))
        .unwrap_or_else(|e| panic!("canonical form of {list:?} refused: {e}"));
    assert_eq!(again, list, "canonical form parses to another list");

    // Queries: each entry's own time answers with its TAI-UTC, and the
    // leap at an entry's midnight is the sign of its step.
    let _ = list.expires_unix();
    let _ = list.is_valid_at(0.0);
    for (i, e) in list.entries.iter().enumerate() {
        let Some(unix) = i64::try_from(e.ntp_seconds)
            .ok()
            .and_then(|n| n.checked_sub(2_208_988_800))
        else {
            continue;
        };
        assert_eq!(list.tai_utc_at(unix), Some(e.tai_utc), "{e:?}");
        let want = match i
            .checked_sub(1)
            .map(|p| e.tai_utc - list.entries[p].tai_utc)
        {
            Some(1) => LeapStatus::Insert,
            Some(-1) => LeapStatus::Delete,
            _ => LeapStatus::None,
        };
        assert_eq!(list.leap_at(unix), want, "{e:?}");
    }
    Outcome {
        text: true,
        accepted: true,
        rehashed,
    }
}
