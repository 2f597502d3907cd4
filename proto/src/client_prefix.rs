//! Which client addresses count as one client for limits. One IPv6 host can
//! use any address of its /64 (or of a larger delegated prefix), so limits
//! that counted single IPv6 addresses would count nothing; IPv4-mapped IPv6
//! addresses are the IPv4 client they carry (a dual-stack listener sees them).

use std::net::IpAddr;

/// Prefix lengths that group client addresses: IPv4 per /32 and IPv6 per /64
/// by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLengths {
    v4: u8,
    v6: u8,
}

/// Why a prefix length was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixLengthError {
    #[error("IPv4 prefix length {0} is not between 8 and 32")]
    V4(u8),
    #[error("IPv6 prefix length {0} is not between 16 and 128")]
    V6(u8),
}

impl PrefixLengths {
    /// IPv4 /32 (one address), IPv6 /64 (one subnet: one host or one site).
    pub const DEFAULT: Self = Self { v4: 32, v6: 64 };

    /// Group IPv4 clients per `/v4` and IPv6 clients per `/v6`. Shorter
    /// prefixes than /8 and /16 would make the whole internet one client.
    pub fn new(v4: u8, v6: u8) -> Result<Self, PrefixLengthError> {
        if !(8..=32).contains(&v4) {
            return Err(PrefixLengthError::V4(v4));
        }
        if !(16..=128).contains(&v6) {
            return Err(PrefixLengthError::V6(v6));
        }
        Ok(Self { v4, v6 })
    }

    /// The client `addr` belongs to.
    #[inline]
    pub fn prefix_of(self, addr: IpAddr) -> ClientPrefix {
        match addr {
            IpAddr::V4(a) => ClientPrefix::v4(u32::from(a), self.v4),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => ClientPrefix::v4(u32::from(v4), self.v4),
                None => ClientPrefix::v6(u128::from(a), self.v6),
            },
        }
    }
}

impl Default for PrefixLengths {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One client for limits: an address masked to its prefix, tagged by family
/// (so an IPv4 client never equals an IPv6 prefix with the same bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientPrefix(u128);

impl ClientPrefix {
    const V4_TAG: u128 = 1 << 127;
    const V6_TAG: u128 = 1 << 126;

    #[inline]
    fn v4(bits: u32, len: u8) -> Self {
        let masked = bits & (u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
        Self(Self::V4_TAG | u128::from(masked))
    }

    #[inline]
    fn v6(bits: u128, len: u8) -> Self {
        // The top bits of a /64 (or shorter) prefix, shifted down so the tag fits;
        // longer prefixes keep their low bits too, losing the two topmost bits of
        // the address to the tag (2000::/3 and fc00::/7 differ below them).
        let masked = bits & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        let folded = if len <= 64 {
            masked >> 64
        } else {
            masked & !(Self::V4_TAG | Self::V6_TAG)
        };
        Self(Self::V6_TAG | folded)
    }

    /// A 128-bit value unique to this prefix, for hashing.
    #[inline]
    pub fn key(self) -> u128 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(l: PrefixLengths, s: &str) -> ClientPrefix {
        l.prefix_of(s.parse().unwrap())
    }

    #[test]
    fn default_groups_ipv6_per_64_and_ipv4_per_address() {
        let d = PrefixLengths::DEFAULT;
        assert_eq!(p(d, "2001:db8:1:2::1"), p(d, "2001:db8:1:2:ffff::9"));
        assert_ne!(p(d, "2001:db8:1:2::1"), p(d, "2001:db8:1:3::1"));
        assert_ne!(p(d, "192.0.2.1"), p(d, "192.0.2.2"));
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(p(d, "::ffff:192.0.2.1"), p(d, "192.0.2.1"));
        // Families never collide.
        assert_ne!(p(d, "0.0.0.1"), p(d, "::1"));
    }

    #[test]
    fn configured_lengths_group_wider() {
        let l = PrefixLengths::new(24, 56).unwrap();
        assert_eq!(p(l, "192.0.2.1"), p(l, "192.0.2.200"));
        assert_ne!(p(l, "192.0.2.1"), p(l, "192.0.3.1"));
        assert_eq!(p(l, "2001:db8:0:ff::1"), p(l, "2001:db8:0:1::1"));
        assert_ne!(p(l, "2001:db8:0:100::1"), p(l, "2001:db8:0:1::1"));
        let full = PrefixLengths::new(32, 128).unwrap();
        assert_ne!(p(full, "2001:db8::1"), p(full, "2001:db8::2"));
    }

    #[test]
    fn lengths_out_of_range_are_refused() {
        assert_eq!(PrefixLengths::new(7, 64), Err(PrefixLengthError::V4(7)));
        assert_eq!(PrefixLengths::new(33, 64), Err(PrefixLengthError::V4(33)));
        assert_eq!(PrefixLengths::new(32, 15), Err(PrefixLengthError::V6(15)));
        assert_eq!(PrefixLengths::new(32, 129), Err(PrefixLengthError::V6(129)));
    }
}
