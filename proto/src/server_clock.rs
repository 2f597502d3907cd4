//! What a time server announces about its clock (leap indicator, stratum,
//! root delay and dispersion), decided from the kernel's NTP state: a server
//! never claims a synchronization the kernel does not have, unless it is
//! configured as a local reference. Pure: the shell reads the kernel
//! (`adjtimex` with no modes) and passes the state in.

use crate::ntp_packet::{LeapIndicator, NtpShort, NtpTimestamp};
use crate::ntp_server::ServerClock;
use crate::time::Seconds;

/// `timex.status` bit: a leap second is to be inserted at the end of the day.
pub const STA_INS: i32 = 0x0010;
/// `timex.status` bit: a leap second is to be deleted.
pub const STA_DEL: i32 = 0x0020;
/// `timex.status` bit: the clock is not synchronized.
pub const STA_UNSYNC: i32 = 0x0040;
/// adjtimex return value meaning the clock is not synchronized.
pub const TIME_ERROR: i32 = 5;

/// The parts of the kernel's `struct timex` a server's announcement uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelState {
    /// adjtimex return value (TIME_OK, TIME_INS, ..., TIME_ERROR).
    pub state: i32,
    pub status: i32,
    /// Maximum error in microseconds (the sync daemon keeps it near the root distance).
    pub maxerror_us: i64,
    pub esterror_us: i64,
}

/// How the server describes its clock beyond what the kernel knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockPolicy {
    /// Claim synchronization whatever the kernel says (this host is the reference).
    pub local_reference: bool,
    /// Stratum while synchronized.
    pub stratum: u8,
    /// Root delay to announce (the kernel does not know it).
    pub root_delay: Seconds,
    pub reference_id: [u8; 4],
    /// Precision of the system clock, log2 seconds.
    pub precision: i8,
}

/// Is the kernel clock synchronized?
pub fn kernel_synchronized(k: &KernelState) -> bool {
    k.status & STA_UNSYNC == 0 && k.state != TIME_ERROR
}

fn leap_from(k: &KernelState) -> LeapIndicator {
    if k.status & STA_INS != 0 {
        LeapIndicator::InsertSecond
    } else if k.status & STA_DEL != 0 {
        LeapIndicator::DeleteSecond
    } else {
        LeapIndicator::NoWarning
    }
}

/// The clock fields of every response, from the kernel state (None: it could
/// not be read) and the policy, at `now` (the reference timestamp).
pub fn server_clock(
    kernel: Option<&KernelState>,
    policy: &ClockPolicy,
    now: NtpTimestamp,
) -> ServerClock {
    let precision = policy.precision;
    if policy.local_reference {
        return ServerClock {
            leap: kernel.map_or(LeapIndicator::NoWarning, leap_from),
            stratum: policy.stratum,
            precision,
            root_delay: NtpShort::from_seconds(policy.root_delay.as_f64()),
            // This host is the reference: its error is its own precision, not the kernel's guess.
            root_dispersion: NtpShort::from_seconds(2f64.powi(i32::from(precision))),
            reference_id: policy.reference_id,
            reference_timestamp: now,
        };
    }
    match kernel {
        Some(k) if kernel_synchronized(k) => ServerClock {
            leap: leap_from(k),
            stratum: policy.stratum,
            precision,
            root_delay: NtpShort::from_seconds(policy.root_delay.as_f64()),
            // The sync daemon sets maxerror to its root distance and the kernel grows it
            // by 500 ppm of elapsed time: the honest bound on our error.
            root_dispersion: NtpShort::from_seconds(k.maxerror_us.max(0) as f64 * 1e-6),
            reference_id: policy.reference_id,
            reference_timestamp: now,
        },
        _ => ServerClock::unsynchronized(precision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(local: bool) -> ClockPolicy {
        ClockPolicy {
            local_reference: local,
            stratum: 2,
            root_delay: Seconds::ZERO,
            reference_id: *b"KERN",
            precision: -20,
        }
    }

    const SYNCED: KernelState = KernelState {
        state: 0,
        status: 0x2001,
        maxerror_us: 2500,
        esterror_us: 10,
    };

    const UNSYNCED: KernelState = KernelState {
        state: TIME_ERROR,
        status: STA_UNSYNC,
        maxerror_us: 16_000_000,
        esterror_us: 16_000_000,
    };

    #[test]
    fn unsynchronized_or_unreadable_kernel_means_alarm() {
        for k in [Some(&UNSYNCED), None] {
            let c = server_clock(k, &policy(false), NtpTimestamp(1));
            assert_eq!(c.leap, LeapIndicator::Unsynchronized);
            assert_eq!(c.stratum, 16);
        }
        // Either sign is enough: the status bit or the return value.
        let only_state = KernelState {
            status: 0,
            ..UNSYNCED
        };
        assert!(!kernel_synchronized(&only_state));
        let only_bit = KernelState {
            state: 0,
            ..UNSYNCED
        };
        assert!(!kernel_synchronized(&only_bit));
    }

    #[test]
    fn synchronized_kernel_follows_its_state() {
        let c = server_clock(Some(&SYNCED), &policy(false), NtpTimestamp(7));
        assert_eq!(c.leap, LeapIndicator::NoWarning);
        assert_eq!(c.stratum, 2);
        assert!((c.root_dispersion.to_seconds() - 0.0025).abs() < 1e-4);
        assert_eq!(c.reference_timestamp, NtpTimestamp(7));
        for (bit, leap) in [
            (STA_INS, LeapIndicator::InsertSecond),
            (STA_DEL, LeapIndicator::DeleteSecond),
        ] {
            let k = KernelState {
                status: bit,
                ..SYNCED
            };
            assert_eq!(
                server_clock(Some(&k), &policy(false), NtpTimestamp(7)).leap,
                leap
            );
        }
    }

    #[test]
    fn local_reference_ignores_unsync_but_keeps_leap_warnings() {
        let mut p = policy(true);
        p.stratum = 1;
        p.reference_id = *b"LOCL";
        let s = server_clock(Some(&UNSYNCED), &p, NtpTimestamp(1));
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.stratum, 1);
        assert_eq!(&s.reference_id, b"LOCL");
        assert!((s.root_dispersion.to_seconds() - 2f64.powi(-20)).abs() < 1e-4);
        let ins = KernelState {
            status: STA_INS,
            ..SYNCED
        };
        assert_eq!(
            server_clock(Some(&ins), &p, NtpTimestamp(1)).leap,
            LeapIndicator::InsertSecond
        );
    }
}
