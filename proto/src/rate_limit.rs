//! Per-client-address rate limiting in a fixed-size, set-associative table.
//!
//! Each address (IPv6: its /64, since one host can use any address of its
//! prefix) has a GCRA token bucket: one "theoretical arrival time" (`tat`)
//! says everything. A request at `now` is allowed when `tat - now` is within
//! the burst tolerance, and then pushes `tat` one interval further. A bucket
//! whose `tat` is in the past is full, which is exactly the state of an
//! address never seen: forgetting it loses nothing.
//!
//! Memory never grows with the number of clients: addresses hash, with a
//! secret key (so nobody can aim at a bucket), into buckets of [`WAYS`]
//! 16-byte entries, one 64-byte cache line each. A live entry (one whose
//! bucket has not refilled) is never evicted: an entry is reclaimed only once
//! forgetting it loses nothing, so no flood of spoofed addresses can reset an
//! abuser's bucket. An address that finds every way of its bucket live is
//! limited through an overflow sketch instead: untagged GCRA cells, two per
//! address (count-min with conservative update). A cell also carries the
//! debt of every other address that maps to it, so the sketch can only err
//! on the strict side, and only while a flood larger than the table lasts:
//! an abuser is limited either way. Over-rate requests decided by the sketch
//! are dropped, never kissed (there is no per-address kiss state there).

use crate::client_prefix::PrefixLengths;
use crate::time::MonoTime;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

/// Entries per bucket (one cache line).
pub const WAYS: usize = 4;

/// Set in `Entry::tag` while the address has been refused and its bucket has not refilled.
const LIMITED: u32 = 1 << 31;
const TAG_MASK: u32 = !LIMITED;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Entry {
    /// GCRA theoretical arrival time, nanoseconds on the caller's monotonic clock.
    tat_ns: u64,
    /// Keyed fingerprint of the address (never 0 when in use) plus the LIMITED bit; 0: empty.
    tag: u32,
    /// When this address was last sent a RATE kiss, in wrapping milliseconds
    /// (compared with wrapping arithmetic: an entry left alone for more than
    /// 49.7 days may have one kiss suppressed, never an extra one sent early
    /// within the interval).
    kiss_ms: u32,
}

/// One set of the table: fits one 64-byte cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([Entry; WAYS]);

/// What to do with a packet from a client that may be over its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate, and no kiss was sent to this address within the kiss
    /// interval: a plain NTP client may be told to slow down.
    Kiss,
    /// Over the rate: drop silently.
    Drop,
}

impl Verdict {
    /// Whether the request may be answered with time.
    pub fn allowed(self) -> bool {
        self == Self::Allow
    }
}

/// Token-bucket rate limiter over a fixed table.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Nanoseconds per allowed request at the sustained rate.
    interval_ns: u64,
    /// How far `tat` may run ahead of now and still allow: (burst - 1) intervals.
    tolerance_ns: u64,
    kiss_interval_ms: u32,
    hasher: RandomState,
    /// Overflow sketch: GCRA theoretical arrival times, untagged.
    cells: Box<[u64]>,
    cell_mask: usize,
    /// Decisions taken by the sketch because the address's bucket was full of live entries.
    overflowed: u64,
    /// Which addresses share a bucket (IPv6 per /64 by default).
    prefixes: PrefixLengths,
}

impl RateLimiter {
    /// Bytes of memory per entry: the entry itself and its share of the
    /// overflow sketch (one 8-byte cell per entry).
    pub const BYTES_PER_ENTRY: usize = std::mem::size_of::<Entry>() + 8;

