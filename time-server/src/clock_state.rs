//! What the server announces about its clock, taken from the kernel's NTP
//! state (`adjtimex` with no modes: read-only). A server never claims a
//! synchronization the kernel does not have, unless configured as a local
//! reference.

use crate::config::ClockSection;
use nts_proto::ntp_packet::{LeapIndicator, NtpShort, NtpTimestamp};
use nts_proto::ntp_server::ServerClock;

const STA_INS: i32 = 0x0010;
const STA_DEL: i32 = 0x0020;
const STA_UNSYNC: i32 = 0x0040;
/// adjtimex return value meaning the clock is not synchronized.
const TIME_ERROR: i32 = 5;

/// The parts of `struct timex` this server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelState {
    /// adjtimex return value (TIME_OK, TIME_INS, ..., TIME_ERROR).
    pub state: i32,
    pub status: i32,
    /// Maximum error in microseconds (the sync daemon keeps it near the root distance).
    pub maxerror_us: i64,
    pub esterror_us: i64,
}

/// Read the kernel state without changing anything (modes = 0).
pub fn read_kernel() -> std::io::Result<KernelState> {
    // SAFETY: timex is plain data; zeroed means modes = 0, a pure read.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex with modes 0 only fills in `tx`.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(KernelState {
        state,
        status: tx.status,
        maxerror_us: tx.maxerror,
        esterror_us: tx.esterror,
    })
}

/// Environment variable naming a file that replaces the kernel as the source
/// of the clock state. A TEST HOOK: end-to-end tests flip the file to make a
/// server's clock unsynchronized without touching the real clock. The file
/// holds `synchronized` or `unsynchronized`; anything else reads as an error
/// (announced as unsynchronized). Never set it in production.
pub const TEST_CLOCK_STATE_ENV: &str = "NTS_TIME_SERVER_TEST_CLOCK_STATE_FILE";

/// Parse the test hook's file (see [`TEST_CLOCK_STATE_ENV`]).
pub fn parse_test_state(text: &str) -> std::io::Result<KernelState> {
    match text.trim() {
        "synchronized" => Ok(KernelState {
            state: 0,
            status: 0x0001, // STA_PLL
            maxerror_us: 1000,
            esterror_us: 10,
        }),
        "unsynchronized" => Ok(KernelState {
            state: TIME_ERROR,
            status: STA_UNSYNC,
            maxerror_us: 16_000_000,
            esterror_us: 16_000_000,
        }),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("clock state test file: {other:?} is neither synchronized nor unsynchronized"),
        )),
    }
}

/// Where the clock state comes from: the kernel (read-only adjtimex), or the
/// test hook's file when [`TEST_CLOCK_STATE_ENV`] is set.
#[derive(Debug, Clone)]
pub enum ClockStateSource {
    Kernel,
    TestFile(std::path::PathBuf),
}

impl ClockStateSource {
    /// The kernel, unless the test hook's variable is set.
    pub fn from_env() -> Self {
        match std::env::var_os(TEST_CLOCK_STATE_ENV) {
            Some(p) if !p.is_empty() => Self::TestFile(p.into()),
            _ => Self::Kernel,
        }
    }

    pub fn read(&self) -> std::io::Result<KernelState> {
        match self {
            Self::Kernel => read_kernel(),
            Self::TestFile(p) => parse_test_state(&std::fs::read_to_string(p)?),
        }
    }
}

/// Is the kernel clock synchronized?
pub fn kernel_synchronized(k: &KernelState) -> bool {
    k.status & STA_UNSYNC == 0 && k.state != TIME_ERROR
}

/// The clock fields of every response, from the kernel state and configuration.
pub fn server_clock(
    kernel: Option<&KernelState>,
    cfg: &ClockSection,
    reference_id: [u8; 4],
    precision: i8,
    now: NtpTimestamp,
) -> ServerClock {
    let leap_from = |k: &KernelState| {
        if k.status & STA_INS != 0 {
            LeapIndicator::InsertSecond
        } else if k.status & STA_DEL != 0 {
            LeapIndicator::DeleteSecond
        } else {
            LeapIndicator::NoWarning
        }
    };
    if cfg.local_reference {
        return ServerClock {
            leap: kernel.map_or(LeapIndicator::NoWarning, leap_from),
            stratum: cfg.stratum,
            precision,
            root_delay: NtpShort::from_seconds(cfg.root_delay),
            // This host is the reference: its error is its own precision, not the kernel's guess.
            root_dispersion: NtpShort::from_seconds(2f64.powi(precision as i32)),
            reference_id,
            reference_timestamp: now,
        };
    }
    match kernel {
        Some(k) if kernel_synchronized(k) => ServerClock {
            leap: leap_from(k),
            stratum: cfg.stratum,
            precision,
            root_delay: NtpShort::from_seconds(cfg.root_delay),
            // The sync daemon sets maxerror to its root distance and the kernel grows it
            // by 500 ppm of elapsed time: the honest bound on our error.
            root_dispersion: NtpShort::from_seconds(k.maxerror_us.max(0) as f64 * 1e-6),
            reference_id,
            reference_timestamp: now,
        },
        _ => ServerClock::unsynchronized(precision),
    }
}

