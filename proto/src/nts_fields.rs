//! The NTS extension fields of an NTP packet (RFC 8915 section 5), located
//! without copying: one walk with one set of rules, used by the server on
//! requests and by the client on responses, so the two roles cannot disagree
//! about what a well-formed NTS packet is.
//!
//! The rules: at most one Unique Identifier, of 32 to 256 octets; at most one
//! NTS Cookie (outside the encrypted part); nothing after the NTS
//! Authenticator, not even a legacy MAC, since it would be unauthenticated;
//! at most a given number of fields.

use crate::extension_field::{
    field_type, ExtensionFieldError, ExtensionFields, MAX_UNIQUE_ID_LEN, MIN_UNIQUE_ID_LEN,
};
use crate::ntp_packet::{NtpHeader, PacketError, HEADER_LEN};

/// Extension fields a packet may carry by default (both roles); a genuine
/// request has the UID, a cookie, at most 7 placeholders and the authenticator.
pub const DEFAULT_MAX_FIELDS: usize = 16;

/// Why a packet's NTS fields are not well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NtsFieldsError {
    #[error("more than the allowed number of extension fields")]
    TooMany,
    #[error("extension fields do not parse")]
    Malformed,
    #[error("more than one Unique Identifier")]
    DuplicateUniqueId,
    #[error("Unique Identifier shorter than 32 or longer than 256 octets")]
    BadUniqueIdLength,
    #[error("more than one NTS Cookie")]
    DuplicateCookie,
    #[error("bytes after the NTS Authenticator")]
    AfterAuthenticator,
}

/// Where the NTS parts of a packet are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NtsFields<'a> {
    pub unique_id: Option<&'a [u8]>,
    pub cookie: Option<&'a [u8]>,
    pub placeholders: usize,
    /// Offset of the authenticator field from the start of the packet (what
    /// it authenticates ends there), and its body.
    pub authenticator: Option<(usize, &'a [u8])>,
    /// Any NTS field at all: the packet is meant as NTS.
    pub any_nts: bool,
}

/// Walk the extension fields of `packet` (header included), at most `max_fields`.
pub fn scan(packet: &[u8], max_fields: usize) -> Result<NtsFields<'_>, NtsFieldsError> {
    let mut nts = NtsFields::default();
    let Some(body) = packet.get(HEADER_LEN..) else {
        return Ok(nts);
    };
    let mut fields = ExtensionFields::new(body, max_fields);
    for f in &mut fields {
        let f = f.map_err(|e| match e {
            ExtensionFieldError::TooMany(_) => NtsFieldsError::TooMany,
            _ => NtsFieldsError::Malformed,
        })?;
        if nts.authenticator.is_some() {
            return Err(NtsFieldsError::AfterAuthenticator);
        }
        match f.field_type {
            field_type::UNIQUE_IDENTIFIER => {
                nts.any_nts = true;
                if !(MIN_UNIQUE_ID_LEN..=MAX_UNIQUE_ID_LEN).contains(&f.body.len()) {
                    return Err(NtsFieldsError::BadUniqueIdLength);
                }
                if nts.unique_id.replace(f.body).is_some() {
                    return Err(NtsFieldsError::DuplicateUniqueId);
                }
            }
            field_type::NTS_COOKIE => {
                nts.any_nts = true;
                if nts.cookie.replace(f.body).is_some() {
                    return Err(NtsFieldsError::DuplicateCookie);
                }
            }
            field_type::NTS_COOKIE_PLACEHOLDER => {
                nts.any_nts = true;
                nts.placeholders += 1;
            }
            field_type::NTS_AUTHENTICATOR => {
                nts.any_nts = true;
                nts.authenticator = Some((HEADER_LEN + f.offset, f.body));
            }
            _ => {}
        }
    }
    if nts.authenticator.is_some() && fields.trailing_mac() {
        return Err(NtsFieldsError::AfterAuthenticator);
    }
    Ok(nts)
}

/// An NTP packet parsed once: its header and where its NTS parts are, all
/// borrowed from the datagram. The server builds one per request and every
/// decision on that request (rate limit label, interleaved mode, the answer)
/// reads it; nothing parses the datagram a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtsPacket<'a> {
    /// The whole datagram, header included (what the authenticator covers starts here).
    pub bytes: &'a [u8],
    pub header: NtpHeader,
    pub fields: NtsFields<'a>,
}

