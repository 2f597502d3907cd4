//! Where the server's clock state comes from: the kernel's NTP state
//! (`adjtimex` with no modes: read-only) or the test hook's file, and the
//! system clock reads. What it announces from that state is decided in
//! [`nts_proto::server_clock`].

use crate::config::ClockSection;
use nts_proto::ntp_packet::NtpTimestamp;
use nts_proto::ntp_server::ServerClock;
use nts_proto::server_clock::{ClockPolicy, STA_UNSYNC, TIME_ERROR};
use nts_proto::time::Seconds;

pub use nts_proto::server_clock::{kernel_synchronized, KernelState};

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

/// The clock fields of every response: [`nts_proto::server_clock::server_clock`]
/// with the configured policy.
pub fn server_clock(
    kernel: Option<&KernelState>,
    cfg: &ClockSection,
    reference_id: [u8; 4],
    precision: i8,
    now: NtpTimestamp,
) -> ServerClock {
    let policy = ClockPolicy {
        local_reference: cfg.local_reference,
        stratum: cfg.stratum,
        root_delay: Seconds::new(cfg.root_delay),
        reference_id,
        precision,
    };
    nts_proto::server_clock::server_clock(kernel, &policy, now)
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
    use nts_proto::ntp_packet::LeapIndicator;

    fn cfg(local: bool) -> ClockSection {
        ClockSection {
            local_reference: local,
            ..Default::default()
        }
    }

    #[test]
    fn configuration_reaches_the_policy() {
        let mut c = cfg(true);
        c.stratum = 1;
        c.root_delay = 0.5;
        let u = parse_test_state("unsynchronized").unwrap();
        let s = server_clock(Some(&u), &c, *b"LOCL", -20, NtpTimestamp(1));
        assert_eq!(s.leap, LeapIndicator::NoWarning);
        assert_eq!(s.stratum, 1);
        assert_eq!(&s.reference_id, b"LOCL");
        assert!((s.root_delay.to_seconds() - 0.5).abs() < 1e-3);
        let s = server_clock(Some(&u), &cfg(false), *b"KERN", -20, NtpTimestamp(1));
        assert_eq!(s.leap, LeapIndicator::Unsynchronized);
    }

    #[test]
    fn test_hook_states() {
        let s = parse_test_state("synchronized\n").unwrap();
        assert!(kernel_synchronized(&s));
        let u = parse_test_state("unsynchronized").unwrap();
        assert!(!kernel_synchronized(&u));
        assert!(parse_test_state("maybe").is_err());
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
