//! `saved_association`: `SavedAssociation::from_text` over any text (the
//! client's `NAME.nts` file: keys, cookies, time server). An accepted file
//! holds a usable association (a known AEAD with keys of its length, a
//! non-zero port, a host name of 1 to 255 bytes, at most 64 cookies of 1 to
//! 1024 bytes); `to_text` of it parses again, to the same text.

use nts_proto::source::SavedAssociation;

/// Whether the input was accepted.
pub fn check(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(s) = SavedAssociation::from_text(text) else {
        return false;
    };
    let a = &s.association;
    assert_eq!(a.c2s.as_bytes().len(), a.aead.key_len());
    assert_eq!(a.s2c.as_bytes().len(), a.aead.key_len());
    assert!(a.ntp_port != 0 && !a.ntp_host.is_empty() && a.ntp_host.len() <= 255);
    assert!(s.cookies.len() <= 64, "{} cookies", s.cookies.len());
    assert!(s.cookies.iter().all(|c| !c.is_empty() && c.len() <= 1024));
    let written = s.to_text();
    let back = SavedAssociation::from_text(&written)
        .unwrap_or_else(|e| panic!("written association refused: {e}\n{written}"));
    assert_eq!(back.to_text(), written, "text changes from write to write");
    true
}
