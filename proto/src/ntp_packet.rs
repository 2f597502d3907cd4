//! The 48-byte NTPv4 header (RFC 5905 section 7.3) and its timestamp formats.
//!
//! Parsing never panics: any byte slice either yields a header or a
//! [`PacketError`]. Extension fields that follow the header are handled in
//! [`crate::extension_field`].

use thiserror::Error;

/// Length of the fixed NTP header.
pub const HEADER_LEN: usize = 48;

/// Seconds between the NTP era 0 epoch (1900) and the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Why a datagram is not an NTP packet we can look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("packet is {0} bytes, shorter than the 48-byte NTP header")]
    TooShort(usize),
    #[error("NTP version {0} is not supported")]
    UnsupportedVersion(u8),
}

/// Leap indicator: warns of an impending leap second, or that the clock is unsynchronized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeapIndicator {
    NoWarning = 0,
    InsertSecond = 1,
    DeleteSecond = 2,
    Unsynchronized = 3,
}

impl LeapIndicator {
    fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::NoWarning,
            1 => Self::InsertSecond,
            2 => Self::DeleteSecond,
            _ => Self::Unsynchronized,
        }
    }
}

/// Association mode. Only client (3) and server (4) are served; the rest are recognised so they can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reserved = 0,
    SymmetricActive = 1,
    SymmetricPassive = 2,
    Client = 3,
    Server = 4,
    Broadcast = 5,
    Control = 6,
    Private = 7,
}

impl Mode {
    fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Reserved,
            1 => Self::SymmetricActive,
            2 => Self::SymmetricPassive,
            3 => Self::Client,
            4 => Self::Server,
            5 => Self::Broadcast,
            6 => Self::Control,
            _ => Self::Private,
        }
    }
}

/// 64-bit NTP timestamp: 32 bits of seconds since 1900 (modulo the era) and 32 bits of fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub const ZERO: Self = Self(0);

    /// From seconds and nanoseconds since the Unix epoch (wrapping into the current NTP era).
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let ntp_secs = secs.wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        // nanos / 1e9 * 2^32, rounded down; nanos < 1e9 so this fits.
        let frac = ((nanos as u64) << 32) / 1_000_000_000;
        Self((ntp_secs << 32) | frac)
    }

    pub fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn fraction(self) -> u32 {
        self.0 as u32
    }

    /// Signed difference `self - earlier` in seconds, correct across an era boundary
    /// as long as the two are within 68 years of each other.
    pub fn diff_seconds(self, earlier: Self) -> f64 {
        (self.0.wrapping_sub(earlier.0) as i64) as f64 / 4_294_967_296.0
    }

    /// Seconds since the Unix epoch (as f64), assuming the timestamp lies in the era
    /// closest to `pivot_unix_secs`.
    pub fn to_unix_f64(self, pivot_unix_secs: u64) -> f64 {
        let pivot = Self::from_unix(pivot_unix_secs, 0);
        pivot_unix_secs as f64 + self.diff_seconds(pivot)
    }
}

/// 32-bit NTP short format (16.16 seconds), used for root delay and dispersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NtpShort(pub u32);

impl NtpShort {
    /// From seconds, saturating at the format's range.
    pub fn from_seconds(secs: f64) -> Self {
        let v = (secs * 65536.0).round();
        if v.is_nan() || v <= 0.0 {
            Self(0)
        } else if v >= u32::MAX as f64 {
            Self(u32::MAX)
        } else {
            Self(v as u32)
        }
    }

    pub fn to_seconds(self) -> f64 {
        self.0 as f64 / 65536.0
    }
}

/// The fixed NTPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtpHeader {
    pub leap: LeapIndicator,
    pub version: u8,
    pub mode: Mode,
    pub stratum: u8,
    pub poll: i8,
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: [u8; 4],
    pub reference_timestamp: NtpTimestamp,
    pub origin_timestamp: NtpTimestamp,
    pub receive_timestamp: NtpTimestamp,
    pub transmit_timestamp: NtpTimestamp,
}

