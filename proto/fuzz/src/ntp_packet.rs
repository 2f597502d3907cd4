//! `ntp_packet`: an NTP datagram as both ends of NTS see it.
//!
//! Parse the header, walk the extension fields (at most [`MAX_FIELDS`]), parse
//! every NTS Authenticator body, and go as deep as real traffic would: a cookie
//! that opens with the fixed ring gives the C2S key (server view), otherwise the
//! fixed S2C key is tried (client view); a valid authenticator's plaintext is
//! walked as extension fields again.

use crate::{ring, s2c_key, NOW};
use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::cookie::{self, CookieContents};
use nts_proto::extension_field::{
    field_type, write_field, Authenticator, ExtensionFields, FieldWriter, MIN_FIELD_LEN,
    SIV_TAG_LEN,
};
use nts_proto::ntp_packet::{NtpHeader, HEADER_LEN};

/// Field bound used by the target (a time server would use something like it).
pub const MAX_FIELDS: usize = 16;

/// How far an input got, so tests can check that the seeds reach the deep paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub header: bool,
    pub fields: usize,
    pub cookie_opened: bool,
    pub authenticators: usize,
    pub authenticated: bool,
    pub inner_fields: usize,
}

fn is_within(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    i >= o && i + inner.len() <= o + outer.len()
}

/// Walk `region` as extension fields and check the iterator's invariants.
/// Calls `on_field(type, body, offset)` for each well-formed field.
fn walk_fields(region: &[u8], mut on_field: impl FnMut(u16, &[u8], usize)) -> usize {
    let mut it = ExtensionFields::new(region, MAX_FIELDS);
    let mut pos = 0;
    let mut ok = 0;
    let mut failed = false;
    for item in it.by_ref() {
        match item {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(f) => {
                ok += 1;
                assert!(ok <= MAX_FIELDS, "more than {MAX_FIELDS} fields yielded");
                assert_eq!(f.offset, pos, "fields must be contiguous");
                let len = f.wire_len();
                assert!(
                    len >= MIN_FIELD_LEN && len % 4 == 0,
                    "bad field length {len}"
                );
                assert!(pos + len <= region.len(), "field runs past the datagram");
                assert_eq!(
                    f.body.as_ptr(),
                    region[pos + 4..].as_ptr(),
                    "body is not the bytes after the field header"
                );
                pos += len;
                on_field(f.field_type, f.body, f.offset);
            }
        }
    }
    // Fused: once it has ended it stays ended.
    assert!(it.next().is_none(), "iterator yielded after ending");
    if !failed {
        let left = region.len() - pos;
        if it.trailing_mac() {
            assert!(matches!(left, 4 | 20 | 24), "trailing MAC of {left} bytes");
        } else {
            assert_eq!(
                left, 0,
                "iteration ended with {left} bytes unread and no error"
            );
        }
    }
    ok
}

/// Parse an authenticator body and check the slices it returns.
fn parse_authenticator(body: &[u8]) -> Option<Authenticator<'_>> {
    let a = Authenticator::parse(body).ok()?;
    assert!(!a.nonce.is_empty());
    assert!(a.ciphertext.len() >= SIV_TAG_LEN);
    assert!(is_within(body, a.nonce) && is_within(body, a.ciphertext));
    assert_eq!(a.nonce.as_ptr(), body[4..].as_ptr());
    assert_eq!(
        usize::from(u16::from_be_bytes([body[0], body[1]])),
        a.nonce.len()
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([body[2], body[3]])),
        a.ciphertext.len()
    );
    assert!(Authenticator::body_len(a.nonce.len(), a.ciphertext.len()) <= body.len());
    Some(a)
}

pub fn check(data: &[u8]) -> Depth {
    let mut depth = Depth::default();
    let Ok((header, rest)) = NtpHeader::parse(data) else {
        assert!(data.len() < HEADER_LEN || !(1..=4).contains(&((data[0] >> 3) & 7)));
        return depth;
    };
    depth.header = true;
    assert_eq!(rest.len(), data.len() - HEADER_LEN);
    assert_eq!(
        header.to_bytes()[..],
        data[..HEADER_LEN],
        "header does not re-encode"
    );

    // Both field writers must rebuild the fields that parsed, byte for byte.
    let mut rebuilt = header.to_bytes().to_vec();
    let mut buf = vec![0u8; data.len()];
    let mut writer = FieldWriter::new(&mut buf);
    writer.put(&header.to_bytes()).expect("room for the header");

    let mut contents: Option<CookieContents> = None;
    depth.fields = walk_fields(rest, |ftype, body, offset| {
        write_field(&mut rebuilt, ftype, body);
        assert_eq!(rebuilt.len(), HEADER_LEN + offset + 4 + body.len());
        writer
            .field(ftype, body)
            .expect("room for a field that was there");
        match ftype {
            field_type::NTS_COOKIE if contents.is_none() => {
                if let Ok(c) = cookie::open(ring(), body, NOW) {
                    depth.cookie_opened = true;
                    contents = Some(c);
                }
            }
            field_type::NTS_AUTHENTICATOR => {
                let Some(auth) = parse_authenticator(body) else {
                    return;
                };
                depth.authenticators += 1;
                // Associated data: the datagram up to the authenticator field.
                let ad = &data[..HEADER_LEN + offset];
                let key: AeadKey = match &contents {
                    Some(c) => c.c2s.clone(),
                    None => s2c_key(AeadAlgorithm::AesSivCmac256),
                };
                if let Ok(plaintext) = key.open(auth.nonce, ad, auth.ciphertext) {
                    assert_eq!(plaintext.len(), auth.ciphertext.len() - SIV_TAG_LEN);
                    depth.authenticated = true;
                    depth.inner_fields += walk_fields(&plaintext, |ftype, body, _| {
                        if ftype == field_type::NTS_AUTHENTICATOR {
                            let _ = parse_authenticator(body);
                        }
                    });
                }
            }
            _ => {}
        }
    });
    assert_eq!(
        rebuilt,
        data[..rebuilt.len()],
        "write_field does not rebuild the fields"
    );
    assert_eq!(
        writer.written(),
        &rebuilt[..],
        "FieldWriter and write_field differ"
    );
    depth
}
