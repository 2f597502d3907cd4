//! NTPv4 extension fields (RFC 7822) and the NTS fields of RFC 8915 section 5.
//!
//! Fields are read with a bounded, zero-copy iterator: it never allocates, never
//! reads past the datagram and stops with an error on the first malformed field.

use thiserror::Error;

/// Extension field types defined by RFC 8915.
pub mod field_type {
    pub const UNIQUE_IDENTIFIER: u16 = 0x0104;
    pub const NTS_COOKIE: u16 = 0x0204;
    pub const NTS_COOKIE_PLACEHOLDER: u16 = 0x0304;
    pub const NTS_AUTHENTICATOR: u16 = 0x0404;
}

/// Smallest extension field RFC 7822 allows (4-byte header plus 12 bytes of body).
pub const MIN_FIELD_LEN: usize = 16;
/// RFC 8915 section 5.3: the Unique Identifier body holds at least 32 random octets.
pub const MIN_UNIQUE_ID_LEN: usize = 32;
/// Longest Unique Identifier we accept, to bound the work done for it.
pub const MAX_UNIQUE_ID_LEN: usize = 256;
/// Nonce length this implementation sends (RFC 8915 section 5.6 requires at least 16 when using AES-SIV).
pub const NONCE_LEN: usize = 16;
/// Length of an AES-SIV tag, the first bytes of every NTS ciphertext.
pub const SIV_TAG_LEN: usize = 16;

/// Why the bytes after the NTP header are not a valid list of extension fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ExtensionFieldError {
    #[error("extension field header truncated ({0} bytes left)")]
    Truncated(usize),
    #[error("extension field length {length} is invalid ({left} bytes left)")]
    BadLength { length: usize, left: usize },
    #[error("more than {0} extension fields")]
    TooMany(usize),
    #[error("malformed NTS authenticator field: {0}")]
    BadAuthenticator(&'static str),
}

/// One extension field as it appears on the wire; `body` excludes the 4-byte header
/// but includes any padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawField<'a> {
    pub field_type: u16,
    pub body: &'a [u8],
    /// Offset of the field's header from the start of the iterated region.
    pub offset: usize,
}

impl RawField<'_> {
    /// Length of the whole field on the wire, header included.
    pub fn wire_len(&self) -> usize {
        self.body.len() + 4
    }
}

/// Iterator over the extension fields that follow the NTP header.
///
/// A trailing legacy MAC (4, 20 or 24 bytes that do not form a field) ends the
/// iteration and is reported by [`ExtensionFields::trailing_mac`].
#[derive(Debug, Clone)]
pub struct ExtensionFields<'a> {
    data: &'a [u8],
    pos: usize,
    count: usize,
    max_fields: usize,
    trailing_mac: bool,
    failed: bool,
}

impl<'a> ExtensionFields<'a> {
    /// Iterate over `data` (the bytes after the 48-byte header), allowing at most `max_fields`.
    pub fn new(data: &'a [u8], max_fields: usize) -> Self {
        Self {
            data,
            pos: 0,
            count: 0,
            max_fields,
            trailing_mac: false,
            failed: false,
        }
    }

    /// True once iteration has met a legacy MAC after the fields.
    pub fn trailing_mac(&self) -> bool {
        self.trailing_mac
    }
}

impl<'a> Iterator for ExtensionFields<'a> {
    type Item = Result<RawField<'a>, ExtensionFieldError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.trailing_mac {
            return None;
        }
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let fail = |s: &mut Self, e| {
            s.failed = true;
            Some(Err(e))
        };
        let is_mac_len = matches!(rest.len(), 4 | 20 | 24);
        if rest.len() < 4 {
            return fail(self, ExtensionFieldError::Truncated(rest.len()));
        }
        let field_type = u16::from_be_bytes([rest[0], rest[1]]);
        let length = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let valid = length >= MIN_FIELD_LEN && length % 4 == 0 && length <= rest.len();
        if !valid {
            if is_mac_len {
                self.trailing_mac = true;
                return None;
            }
            return fail(
                self,
                ExtensionFieldError::BadLength {
                    length,
                    left: rest.len(),
                },
            );
        }
        if self.count >= self.max_fields {
            return fail(self, ExtensionFieldError::TooMany(self.max_fields));
        }
        self.count += 1;
        let field = RawField {
            field_type,
            body: &rest[4..length],
            offset: self.pos,
        };
        self.pos += length;
        Some(Ok(field))
    }
}

