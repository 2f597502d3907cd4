//! The clock the agent disciplines, and the commands it issues.
//!
//! The trait is small on purpose: it is what `clock_adjtime(2)` on Linux
//! offers in *frequency-only* control, which is how the agent slews (see
//! `docs/clock-discipline.md`: the kernel PLL is never enabled, so it cannot
//! fight the agent's own loop). How each method maps onto
//! `clock_adjtime(CLOCK_REALTIME, &mut timex)`:
//!
//! | method | `timex.modes` and fields |
//! | --- | --- |
//! | [`Clock::now`] | `clock_gettime(CLOCK_REALTIME)` (or the socket's receive timestamp), as an NTP timestamp |
//! | [`Clock::step`] | `ADJ_SETOFFSET \| ADJ_NANO`, `time` = the offset (seconds and nanoseconds, the nanoseconds always non-negative) |
//! | [`Clock::set_frequency`] | `ADJ_FREQUENCY`, `freq` = ppm × 65536 (the kernel refuses beyond ±500 ppm); also clear `STA_PLL` and `STA_FLL` once with `ADJ_STATUS` so the kernel PLL stays off |
//! | [`Clock::frequency`] | `modes = 0`, `freq / 65536` |
//! | [`Clock::set_sync_status`] | `ADJ_STATUS` (clear or set `STA_UNSYNC`), `ADJ_MAXERROR` and `ADJ_ESTERROR` in microseconds |
//! | [`Clock::sync_status`] | `modes = 0`: `status & STA_UNSYNC`, `maxerror`, `esterror` (the return value `TIME_ERROR` also means unsynchronized) |
//! | [`Clock::set_leap`] | `ADJ_STATUS`: set `STA_INS` or `STA_DEL` (or neither), keeping the other status bits; the kernel inserts or deletes the second at the end of that UTC day by itself |
//!
//! A positive frequency makes the clock run faster; a positive step moves it
//! forward. Sending the status on every update also restarts the kernel's
//! own growth of `maxerror` (500 µs per second), after which the kernel marks
//! the clock unsynchronized by itself if the agent goes quiet.

use super::leap::LeapStatus;
use crate::ntp_packet::NtpTimestamp;

/// The kernel's view of synchronization, as the agent last set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncStatus {
    /// Whether the clock is synchronized (clears `STA_UNSYNC`).
    pub synchronized: bool,
    /// Maximum error bound in seconds (`maxerror`): the root distance.
    pub max_error: f64,
    /// Estimated error in seconds (`esterror`).
    pub est_error: f64,
}

impl SyncStatus {
    /// What the kernel says before anyone synchronizes it.
    pub const UNSYNCHRONIZED: Self = Self {
        synchronized: false,
        max_error: 16.0,
        est_error: 16.0,
    };
}

/// A clock the agent can read and correct.
pub trait Clock {
    type Error: core::fmt::Debug;

    /// Read the clock being disciplined.
    fn now(&self) -> Result<NtpTimestamp, Self::Error>;

    /// Move the clock by `offset` seconds at once (positive: forward).
    fn step(&mut self, offset: f64) -> Result<(), Self::Error>;

    /// Set the frequency correction to `ppm` parts per million (positive:
    /// faster). This replaces the previous correction; it does not add to it.
    fn set_frequency(&mut self, ppm: f64) -> Result<(), Self::Error>;

    /// The frequency correction in force, in ppm.
    fn frequency(&self) -> Result<f64, Self::Error>;

    /// Tell the kernel whether it is synchronized and how well.
    fn set_sync_status(&mut self, status: &SyncStatus) -> Result<(), Self::Error>;

    /// What the kernel says about synchronization now.
    fn sync_status(&self) -> Result<SyncStatus, Self::Error>;

    /// Tell the kernel to insert or delete a second at the end of the
    /// current UTC day, or neither (which also re-arms it after a leap).
    fn set_leap(&mut self, leap: LeapStatus) -> Result<(), Self::Error>;
}

/// What the agent wants done to the clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClockCommand {
    /// Step the clock by `offset` seconds ([`Clock::step`]). Only at start-up.
    Step { offset: f64 },
    /// Set the frequency correction ([`Clock::set_frequency`]). While a slew
    /// is in progress this is the base frequency plus the slew rate; the
    /// agent sends the base frequency again when the slew ends (call
    /// [`Agent::tick`](super::Agent::tick) at
    /// [`Agent::next_deadline`](super::Agent::next_deadline)).
    SetFrequency { ppm: f64 },
    /// Set the kernel's synchronization status ([`Clock::set_sync_status`]).
    SetSyncStatus(SyncStatus),
    /// The offset is beyond the panic threshold: the agent refuses to touch
    /// the clock. The shell should log this loudly (ntpd exits); the agent
    /// keeps measuring and says so again on each update.
    Panic { offset: f64, threshold: f64 },
    /// Set the kernel's leap flag ([`Clock::set_leap`]): sent on the last
    /// day of a month when a leap is due at its end, and `None` again a
    /// couple of seconds after that midnight. Only in discipline mode.
    SetLeap(LeapStatus),
}

/// Carry out one command. [`ClockCommand::Panic`] does nothing here: what to
/// do about it (log, exit, alert) is the shell's decision.
pub fn apply_command<C: Clock + ?Sized>(clock: &mut C, cmd: &ClockCommand) -> Result<(), C::Error> {
    match *cmd {
        ClockCommand::Step { offset } => clock.step(offset),
        ClockCommand::SetFrequency { ppm } => clock.set_frequency(ppm),
        ClockCommand::SetSyncStatus(ref s) => clock.set_sync_status(s),
        ClockCommand::SetLeap(leap) => clock.set_leap(leap),
        ClockCommand::Panic { .. } => Ok(()),
    }
}
