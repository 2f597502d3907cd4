//! NTS-KE records (RFC 8915 section 4): a 16-bit word holding the critical bit
//! and the record type, a 16-bit body length, then the body.
//!
//! [`Record::decode`] takes one record off the front of a buffer and tells the
//! caller when more bytes are needed, so a TLS stream can be fed in pieces.

use thiserror::Error;

/// The critical bit in the first word of a record.
pub const CRITICAL: u16 = 0x8000;

/// NTS-KE record types.
pub mod record_type {
    pub const END_OF_MESSAGE: u16 = 0;
    pub const NEXT_PROTOCOL: u16 = 1;
    pub const ERROR: u16 = 2;
    pub const WARNING: u16 = 3;
    pub const AEAD_ALGORITHM: u16 = 4;
    pub const NEW_COOKIE: u16 = 5;
    pub const SERVER: u16 = 6;
    pub const PORT: u16 = 7;
}

/// Protocol id of NTPv4 in the Next Protocol record.
pub const PROTOCOL_NTPV4: u16 = 0;

/// Error codes (RFC 8915 section 4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    UnrecognizedCriticalRecord,
    BadRequest,
    InternalServerError,
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            Self::UnrecognizedCriticalRecord => 0,
            Self::BadRequest => 1,
            Self::InternalServerError => 2,
            Self::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        match c {
            0 => Self::UnrecognizedCriticalRecord,
            1 => Self::BadRequest,
            2 => Self::InternalServerError,
            c => Self::Other(c),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnrecognizedCriticalRecord => f.write_str("unrecognized critical record (0)"),
            Self::BadRequest => f.write_str("bad request (1)"),
            Self::InternalServerError => f.write_str("internal server error (2)"),
            Self::Other(c) => write!(f, "error code {c}"),
        }
    }
}

/// A decoded record. Bodies of known types are checked for their shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    EndOfMessage,
    NextProtocol(Vec<u16>),
    Error(ErrorCode),
    Warning(u16),
    AeadAlgorithm(Vec<u16>),
    NewCookie(Vec<u8>),
    Server(String),
    Port(u16),
    /// A record type this implementation does not know.
    Unknown {
        critical: bool,
        record_type: u16,
        body: Vec<u8>,
    },
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record type {record_type} has a malformed body of {len} bytes: {why}")]
    BadBody {
        record_type: u16,
        len: usize,
        why: &'static str,
    },
}