/// The body of an NTS Authenticator and Encrypted Extension Fields field (RFC 8915 section 5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticator<'a> {
    pub nonce: &'a [u8],
    /// SIV tag followed by the encrypted extension fields.
    pub ciphertext: &'a [u8],
}

fn padded4(n: usize) -> usize {
    (n + 3) & !3
}

impl<'a> Authenticator<'a> {
    /// Parse the authenticator body, checking that the nonce and ciphertext fit with their padding.
    pub fn parse(body: &'a [u8]) -> Result<Self, ExtensionFieldError> {
        use ExtensionFieldError::BadAuthenticator as Bad;
        if body.len() < 4 {
            return Err(Bad("shorter than its length fields"));
        }
        let nonce_len = u16::from_be_bytes([body[0], body[1]]) as usize;
        let ct_len = u16::from_be_bytes([body[2], body[3]]) as usize;
        // RFC 8915 section 5.6: the nonce is at least 16 octets (NONCE_LEN).
        if nonce_len < NONCE_LEN {
            return Err(Bad("nonce shorter than 16 octets"));
        }
        if ct_len < SIV_TAG_LEN {
            return Err(Bad("ciphertext shorter than the AEAD tag"));
        }
        let nonce_end = 4 + padded4(nonce_len);
        let ct_end = nonce_end + padded4(ct_len);
        if ct_end > body.len() {
            return Err(Bad("nonce or ciphertext runs past the field"));
        }
        Ok(Self {
            nonce: &body[4..4 + nonce_len],
            ciphertext: &body[nonce_end..nonce_end + ct_len],
        })
    }

    /// Body length for a nonce and ciphertext of these sizes, without additional padding.
    pub fn body_len(nonce_len: usize, ct_len: usize) -> usize {
        4 + padded4(nonce_len) + padded4(ct_len)
    }
}

/// Encoded length of a field with `body_len` bytes of content: header, padding to
/// a multiple of 4, and at least [`MIN_FIELD_LEN`].
pub fn field_wire_len(body_len: usize) -> usize {
    padded4(4 + body_len).max(MIN_FIELD_LEN)
}

/// Longest body a field can carry (its length is a 16-bit count including the header).
pub const MAX_FIELD_BODY: usize = u16::MAX as usize - 3 - 4;

/// Append a field of type `field_type` carrying `body` to `out`, zero-padded.
/// A body longer than [`MAX_FIELD_BODY`] is cut there rather than written with a wrapped length.
pub fn write_field(out: &mut Vec<u8>, field_type: u16, body: &[u8]) {
    let body = &body[..body.len().min(MAX_FIELD_BODY)];
    let len = field_wire_len(body.len());
    out.extend_from_slice(&field_type.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + len - 4 - body.len(), 0);
}

/// Writes fields into a fixed buffer without allocating (for the packet path).
#[derive(Debug)]
pub struct FieldWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

/// The output buffer is too small for what is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("output buffer too small")]
pub struct BufferTooSmall;