impl Default for NtpHeader {
    fn default() -> Self {
        Self {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: [0; 4],
            reference_timestamp: NtpTimestamp::ZERO,
            origin_timestamp: NtpTimestamp::ZERO,
            receive_timestamp: NtpTimestamp::ZERO,
            transmit_timestamp: NtpTimestamp::ZERO,
        }
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl NtpHeader {
    /// Parse the header at the start of `data`, returning it and the bytes after it
    /// (extension fields, or a legacy MAC).
    ///
    /// Versions 1 to 4 are accepted (v3 clients are still common); others are an error.
    pub fn parse(data: &[u8]) -> Result<(Self, &[u8]), PacketError> {
        if data.len() < HEADER_LEN {
            return Err(PacketError::TooShort(data.len()));
        }
        let version = (data[0] >> 3) & 7;
        if !(1..=4).contains(&version) {
            return Err(PacketError::UnsupportedVersion(version));
        }
        let header = Self {
            leap: LeapIndicator::from_bits(data[0] >> 6),
            version,
            mode: Mode::from_bits(data[0]),
            stratum: data[1],
            poll: data[2] as i8,
            precision: data[3] as i8,
            root_delay: NtpShort(be_u32(&data[4..8])),
            root_dispersion: NtpShort(be_u32(&data[8..12])),
            reference_id: [data[12], data[13], data[14], data[15]],
            reference_timestamp: NtpTimestamp(be_u64(&data[16..24])),
            origin_timestamp: NtpTimestamp(be_u64(&data[24..32])),
            receive_timestamp: NtpTimestamp(be_u64(&data[32..40])),
            transmit_timestamp: NtpTimestamp(be_u64(&data[40..48])),
        };
        Ok((header, &data[HEADER_LEN..]))
    }

    /// Write the header into the first 48 bytes of `out`.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = ((self.leap as u8) << 6) | ((self.version & 7) << 3) | (self.mode as u8);
        out[1] = self.stratum;
        out[2] = self.poll as u8;
        out[3] = self.precision as u8;
        out[4..8].copy_from_slice(&self.root_delay.0.to_be_bytes());
        out[8..12].copy_from_slice(&self.root_dispersion.0.to_be_bytes());
        out[12..16].copy_from_slice(&self.reference_id);
        out[16..24].copy_from_slice(&self.reference_timestamp.0.to_be_bytes());
        out[24..32].copy_from_slice(&self.origin_timestamp.0.to_be_bytes());
        out[32..40].copy_from_slice(&self.receive_timestamp.0.to_be_bytes());
        out[40..48].copy_from_slice(&self.transmit_timestamp.0.to_be_bytes());
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.write(&mut out);
        out
    }

    /// A kiss-o'-death packet carries stratum 0 and an ASCII kiss code in the reference id.
    pub fn kiss_code(&self) -> Option<[u8; 4]> {
        (self.mode == Mode::Server && self.stratum == 0).then_some(self.reference_id)
    }
}

/// Kiss codes this project sends or acts on (RFC 5905 section 7.4, RFC 8915 section 5.7).
pub mod kiss {
    /// NTS negative acknowledgement: the server could not open the cookie.
    pub const NTSN: [u8; 4] = *b"NTSN";
    /// The client is sending too fast.
    pub const RATE: [u8; 4] = *b"RATE";
    /// Access denied.
    pub const DENY: [u8; 4] = *b"DENY";
    /// Access restricted.
    pub const RSTR: [u8; 4] = *b"RSTR";

    /// A kiss code as text for logs and status: printable ASCII as it is,
    /// anything else escaped (`\x0a`), since the code comes from whoever
    /// sent the datagram and must not carry a newline or an ESC into a log.
    pub fn text(code: &[u8; 4]) -> String {
        let mut out = String::new();
        for b in code {
            if b.is_ascii_graphic() || *b == b' ' {
                out.push(char::from(*b));
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod kiss_tests {
    #[test]
    fn kiss_codes_cannot_carry_control_characters() {
        assert_eq!(super::kiss::text(b"RATE"), "RATE");
        assert_eq!(super::kiss::text(b"A\nB\x1b"), "A\\x0aB\\x1b");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = NtpHeader {
            leap: LeapIndicator::InsertSecond,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: -3,
            precision: -20,
            root_delay: NtpShort(0x0001_8000),
            root_dispersion: NtpShort(7),
            reference_id: *b"GPS\0",
            reference_timestamp: NtpTimestamp(1),
            origin_timestamp: NtpTimestamp(2),
            receive_timestamp: NtpTimestamp(3),
            transmit_timestamp: NtpTimestamp(u64::MAX),
        };
        let bytes = h.to_bytes();
        let (back, rest) = NtpHeader::parse(&bytes).unwrap();
        assert_eq!(back, h);
        assert!(rest.is_empty());
    }

    #[test]
    fn first_byte_layout() {
        let h = NtpHeader {
            leap: LeapIndicator::Unsynchronized,
            version: 4,
            mode: Mode::Client,
            ..Default::default()
        };
        assert_eq!(h.to_bytes()[0], 0b11_100_011);
    }

    #[test]
    fn short_and_bad_version() {
        assert_eq!(NtpHeader::parse(&[0u8; 47]), Err(PacketError::TooShort(47)));
        let mut b = [0u8; 48];
        b[0] = 0b00_000_011; // version 0
        assert_eq!(
            NtpHeader::parse(&b),
            Err(PacketError::UnsupportedVersion(0))
        );
        b[0] = 0b00_111_011;
        assert_eq!(
            NtpHeader::parse(&b),
            Err(PacketError::UnsupportedVersion(7))
        );
        b[0] = 0b00_011_011; // v3 accepted
        assert_eq!(NtpHeader::parse(&b).unwrap().0.version, 3);
    }

    #[test]
    fn timestamps() {
        let t = NtpTimestamp::from_unix(0, 500_000_000);
        assert_eq!(t.seconds() as u64, NTP_UNIX_OFFSET);
        assert_eq!(t.fraction(), 1 << 31);
        let a = NtpTimestamp::from_unix(1_700_000_000, 0);
        let b = NtpTimestamp::from_unix(1_700_000_001, 250_000_000);
        assert!((b.diff_seconds(a) - 1.25).abs() < 1e-9);
        assert!((a.diff_seconds(b) + 1.25).abs() < 1e-9);
        assert!((b.to_unix_f64(1_700_000_000) - 1_700_000_001.25).abs() < 1e-6);
        // Era 1 (after 2036) still converts relative to a pivot.
        let late = NtpTimestamp::from_unix(2_200_000_000, 0);
        assert!((late.to_unix_f64(2_199_999_000) - 2_200_000_000.0).abs() < 1e-6);
    }

    #[test]
    fn short_format() {
        assert_eq!(NtpShort::from_seconds(1.5).0, 0x0001_8000);
        assert_eq!(NtpShort::from_seconds(-1.0).0, 0);
        assert_eq!(NtpShort::from_seconds(1e9).0, u32::MAX);
        assert_eq!(NtpShort::from_seconds(f64::NAN).0, 0);
    }
}
