//! Interleaved client/server mode (RFC 9769 section 2): the server hands a
//! client the transmit timestamp of its *previous* response, taken by the
//! kernel or the NIC after that response left, which no basic-mode response
//! can carry.
//!
//! How the two sides recognise each other:
//! - Every server receive timestamp goes out with its lowest bit set and every
//!   transmit timestamp with it clear (a quarter of a nanosecond of
//!   resolution), so a request whose origin timestamp has the bit set names
//!   one of our receive timestamps: that client is trying interleaved mode.
//!   Basic clients send a zero, random or transmit-timestamp origin and cost
//!   the server nothing.
//! - For such a request the server remembers (receive timestamp, client
//!   address) and asks the kernel for the response's transmit timestamp. If
//!   the request's origin names an earlier response to the same address whose
//!   transmit timestamp arrived, the answer is interleaved: origin = the
//!   request's receive field, receive = this request's, transmit = the
//!   earlier response's real one. Otherwise it is a basic answer, as before.
//! - The client (see [`InterleavedClient`]) puts the server's last receive
//!   timestamp in the origin field and its own receive time of that response
//!   in the receive field; an answer echoing the receive field is
//!   interleaved and completes the *previous* exchange's four timestamps.
//!
//! The server's table ([`TransmitTable`]) is fixed-size and direct-mapped:
//! a new entry overwrites whatever hashed to its slot, so memory never grows
//! with the number of clients. An entry answers only the address it was
//! recorded for, and only a request that names its exact 64-bit receive
//! timestamp, so the table tells nobody anything about other clients; an
//! interleaved response is the same size as a basic one, so it amplifies
//! nothing.

use crate::ntp_packet::{NtpHeader, NtpTimestamp};
use std::net::IpAddr;

/// The bit that tells a server receive timestamp from a transmit timestamp.
const RECEIVE_FLAG: u64 = 1;

/// A receive timestamp as the server sends it: lowest bit set.
pub fn mark_receive(ts: NtpTimestamp) -> NtpTimestamp {
    NtpTimestamp(ts.0 | RECEIVE_FLAG)
}

/// A transmit timestamp as the server sends it: lowest bit clear.
pub fn mark_transmit(ts: NtpTimestamp) -> NtpTimestamp {
    NtpTimestamp(ts.0 & !RECEIVE_FLAG)
}

/// A client as the table knows it: its address, IPv4 mapped into IPv6, so the
/// same host over a dual-stack socket is one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddress([u8; 16]);

impl From<IpAddr> for ClientAddress {
    fn from(ip: IpAddr) -> Self {
        Self(match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        })
    }
}

/// What the server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Answer in interleaved mode with this transmit timestamp of the previous response.
    pub previous_transmit: Option<NtpTimestamp>,
    /// Remember this request's receive timestamp and capture its response's
    /// transmit timestamp, so the next request can be answered interleaved.
    pub track: bool,
}

impl Decision {
    pub const BASIC: Self = Self {
        previous_transmit: None,
        track: false,
    };
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Receive timestamp as sent (flag bit set); 0: empty.
    receive: u64,
    /// Transmit timestamp of the response to that request; 0 until captured.
    transmit: u64,
    client: ClientAddress,
}

/// Transmit timestamps of recent responses to interleaved clients, keyed by
/// the receive timestamp of the request each answered.
#[derive(Debug, Clone)]
pub struct TransmitTable {
    slots: Box<[Slot]>,
    mask: usize,
}

/// Bytes per slot of [`TransmitTable`].
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

