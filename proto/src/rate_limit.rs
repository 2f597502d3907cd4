//! Per-client-address token buckets in a fixed-size table.
//!
//! Memory never grows with the number of clients: addresses hash (with a
//! random key, so an attacker cannot aim collisions) into a fixed number of
//! slots, and a new address takes over its slot. An evicted client simply
//! starts again with a full bucket, so eviction can only make the limiter more
//! lenient towards honest clients, never lock them out. IPv6 clients are
//! limited per /64, since one host can use any address of its prefix.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Address key; 0 means empty (no real key is 0 because of the tag bit).
    key: u128,
    tokens: f32,
    last_ms: u64,
    /// When this address was last sent a RATE kiss-o'-death.
    last_kiss_ms: u64,
}

/// What to do with a packet from a client that may be over its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: tell the client to slow down (at most once per kiss interval).
    Kiss,
    /// Over the rate: drop silently.
    Drop,
}

/// Token-bucket rate limiter over a fixed table.
#[derive(Debug)]
pub struct RateLimiter {
    slots: Box<[Slot]>,
    mask: usize,
    rate_per_ms: f32,
    burst: f32,
    kiss_interval_ms: u64,
    hasher: RandomState,
}

fn address_key(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => (1u128 << 127) | u32::from(a) as u128,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (1u128 << 127) | u32::from(v4) as u128,
            // Keep the /64 prefix and tag it as IPv6.
            None => (1u128 << 126) | (u128::from(a) >> 64),
        },
    }
}

impl RateLimiter {
    /// `slots` is rounded up to a power of two; `rate` is in requests per second and
    /// `burst` the bucket size (at least 1).
    pub fn new(slots: usize, rate: f64, burst: f64) -> Self {
        let n = slots.max(1).next_power_of_two();
        Self {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            mask: n - 1,
            rate_per_ms: (rate / 1000.0) as f32,
            burst: burst.max(1.0) as f32,
            kiss_interval_ms: 10_000,
            hasher: RandomState::new(),
        }
    }

    /// Send a client at most one RATE kiss per `ms` milliseconds (default 10 s).
    pub fn with_kiss_interval(mut self, ms: u64) -> Self {
        self.kiss_interval_ms = ms;
        self
    }

    /// Number of table slots (memory is this times 32 bytes).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Take one token for `addr` at monotonic time `now_ms`; false when the client is over its rate.
    pub fn allow(&mut self, addr: IpAddr, now_ms: u64) -> bool {
        self.check(addr, now_ms) == Verdict::Allow
    }

    /// Take one token for `addr`; when none is left, decide between a kiss and a silent drop.
    pub fn check(&mut self, addr: IpAddr, now_ms: u64) -> Verdict {
        let key = address_key(addr);
        let idx = (self.hasher.hash_one(key) as usize) & self.mask;
        let slot = &mut self.slots[idx];
        if slot.key != key {
            *slot = Slot {
                key,
                tokens: self.burst,
                last_ms: now_ms,
                last_kiss_ms: 0,
            };
        } else {
            let elapsed = now_ms.saturating_sub(slot.last_ms) as f32;
            slot.tokens = (slot.tokens + elapsed * self.rate_per_ms).min(self.burst);
            slot.last_ms = now_ms;
        }
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            Verdict::Allow
        } else if slot.last_kiss_ms == 0
            || now_ms.saturating_sub(slot.last_kiss_ms) >= self.kiss_interval_ms
        {
            slot.last_kiss_ms = now_ms.max(1);
            Verdict::Kiss
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut rl = RateLimiter::new(1024, 1.0, 5.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| rl.allow(a, 0)).count();
        assert_eq!(allowed, 5);
        assert!(!rl.allow(a, 500));
        assert!(rl.allow(a, 1600));
        // Another address is independent.
        assert!(rl.allow("192.0.2.2".parse().unwrap(), 0));
    }

    #[test]
    fn kisses_are_occasional() {
        let mut rl = RateLimiter::new(16, 0.0, 1.0).with_kiss_interval(1000);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(rl.check(a, 5), Verdict::Allow);
        assert_eq!(rl.check(a, 6), Verdict::Kiss);
        for t in 7..1000 {
            assert_eq!(rl.check(a, t), Verdict::Drop);
        }
        assert_eq!(rl.check(a, 1006), Verdict::Kiss);
    }

    #[test]
    fn ipv6_prefix_shares_a_bucket() {
        let mut rl = RateLimiter::new(1024, 0.0, 2.0);
        assert!(rl.allow("2001:db8::1".parse().unwrap(), 0));
        assert!(rl.allow("2001:db8::2".parse().unwrap(), 0));
        assert!(!rl.allow("2001:db8::3".parse().unwrap(), 0));
        assert!(rl.allow("2001:db8:0:1::1".parse().unwrap(), 0));
        // IPv4-mapped addresses count as their IPv4 address.
        assert!(rl.allow("::ffff:192.0.2.9".parse().unwrap(), 0));
        assert!(rl.allow("192.0.2.9".parse().unwrap(), 0));
        assert!(!rl.allow("192.0.2.9".parse().unwrap(), 0));
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let mut rl = RateLimiter::new(100, 1.0, 1.0);
        assert_eq!(rl.capacity(), 128);
        for i in 0..100_000u32 {
            rl.allow(IpAddr::V4(i.into()), 0);
        }
        assert_eq!(rl.capacity(), 128);
    }
}
