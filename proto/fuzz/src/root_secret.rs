//! `root_secret`: `RootSecret::from_file_text` over any text (the cookie root
//! secret file the KE servers and time servers read). It accepts exactly 64
//! hexadecimal digits with blank space around them, and the file form of what
//! it accepted reads back to the same secret.

use nts_proto::key_ring::RootSecret;

/// Whether the input was accepted.
pub fn check(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let digits = text.trim();
    let expected = digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    let Ok(secret) = RootSecret::from_file_text(text) else {
        assert!(!expected, "64 hex digits refused: {text:?}");
        return false;
    };
    assert!(
        expected,
        "accepted something else than 64 hex digits: {text:?}"
    );
    let back = RootSecret::from_file_text(&secret.to_file_text()).expect("own file form");
    assert_eq!(back.as_bytes(), secret.as_bytes());
    assert!(digits.eq_ignore_ascii_case(&secret.to_file_text()[..64]));
    true
}