impl TransmitTable {
    /// A table of at least `slots` entries (rounded up to a power of two);
    /// 0 turns interleaved mode off. All memory is allocated and touched here.
    pub fn new(slots: usize) -> Self {
        let n = if slots == 0 {
            0
        } else {
            slots.next_power_of_two()
        };
        Self {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            mask: n.saturating_sub(1),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.slots.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }

    fn index(&self, receive: u64) -> usize {
        // Receive timestamps are nanosecond clock readings the sender cannot
        // choose; a multiplicative hash spreads their low bits over the table.
        (receive.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    /// How to answer `req` from `client`.
    pub fn decide(&self, req: &NtpHeader, client: ClientAddress) -> Decision {
        let origin = req.origin_timestamp.0;
        if !self.enabled()
            || origin & RECEIVE_FLAG == 0
            || req.receive_timestamp == req.transmit_timestamp
        {
            return Decision::BASIC;
        }
        let slot = &self.slots[self.index(origin)];
        let previous_transmit =
            (slot.receive == origin && slot.client == client && slot.transmit != 0)
                .then_some(NtpTimestamp(slot.transmit));
        Decision {
            previous_transmit,
            track: true,
        }
    }

    /// A response to `client` went out for the request received at `receive`
    /// (as sent, flag set); its transmit timestamp is still to come.
    pub fn track(&mut self, receive: NtpTimestamp, client: ClientAddress) {
        if !self.enabled() {
            return;
        }
        let i = self.index(receive.0);
        self.slots[i] = Slot {
            receive: receive.0,
            transmit: 0,
            client,
        };
    }

    /// The transmit timestamp of the response that carried `receive`. False
    /// when that entry is gone (overwritten) or was never tracked. A
    /// `precise` (hardware) stamp replaces one already recorded; a software
    /// stamp never replaces a hardware one that came first.
    pub fn record_transmit(
        &mut self,
        receive: NtpTimestamp,
        transmit: NtpTimestamp,
        precise: bool,
    ) -> bool {
        if !self.enabled() || receive.0 & RECEIVE_FLAG == 0 {
            return false;
        }
        let i = self.index(receive.0);
        let slot = &mut self.slots[i];
        if slot.receive != receive.0 {
            return false;
        }
        if slot.transmit != 0 && !precise {
            return true;
        }
        // Never 0, which means "not captured".
        slot.transmit = mark_transmit(transmit).0.max(2);
        true
    }
}

/// The four timestamps of one measurement (RFC 5905 section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamps {
    /// Client send.
    pub t1: NtpTimestamp,
    /// Server receive.
    pub t2: NtpTimestamp,
    /// Server send.
    pub t3: NtpTimestamp,
    /// Client receive.
    pub t4: NtpTimestamp,
}

impl Timestamps {
    /// Server clock minus client clock, and round-trip delay, in seconds.
    pub fn offset_delay(&self) -> (f64, f64) {
        let offset = (self.t2.diff_seconds(self.t1) + self.t3.diff_seconds(self.t4)) / 2.0;
        let delay = self.t4.diff_seconds(self.t1) - self.t3.diff_seconds(self.t2);
        (offset, delay)
    }
}

/// The fields an interleaved request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterleavedFields {
    /// The server's receive timestamp of the previous exchange.
    pub origin: NtpTimestamp,
    /// Our receive time of the previous response: an interleaved answer echoes it as its origin.
    pub receive: NtpTimestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Previous {
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t4: NtpTimestamp,
}

/// A client source's side of interleaved mode: remembers the last completed
/// exchange so the next answer can complete it with the server's real
/// transmit timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterleavedClient {
    previous: Option<Previous>,
    interleaved: u64,
    basic: u64,
}

impl InterleavedClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the next request should carry, once there is an exchange to refer to.
    pub fn request_fields(&self) -> Option<InterleavedFields> {
        self.previous.map(|p| InterleavedFields {
            origin: p.t2,
            receive: p.t4,
        })
    }

    /// An accepted answer `header`, received at `t4` for a request sent at
    /// `t1`, `interleaved` as the response check found it: the timestamps to
    /// measure with. An interleaved answer measures the previous exchange;
    /// either way this exchange becomes the one the next request refers to.
    pub fn complete(
        &mut self,
        header: &NtpHeader,
        interleaved: bool,
        t1: NtpTimestamp,
        t4: NtpTimestamp,
    ) -> Timestamps {
        let ts = match (interleaved, self.previous) {
            (true, Some(p)) => {
                self.interleaved += 1;
                Timestamps {
                    t1: p.t1,
                    t2: p.t2,
                    t3: header.transmit_timestamp,
                    t4: p.t4,
                }
            }
            _ => {
                self.basic += 1;
                Timestamps {
                    t1,
                    t2: header.receive_timestamp,
                    t3: header.transmit_timestamp,
                    t4,
                }
            }
        };
        self.previous = Some(Previous {
            t1,
            t2: header.receive_timestamp,
            t4,
        });
        ts
    }

    /// Forget the previous exchange (another server, a new association).
    pub fn reset(&mut self) {
        self.previous = None;
    }