    /// `entries` is rounded up to a power of two of at least [`WAYS`]; `rate` is in
    /// requests per second (above 0) and `burst` the bucket size (at least 1).
    pub fn new(entries: usize, rate: f64, burst: f64) -> Self {
        let buckets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1e-9
        };
        let interval = (1e9 / rate).min(u64::MAX as f64 / 4.0);
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        let mut table = vec![Bucket::default(); buckets].into_boxed_slice();
        let mut cells = vec![0u64; buckets * WAYS].into_boxed_slice();
        // Zeroed allocations are mapped lazily: touch every page now, so the
        // memory is resident from the start and a flood cannot grow it.
        for b in table
            .iter_mut()
            .step_by(4096 / std::mem::size_of::<Bucket>())
        {
            *std::hint::black_box(&mut b.0[0].kiss_ms) = 0;
        }
        for c in cells.iter_mut().step_by(4096 / 8) {
            *std::hint::black_box(c) = 0;
        }
        Self {
            buckets: table,
            mask: buckets - 1,
            interval_ns: (interval as u64).max(1),
            tolerance_ns: ((burst - 1.0) * interval).min(u64::MAX as f64 / 4.0) as u64,
            kiss_interval_ms: 10_000,
            hasher: RandomState::new(),
            cells,
            cell_mask: buckets * WAYS - 1,
            overflowed: 0,
            prefixes: PrefixLengths::DEFAULT,
        }
    }

    /// Count clients per `prefixes` instead of per IPv4 address and IPv6 /64.
    pub fn with_prefix_lengths(mut self, prefixes: PrefixLengths) -> Self {
        self.prefixes = prefixes;
        self
    }

    /// Send a client at most one RATE kiss per `ms` milliseconds (default 10 s).
    pub fn with_kiss_interval(mut self, interval: Duration) -> Self {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.kiss_interval_ms = ms.min(u32::MAX as u64 / 2) as u32;
        self
    }

    /// Number of table entries (one per tracked address).
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes the table and sketch occupy (entries times [`Self::BYTES_PER_ENTRY`]).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets) + std::mem::size_of_val(&*self.cells)
    }

    /// Requests decided by the overflow sketch so far (their bucket was full of
    /// live entries: the table is smaller than the traffic).
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Take one token for `addr` at monotonic time `now`; false when the client is over its rate.
    pub fn allow(&mut self, addr: IpAddr, now: MonoTime) -> bool {
        self.check(addr, now).allowed()
    }

    /// Take one token for `addr` at monotonic time `now`; when none is left,
    /// decide between a kiss and a silent drop.
    pub fn check(&mut self, addr: IpAddr, now: MonoTime) -> Verdict {
        let now_ns = now.as_nanos();
        let h = self.hasher.hash_one(self.prefixes.prefix_of(addr).key());
        let tag = ((h >> 32) as u32 & TAG_MASK) | 1;
        let now_ms = (now_ns / 1_000_000) as u32;
        let (interval, tolerance, kiss_interval) =
            (self.interval_ns, self.tolerance_ns, self.kiss_interval_ms);
        let bucket = &mut self.buckets[h as usize & self.mask].0;

        let way = match bucket.iter().position(|e| e.tag & TAG_MASK == tag) {
            Some(i) => i,
            // Only an empty or refilled entry is taken: forgetting it loses nothing.
            None => match bucket.iter().position(|e| e.tag == 0 || e.tat_ns <= now_ns) {
                Some(i) => {
                    bucket[i] = Entry {
                        tat_ns: now_ns,
                        tag,
                        kiss_ms: now_ms.wrapping_sub(kiss_interval),
                    };
                    i
                }
                None => return self.overflow(h, now_ns),
            },
        };
        let e = &mut bucket[way];
        if e.tat_ns <= now_ns {
            // Refilled completely: whatever it did before is forgiven.
            e.tat_ns = now_ns;
            e.tag &= TAG_MASK;
        }
        if e.tat_ns - now_ns <= tolerance {
            e.tat_ns += interval;
            Verdict::Allow
        } else {
            e.tag |= LIMITED;
            if now_ms.wrapping_sub(e.kiss_ms) >= kiss_interval {
                e.kiss_ms = now_ms;
                Verdict::Kiss
            } else {
                Verdict::Drop
            }
        }
    }

    /// GCRA over the address's two sketch cells: its debt is at most the smaller.
    fn overflow(&mut self, h: u64, now_ns: u64) -> Verdict {
        self.overflowed += 1;
        let a = h.rotate_right(17) as usize & self.cell_mask;
        let b = h.rotate_right(41) as usize & self.cell_mask;
        let tat = self.cells[a].min(self.cells[b]).max(now_ns);
        if tat - now_ns > self.tolerance_ns {
            return Verdict::Drop;
        }
        let next = tat + self.interval_ns;
        for c in [a, b] {
            self.cells[c] = self.cells[c].max(next);
        }
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ns(n: u64) -> MonoTime {
        MonoTime::from_nanos(n)
    }

    fn ms(n: u64) -> MonoTime {
        MonoTime::from_nanos(n * MS)
    }

    #[test]
    fn burst_then_rate() {
        let mut rl = RateLimiter::new(1024, 1.0, 5.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| rl.allow(a, ms(0))).count();
        assert_eq!(allowed, 5);
        assert!(!rl.allow(a, ms(500)));
        assert!(rl.allow(a, ms(1600)));
        // Another address is independent.
        assert!(rl.allow("192.0.2.2".parse().unwrap(), ms(0)));
    }

    #[test]
    fn sustained_rate_is_the_configured_rate() {
        // 2/s with a burst of 4, hammered every millisecond for 10 s: 4 + 2 * 10.
        let mut rl = RateLimiter::new(64, 2.0, 4.0);
        let a: IpAddr = "198.51.100.3".parse().unwrap();
        let allowed = (0..10_000u64)
            .filter(|t| rl.check(a, ns(t * MS)).allowed())
            .count();
        assert!((23..=25).contains(&allowed), "{allowed}");
    }

    #[test]
    fn kisses_are_occasional() {
        let mut rl = RateLimiter::new(16, 1e-6, 1.0).with_kiss_interval(Duration::from_secs(1));
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(rl.check(a, ns(5 * MS)), Verdict::Allow);
        assert_eq!(rl.check(a, ns(6 * MS)), Verdict::Kiss);
        for t in 7..1000 {
            assert_eq!(rl.check(a, ns(t * MS)), Verdict::Drop);
        }
        assert_eq!(rl.check(a, ns(1006 * MS)), Verdict::Kiss);
    }

    #[test]
    fn ipv6_prefix_shares_a_bucket() {
        let mut rl = RateLimiter::new(1024, 1e-6, 2.0);
        assert!(rl.allow("2001:db8::1".parse().unwrap(), ms(0)));
        assert!(rl.allow("2001:db8::2".parse().unwrap(), ms(0)));
        assert!(!rl.allow("2001:db8::3".parse().unwrap(), ms(0)));
        assert!(rl.allow("2001:db8:0:1::1".parse().unwrap(), ms(0)));
        // IPv4-mapped addresses count as their IPv4 address.
        assert!(rl.allow("::ffff:192.0.2.9".parse().unwrap(), ms(0)));
        assert!(rl.allow("192.0.2.9".parse().unwrap(), ms(0)));
        assert!(!rl.allow("192.0.2.9".parse().unwrap(), ms(0)));
    }

    #[test]
    fn memory_is_fixed_and_as_documented() {
        assert_eq!(RateLimiter::BYTES_PER_ENTRY, 24);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        let mut rl = RateLimiter::new(100, 1.0, 1.0);
        assert_eq!(rl.capacity(), 128);
        assert_eq!(rl.memory_bytes(), 128 * 24);
        for i in 0..100_000u32 {
            rl.allow(IpAddr::V4(i.into()), ms(0));
        }
        assert_eq!(rl.capacity(), 128);
    }

    #[test]
    fn spoofed_flood_cannot_reset_an_abuser() {
        // A tiny table (4 buckets of 4) so the flood hits the abuser's bucket constantly.
        let mut rl = RateLimiter::new(16, 1.0, 3.0).with_kiss_interval(Duration::MAX);
        let abuser: IpAddr = "203.0.113.66".parse().unwrap();
        let mut allowed = 0;
        let mut spoofed = 0u32;
        for t in 0..20_000u64 {
            // The abuser asks every 10 ms, 100 spoofed addresses arrive in between.
            if rl.check(abuser, ns(t * 10 * MS)).allowed() {
                allowed += 1;
            }
            for j in 0..100 {
                spoofed += 1;
                let at = t * 10 * MS + 1 + j * 50_000;
                rl.check(IpAddr::V4((0x0a00_0000 + spoofed).into()), ns(at));
            }
        }
        // 200 s at 1/s plus a burst of 3.
        assert!((200..=204).contains(&allowed), "abuser got {allowed}");
    }

    #[test]
    fn a_full_bucket_sends_newcomers_to_the_sketch() {
        let mut rl = RateLimiter::new(4, 1.0, 2.0);
        // Fill the only bucket with live entries.
        for i in 0..4u32 {
            assert!(rl.allow(IpAddr::V4((0x0a00_0000 + i).into()), ms(0)));
        }
        let newcomer: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(rl.check(newcomer, ns(10 * MS)), Verdict::Allow);
        assert_eq!(rl.check(newcomer, ns(11 * MS)), Verdict::Allow);
        // Limited by the sketch, dropped without a kiss.
        assert_eq!(rl.check(newcomer, ns(12 * MS)), Verdict::Drop);
        assert_eq!(rl.overflowed(), 3);
        // Once the bucket's entries refill, the newcomer gets an entry of its own.
        assert_eq!(rl.check(newcomer, ns(1001 * MS)), Verdict::Allow);
        assert_eq!(rl.overflowed(), 3);
    }
}