fn u16_list(record_type: u16, body: &[u8]) -> Result<Vec<u16>, RecordError> {
    if body.len() % 2 != 0 {
        return Err(RecordError::BadBody {
            record_type,
            len: body.len(),
            why: "odd length for a list of 16-bit values",
        });
    }
    Ok(body
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

fn single_u16(record_type: u16, body: &[u8]) -> Result<u16, RecordError> {
    if body.len() != 2 {
        return Err(RecordError::BadBody {
            record_type,
            len: body.len(),
            why: "expected exactly one 16-bit value",
        });
    }
    Ok(u16::from_be_bytes([body[0], body[1]]))
}

/// Outcome of trying to take one record off a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds only part of a record; read more.
    Incomplete,
    /// A record and the number of bytes it used. `critical` is the bit as sent.
    Record {
        record: Record,
        critical: bool,
        consumed: usize,
    },
}

impl Record {
    /// The record type number.
    pub fn record_type(&self) -> u16 {
        use record_type::*;
        match self {
            Self::EndOfMessage => END_OF_MESSAGE,
            Self::NextProtocol(_) => NEXT_PROTOCOL,
            Self::Error(_) => ERROR,
            Self::Warning(_) => WARNING,
            Self::AeadAlgorithm(_) => AEAD_ALGORITHM,
            Self::NewCookie(_) => NEW_COOKIE,
            Self::Server(_) => SERVER,
            Self::Port(_) => PORT,
            Self::Unknown { record_type, .. } => *record_type,
        }
    }

    /// Decode one record from the front of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Decoded, RecordError> {
        if buf.len() < 4 {
            return Ok(Decoded::Incomplete);
        }
        let word = u16::from_be_bytes([buf[0], buf[1]]);
        let critical = word & CRITICAL != 0;
        let rtype = word & !CRITICAL;
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if buf.len() < 4 + len {
            return Ok(Decoded::Incomplete);
        }
        let body = &buf[4..4 + len];
        use record_type::*;
        let record = match rtype {
            END_OF_MESSAGE => {
                if !body.is_empty() {
                    return Err(RecordError::BadBody {
                        record_type: rtype,
                        len,
                        why: "End of Message must be empty",
                    });
                }
                Self::EndOfMessage
            }
            NEXT_PROTOCOL => Self::NextProtocol(u16_list(rtype, body)?),
            ERROR => Self::Error(ErrorCode::from_code(single_u16(rtype, body)?)),
            WARNING => Self::Warning(single_u16(rtype, body)?),
            AEAD_ALGORITHM => Self::AeadAlgorithm(u16_list(rtype, body)?),
            NEW_COOKIE => Self::NewCookie(body.to_vec()),
            SERVER => {
                let s = std::str::from_utf8(body)
                    .ok()
                    // RFC 8915 4.1.7: an IP address or a fully qualified name;
                    // nothing a peer sends may carry control characters into
                    // logs (a newline, an ESC).
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or(RecordError::BadBody {
                        record_type: rtype,
                        len,
                        why: "server name must be non-empty printable ASCII",
                    })?;
                Self::Server(s.to_string())
            }
            PORT => Self::Port(single_u16(rtype, body)?),
            _ => Self::Unknown {
                critical,
                record_type: rtype,
                body: body.to_vec(),
            },
        };
        Ok(Decoded::Record {
            record,
            critical,
            consumed: 4 + len,
        })
    }

    /// Append the encoded record to `out` with the given critical bit.
    ///
    /// Bodies longer than 65535 bytes cannot be represented; callers build records
    /// from bounded inputs (cookies, host names), and the body is truncated
    /// rather than emitting a corrupt length.
    pub fn encode(&self, critical: bool, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        match self {
            Self::EndOfMessage => {}
            Self::NextProtocol(list) | Self::AeadAlgorithm(list) => {
                for v in list {
                    body.extend_from_slice(&v.to_be_bytes());
                }
            }
            Self::Error(code) => body.extend_from_slice(&code.code().to_be_bytes()),
            Self::Warning(code) | Self::Port(code) => body.extend_from_slice(&code.to_be_bytes()),
            Self::NewCookie(c) => body.extend_from_slice(c),
            Self::Server(s) => body.extend_from_slice(s.as_bytes()),
            Self::Unknown { body: b, .. } => body.extend_from_slice(b),
        }
        // Keep lists of 16-bit values whole when cutting at the 16-bit length limit.
        let max = match self {
            Self::NextProtocol(_) | Self::AeadAlgorithm(_) => u16::MAX as usize - 1,
            _ => u16::MAX as usize,
        };
        body.truncate(max);
        let word = self.record_type() | if critical { CRITICAL } else { 0 };
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: Record, critical: bool) {
        let mut out = Vec::new();
        r.encode(critical, &mut out);
        match Record::decode(&out).unwrap() {
            Decoded::Record {
                record,
                critical: c,
                consumed,
            } => {
                assert_eq!(record, r);
                assert_eq!(c, critical);
                assert_eq!(consumed, out.len());
            }
            Decoded::Incomplete => panic!("incomplete"),
        }
        // Every strict prefix is incomplete, never an error or a panic.
        for n in 0..out.len() {
            assert_eq!(Record::decode(&out[..n]).unwrap(), Decoded::Incomplete);
        }
    }

    #[test]
    fn round_trips() {
        round_trip(Record::EndOfMessage, true);
        round_trip(Record::NextProtocol(vec![0]), true);
        round_trip(Record::NextProtocol(vec![]), true);
        round_trip(Record::Error(ErrorCode::BadRequest), true);
        round_trip(Record::Warning(7), true);
        round_trip(Record::AeadAlgorithm(vec![17, 15]), false);
        round_trip(Record::NewCookie(vec![1; 100]), false);
        round_trip(Record::Server("time.example.net".into()), false);
        // Control characters and spaces (log injection) are refused.
        for bad in ["time.example\n ERROR forged", "a\u{1b}[31m", "two words"] {
            let mut wire = vec![0x00, 0x06];
            wire.extend_from_slice(&(bad.len() as u16).to_be_bytes());
            wire.extend_from_slice(bad.as_bytes());
            assert!(
                matches!(Record::decode(&wire), Err(RecordError::BadBody { .. })),
                "{bad:?}"
            );
        }
        round_trip(Record::Port(123), false);
        round_trip(
            Record::Unknown {
                critical: true,
                record_type: 0x1234,
                body: vec![9, 9],
            },
            true,
        );
    }

    #[test]
    fn wire_format() {
        let mut out = Vec::new();
        Record::NextProtocol(vec![0]).encode(true, &mut out);
        Record::EndOfMessage.encode(true, &mut out);
        assert_eq!(
            out,
            [0x80, 0x01, 0x00, 0x02, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn malformed_bodies() {
        // Odd-length protocol list.
        assert!(Record::decode(&[0x80, 1, 0, 3, 0, 0, 0]).is_err());
        // Error record with a 3-byte body.
        assert!(Record::decode(&[0x80, 2, 0, 3, 0, 0, 0]).is_err());
        // End of message with a body.
        assert!(Record::decode(&[0x80, 0, 0, 1, 0]).is_err());
        // Non-ASCII server name.
        assert!(Record::decode(&[0, 6, 0, 2, 0xc3, 0xa9]).is_err());
        // Empty server name.
        assert!(Record::decode(&[0, 6, 0, 0]).is_err());
        // Port with 4 bytes.
        assert!(Record::decode(&[0, 7, 0, 4, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn error_codes() {
        for c in 0..5u16 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
    }
}