    /// Answers that were interleaved and basic, for status.
    pub fn counts(&self) -> (u64, u64) {
        (self.interleaved, self.basic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntp_packet::Mode;

    fn client_req(origin: u64, receive: u64, transmit: u64) -> NtpHeader {
        NtpHeader {
            mode: Mode::Client,
            origin_timestamp: NtpTimestamp(origin),
            receive_timestamp: NtpTimestamp(receive),
            transmit_timestamp: NtpTimestamp(transmit),
            ..Default::default()
        }
    }

    fn addr(s: &str) -> ClientAddress {
        ClientAddress::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn flags_tell_receive_from_transmit() {
        let t = NtpTimestamp(0x1234_5678_9abc_def0);
        assert_eq!(mark_receive(t).0 & 1, 1);
        assert_eq!(mark_transmit(mark_receive(t)).0 & 1, 0);
        assert!(mark_receive(t).diff_seconds(t).abs() < 1e-9);
    }

    #[test]
    fn basic_clients_cost_nothing() {
        let t = TransmitTable::new(16);
        let c = addr("192.0.2.1");
        // RFC 9109 data minimisation: zero origin, random transmit.
        assert_eq!(t.decide(&client_req(0, 0, 77), c), Decision::BASIC);
        // ntpd-style basic: origin = our last transmit timestamp (flag clear).
        assert_eq!(t.decide(&client_req(0x1000, 0, 77), c), Decision::BASIC);
        // Receive equal to transmit is basic too (RFC 9769).
        assert_eq!(t.decide(&client_req(0x1001, 5, 5), c), Decision::BASIC);
        // Table off: always basic.
        let off = TransmitTable::new(0);
        assert!(!off.enabled());
        assert_eq!(off.decide(&client_req(0x1001, 4, 5), c), Decision::BASIC);
    }

    #[test]
    fn sizes_are_powers_of_two_and_bounded() {
        assert_eq!(TransmitTable::new(1000).memory_bytes(), 1024 * SLOT_BYTES);
        assert_eq!(SLOT_BYTES, 32);
    }

    #[test]
    fn entries_answer_only_their_client_and_exact_timestamp() {
        let mut t = TransmitTable::new(64);
        let a = addr("192.0.2.1");
        let rx = mark_receive(NtpTimestamp(0xdead_beef_0000_1000));
        t.track(rx, a);
        // Transmit not captured yet: basic, keep tracking.
        let d = t.decide(&client_req(rx.0, 9, 10), a);
        assert_eq!((d.previous_transmit, d.track), (None, true));
        assert!(t.record_transmit(rx, NtpTimestamp(0xdead_beef_0000_2001), false));
        // A later software stamp does not replace it; a hardware one does.
        t.record_transmit(rx, NtpTimestamp(0xdead_beef_0000_3000), false);
        let d = t.decide(&client_req(rx.0, 9, 10), a);
        assert_eq!(
            d.previous_transmit,
            Some(NtpTimestamp(0xdead_beef_0000_2000))
        );
        t.record_transmit(rx, NtpTimestamp(0xdead_beef_0000_1800), true);
        let d = t.decide(&client_req(rx.0, 9, 10), a);
        assert_eq!(
            d.previous_transmit,
            Some(NtpTimestamp(0xdead_beef_0000_1800))
        );
        t.record_transmit(rx, NtpTimestamp(0xdead_beef_0000_2000), true);
        let d = t.decide(&client_req(rx.0, 9, 10), a);
        assert_eq!(
            d.previous_transmit,
            Some(NtpTimestamp(0xdead_beef_0000_2000))
        );
        // Another address naming the same receive timestamp learns nothing.
        let d = t.decide(&client_req(rx.0, 9, 10), addr("192.0.2.2"));
        assert_eq!(d.previous_transmit, None);
        // A near miss of the timestamp finds nothing either.
        let d = t.decide(&client_req(rx.0 + 2, 9, 10), a);
        assert_eq!(d.previous_transmit, None);
        // IPv4 and its mapped IPv6 form are the same client.
        let d = t.decide(&client_req(rx.0, 9, 10), addr("::ffff:192.0.2.1"));
        assert!(d.previous_transmit.is_some());
        // A transmit stamp for an untracked request changes nothing.
        assert!(!t.record_transmit(mark_receive(NtpTimestamp(77)), NtpTimestamp(80), true));
    }

    /// The server side and the client side of several exchanges, with made-up
    /// clocks: the interleaved measurement uses the real transmit time.
    #[test]
    fn client_and_table_complete_the_previous_exchange() {
        let mut table = TransmitTable::new(64);
        let mut client = InterleavedClient::new();
        let a = addr("2001:db8::1");
        let ns = |n: u64| NtpTimestamp::from_unix(1_800_000_000, n as u32);
        let mut answers = Vec::new();
        for i in 0..4u64 {
            let base = i * 10_000_000;
            let t1 = ns(base);
            let fields = client.request_fields();
            let req = client_req(
                fields.map_or(0, |f| f.origin.0),
                fields.map_or(0, |f| f.receive.0),
                0x5555_0000 + i,
            );
            let d = table.decide(&req, a);
            let rx = mark_receive(ns(base + 1000));
            // Basic transmit estimate 100 ns after receive; the kernel's real
            // stamp comes 5 µs later (the response waited for sealing).
            let estimate = mark_transmit(ns(base + 1100));
            let actual = mark_transmit(ns(base + 6100));
            let header = NtpHeader {
                mode: Mode::Server,
                origin_timestamp: if d.previous_transmit.is_some() {
                    req.receive_timestamp
                } else {
                    req.transmit_timestamp
                },
                receive_timestamp: rx,
                transmit_timestamp: d.previous_transmit.unwrap_or(estimate),
                ..Default::default()
            };
            if d.track {
                table.track(rx, a);
                table.record_transmit(rx, actual, false);
            }
            let interleaved = fields.is_some_and(|f| header.origin_timestamp == f.receive);
            let t4 = ns(base + 8000);
            let ts = client.complete(&header, interleaved, t1, t4);
            answers.push((interleaved, ts.offset_delay()));
        }
        // First request carries no origin, the second names the first
        // response (untracked then), from the third on: interleaved.
        let modes: Vec<bool> = answers.iter().map(|a| a.0).collect();
        assert_eq!(modes, [false, false, true, true]);
        // Basic: delay 8000 - 100 ns; interleaved: 8000 - 5100 ns, the real one.
        assert!((answers[0].1 .1 - 7.9e-6).abs() < 2e-9, "{:?}", answers[0]);
        assert!((answers[2].1 .1 - 2.9e-6).abs() < 2e-9, "{:?}", answers[2]);
        assert_eq!(client.counts(), (2, 2));
    }
}