/// Why a datagram is not a packet [`NtsPacket::parse`] can describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketParseError {
    #[error(transparent)]
    Header(#[from] PacketError),
    #[error(transparent)]
    Fields(#[from] NtsFieldsError),
}

impl<'a> NtsPacket<'a> {
    /// Parse the header and walk the extension fields under [`scan`]'s rules.
    pub fn parse(bytes: &'a [u8], max_fields: usize) -> Result<Self, PacketParseError> {
        let (header, _) = NtpHeader::parse(bytes)?;
        let fields = scan(bytes, max_fields)?;
        Ok(Self {
            bytes,
            header,
            fields,
        })
    }

    /// What the authenticator covers: every byte before its field.
    pub fn authenticated_part(&self) -> Option<&'a [u8]> {
        let (at, _) = self.fields.authenticator?;
        self.bytes.get(..at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extension_field::write_field;

    fn packet(fields: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut p = vec![0x23; HEADER_LEN];
        for (t, b) in fields {
            write_field(&mut p, *t, b);
        }
        p
    }

    #[test]
    fn locates_every_nts_part() {
        let p = packet(&[
            (field_type::UNIQUE_IDENTIFIER, vec![1; 32]),
            (field_type::NTS_COOKIE, vec![2; 100]),
            (field_type::NTS_COOKIE_PLACEHOLDER, vec![0; 100]),
            (0x7777, vec![9; 12]),
            (field_type::NTS_AUTHENTICATOR, vec![0; 40]),
        ]);
        let n = scan(&p, DEFAULT_MAX_FIELDS).unwrap();
        assert_eq!(n.unique_id, Some(&[1u8; 32][..]));
        assert_eq!(n.cookie.map(<[u8]>::len), Some(100));
        assert_eq!(n.placeholders, 1);
        assert_eq!(n.authenticator.unwrap().0, p.len() - 44);
        assert!(n.any_nts);
        assert!(!scan(&packet(&[]), 16).unwrap().any_nts);
        assert!(!scan(&[0u8; 10], 16).unwrap().any_nts);
    }

    #[test]
    fn packet_view_is_header_plus_fields() {
        let p = packet(&[
            (field_type::UNIQUE_IDENTIFIER, vec![1; 32]),
            (field_type::NTS_AUTHENTICATOR, vec![0; 40]),
        ]);
        let v = NtsPacket::parse(&p, DEFAULT_MAX_FIELDS).unwrap();
        assert_eq!(v.header, NtpHeader::parse(&p).unwrap().0);
        assert_eq!(v.fields, scan(&p, DEFAULT_MAX_FIELDS).unwrap());
        assert_eq!(v.authenticated_part(), Some(&p[..p.len() - 44]));
        assert_eq!(
            NtsPacket::parse(&p[..40], 16),
            Err(PacketParseError::Header(PacketError::TooShort(40)))
        );
        let dup = packet(&[
            (field_type::UNIQUE_IDENTIFIER, vec![1; 32]),
            (field_type::UNIQUE_IDENTIFIER, vec![1; 32]),
        ]);
        assert_eq!(
            NtsPacket::parse(&dup, 16),
            Err(PacketParseError::Fields(NtsFieldsError::DuplicateUniqueId))
        );
    }

    #[test]
    fn one_set_of_rules() {
        let uid = (field_type::UNIQUE_IDENTIFIER, vec![1; 32]);
        let auth = (field_type::NTS_AUTHENTICATOR, vec![0; 40]);
        let cases = [
            (
                vec![uid.clone(), uid.clone()],
                NtsFieldsError::DuplicateUniqueId,
            ),
            (
                vec![(field_type::UNIQUE_IDENTIFIER, vec![1; 28])],
                NtsFieldsError::BadUniqueIdLength,
            ),
            (
                vec![(field_type::UNIQUE_IDENTIFIER, vec![1; 260])],
                NtsFieldsError::BadUniqueIdLength,
            ),
            (
                vec![
                    (field_type::NTS_COOKIE, vec![2; 16]),
                    (field_type::NTS_COOKIE, vec![2; 16]),
                ],
                NtsFieldsError::DuplicateCookie,
            ),
            (
                vec![auth.clone(), uid.clone()],
                NtsFieldsError::AfterAuthenticator,
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(scan(&packet(&fields), 16), Err(want), "{fields:?}");
        }
        let many: Vec<_> = (0..17).map(|_| (0x7777, vec![0; 12])).collect();
        assert_eq!(scan(&packet(&many), 16), Err(NtsFieldsError::TooMany));
        // A legacy MAC (20 bytes) after the authenticator.
        let mut p = packet(&[uid, auth]);
        p.extend_from_slice(&[0; 20]);
        assert_eq!(scan(&p, 16), Err(NtsFieldsError::AfterAuthenticator));
    }
}