/// Precision of the system clock as log2 seconds: the smallest step seen between two reads.
pub fn measure_precision() -> i8 {
    let mut best = u64::MAX;
    let mut last = now_nanos();
    for _ in 0..1000 {
        let t = now_nanos();
        if t > last {
            best = best.min(t - last);
        }
        last = t;
    }
    let secs = (best.max(1) as f64) * 1e-9;
    secs.log2().floor().clamp(-32.0, 0.0) as i8
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The current time as an NTP timestamp.
pub fn now_ntp() -> NtpTimestamp {
    let n = now_nanos();
    NtpTimestamp::from_unix(n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(local: bool) -> ClockSection {
        ClockSection {
            local_reference: local,
            ..Default::default()
        }
    }

    const SYNCED: KernelState = KernelState {
        state: 0,
        status: 0x2001,
        maxerror_us: 2500,
        esterror_us: 10,
    };

    #[test]
    fn unsynchronized_kernel_means_alarm() {
        let k = KernelState {
            state: TIME_ERROR,
            status: STA_UNSYNC,
            maxerror_us: 16_000_000,
            esterror_us: 16_000_000,
        };
        let c = server_clock(Some(&k), &cfg(false), *b"KERN", -20, NtpTimestamp(1));
        assert_eq!(c.leap, LeapIndicator::Unsynchronized);
        assert_eq!(c.stratum, 16);
        let c = server_clock(None, &cfg(false), *b"KERN", -20, NtpTimestamp(1));
        assert_eq!(c.leap, LeapIndicator::Unsynchronized);
    }

    #[test]
    fn synchronized_kernel_follows_its_state() {
        let c = server_clock(Some(&SYNCED), &cfg(false), *b"KERN", -20, NtpTimestamp(7));
        assert_eq!(c.leap, LeapIndicator::NoWarning);
        assert_eq!(c.stratum, 2);
        assert!((c.root_dispersion.to_seconds() - 0.0025).abs() < 1e-4);
        assert_eq!(c.reference_timestamp, NtpTimestamp(7));
        let ins = KernelState {
            status: STA_INS,
            ..SYNCED
        };
        assert_eq!(
            server_clock(Some(&ins), &cfg(false), *b"KERN", -20, NtpTimestamp(7)).leap,
            LeapIndicator::InsertSecond
        );
        let del = KernelState {
            status: STA_DEL,
            ..SYNCED
        };
        assert_eq!(
            server_clock(Some(&del), &cfg(false), *b"KERN", -20, NtpTimestamp(7)).leap,
            LeapIndicator::DeleteSecond
        );
    }

    #[test]
    fn local_reference_ignores_unsync() {
        let k = KernelState {
            state: TIME_ERROR,
            status: STA_UNSYNC,
            maxerror_us: 16_000_000,
            esterror_us: 0,
        };
        let mut c = cfg(true);
        c.stratum = 1;
        let s = server_clock(Some(&k), &c, *b"LOCL", -20, NtpTimestamp(1));
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.stratum, 1);
        assert_eq!(&s.reference_id, b"LOCL");
    }

    #[test]
    fn test_hook_states() {
        let s = parse_test_state("synchronized\n").unwrap();
        assert!(kernel_synchronized(&s));
        let u = parse_test_state("unsynchronized").unwrap();
        assert!(!kernel_synchronized(&u));
        assert!(parse_test_state("maybe").is_err());
        let c = server_clock(Some(&u), &cfg(false), *b"KERN", -20, NtpTimestamp(1));
        assert_eq!(c.leap, LeapIndicator::Unsynchronized);
    }

    #[test]
    fn reads_are_read_only_and_sane() {
        let k = read_kernel().unwrap();
        assert!(k.state >= 0);
        let p = measure_precision();
        assert!((-32..=0).contains(&p));
        assert!(now_ntp().seconds() > 0);
    }
}