impl<'a> FieldWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append raw bytes (for example the NTP header).
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferTooSmall)?;
        if end > self.buf.len() {
            return Err(BufferTooSmall);
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Append one extension field with its header and padding.
    pub fn field(&mut self, field_type: u16, body: &[u8]) -> Result<(), BufferTooSmall> {
        let len = field_wire_len(body.len());
        if self.len + len > self.buf.len() || len > u16::MAX as usize {
            return Err(BufferTooSmall);
        }
        self.put(&field_type.to_be_bytes())?;
        self.put(&(len as u16).to_be_bytes())?;
        self.put(body)?;
        let pad = len - 4 - body.len();
        self.buf[self.len..self.len + pad].fill(0);
        self.len += pad;
        Ok(())
    }

    /// Reserve `n` bytes to be filled in later, returning their offset.
    pub fn reserve(&mut self, n: usize) -> Result<usize, BufferTooSmall> {
        if self.len + n > self.buf.len() {
            return Err(BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + n].fill(0);
        self.len += n;
        Ok(at)
    }

    pub fn buf_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(data: &[u8], max: usize) -> Result<Vec<(u16, Vec<u8>)>, ExtensionFieldError> {
        ExtensionFields::new(data, max)
            .map(|r| r.map(|f| (f.field_type, f.body.to_vec())))
            .collect()
    }

    #[test]
    fn write_and_iterate() {
        let mut out = Vec::new();
        write_field(&mut out, field_type::UNIQUE_IDENTIFIER, &[7u8; 32]);
        write_field(&mut out, field_type::NTS_COOKIE, &[1, 2, 3]);
        assert_eq!(out.len(), 36 + 16);
        let fields = collect(&out, 10).unwrap();
        assert_eq!(fields[0], (field_type::UNIQUE_IDENTIFIER, vec![7u8; 32]));
        assert_eq!(fields[1].0, field_type::NTS_COOKIE);
        assert_eq!(&fields[1].1[..3], &[1, 2, 3]);
        assert_eq!(fields[1].1.len(), 12);
    }

    #[test]
    fn rejects_bad_lengths() {
        // Length not a multiple of 4.
        let mut d = vec![0x01, 0x04, 0x00, 0x11];
        d.resize(40, 0);
        assert!(matches!(
            collect(&d, 10),
            Err(ExtensionFieldError::BadLength { length: 17, .. })
        ));
        // Length past the end.
        let mut d = vec![0x01, 0x04, 0x01, 0x00];
        d.resize(40, 0);
        assert!(collect(&d, 10).is_err());
        // Length below the minimum.
        let mut d = vec![0x01, 0x04, 0x00, 0x08];
        d.resize(40, 0);
        assert!(collect(&d, 10).is_err());
        // Three trailing bytes.
        assert_eq!(
            collect(&[1, 2, 3], 10),
            Err(ExtensionFieldError::Truncated(3))
        );
    }

    #[test]
    fn legacy_mac_ends_iteration() {
        let mut out = Vec::new();
        write_field(&mut out, field_type::UNIQUE_IDENTIFIER, &[7u8; 32]);
        out.extend_from_slice(&[0xff; 20]); // key id + MD5 digest
        let mut it = ExtensionFields::new(&out, 10);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().is_none());
        assert!(it.trailing_mac());
    }

    #[test]
    fn bounded_field_count() {
        let mut out = Vec::new();
        for _ in 0..5 {
            write_field(&mut out, 0x1234, &[0u8; 12]);
        }
        assert_eq!(collect(&out, 5).unwrap().len(), 5);
        assert_eq!(collect(&out, 4), Err(ExtensionFieldError::TooMany(4)));
    }

    #[test]
    fn authenticator() {
        let mut body = Vec::new();
        body.extend_from_slice(&16u16.to_be_bytes());
        body.extend_from_slice(&18u16.to_be_bytes());
        body.extend_from_slice(&[1u8; 16]);
        body.extend_from_slice(&[2u8; 18]);
        body.extend_from_slice(&[0u8; 2]); // padding of the ciphertext
        body.extend_from_slice(&[0u8; 8]); // additional padding
        let a = Authenticator::parse(&body).unwrap();
        assert_eq!(a.nonce, &[1u8; 16]);
        assert_eq!(a.ciphertext, &[2u8; 18]);

        // Ciphertext runs past the end without its padding.
        assert!(Authenticator::parse(&body[..38]).is_err());
        assert!(Authenticator::parse(&[0, 0, 0, 16]).is_err());
        assert!(Authenticator::parse(&[0, 16, 0, 4]).is_err());
        assert!(Authenticator::parse(&[0, 16]).is_err());
        // A nonce under 16 octets, however well-formed otherwise.
        let mut short = vec![0, 15, 0, 16];
        short.extend_from_slice(&[1u8; 16]);
        short.extend_from_slice(&[2u8; 16]);
        assert_eq!(
            Authenticator::parse(&short),
            Err(ExtensionFieldError::BadAuthenticator(
                "nonce shorter than 16 octets"
            ))
        );
    }

    #[test]
    fn oversized_body_is_cut_not_wrapped() {
        let mut out = Vec::new();
        write_field(&mut out, 0x7777, &vec![1u8; 70_000]);
        let f = ExtensionFields::new(&out, 1).next().unwrap().unwrap();
        assert_eq!(f.wire_len(), out.len());
        assert!(out.len() <= u16::MAX as usize);
    }

    #[test]
    fn field_writer_matches_vec_writer() {
        let mut a = Vec::new();
        write_field(&mut a, 0x0204, &[9u8; 101]);
        let mut buf = [0xaau8; 200];
        let mut w = FieldWriter::new(&mut buf);
        w.field(0x0204, &[9u8; 101]).unwrap();
        assert_eq!(w.written(), &a[..]);
        let mut small = [0u8; 10];
        assert_eq!(
            FieldWriter::new(&mut small).field(1, &[0; 8]),
            Err(BufferTooSmall)
        );
    }
}
