//! The discipline's parameters and their defaults.

/// Discipline parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisciplineConfig {
    /// Offsets beyond this (seconds) are stepped during the first `step_limit` updates.
    pub step_threshold: f64,
    /// How many clock updates may step (0: never step).
    pub step_limit: u32,
    /// Offsets beyond this (seconds) are refused; None accepts any offset.
    pub panic_threshold: Option<f64>,
    /// Limit of the frequency correction, slew included (ppm). Linux allows 500.
    pub max_frequency_ppm: f64,
    /// Fastest slew of an offset (ppm of frequency on top of the base).
    pub max_slew_ppm: f64,
    /// Shortest time over which an offset is slewed (seconds).
    pub min_slew_duration: f64,
    /// Assumed random-walk frequency noise of the local oscillator: the
    /// frequency's variance grows by this many (s/s)² per second. 1e-18 is
    /// about 0.03 ppm of wander per 1000 s, a PC crystal in a quiet room.
    pub wander: f64,
    /// Assumed white frequency noise of the local oscillator (s²/s).
    pub phase_noise: f64,
    /// The frequency correction already in force at start (ppm), e.g. from a drift file.
    pub initial_frequency_ppm: f64,
    /// How far off that may be (ppm, one standard deviation).
    pub initial_frequency_uncertainty_ppm: f64,
    /// Poll interval bounds, as log2 seconds.
    pub min_poll: i8,
    pub max_poll: i8,
    /// Updates that must agree before the poll interval changes.
    pub poll_hold: i32,
    /// The poll interval lengthens while free-running for twice the interval
    /// would add less than (this ratio × one round's measurement noise) of
    /// offset error.
    pub poll_error_ratio: f64,
    /// Innovations beyond this many standard deviations are outliers.
    pub outlier_gate: f64,
    /// This many outliers in a row are accepted as a real change.
    pub outlier_limit: u32,
    /// Compute everything, command nothing.
    pub observe_only: bool,
}

impl Default for DisciplineConfig {
    fn default() -> Self {
        Self {
            step_threshold: 0.1,
            step_limit: 3,
            panic_threshold: Some(1000.0),
            max_frequency_ppm: 500.0,
            max_slew_ppm: 500.0,
            min_slew_duration: 1.0,
            wander: 1e-18,
            phase_noise: 1e-18,
            initial_frequency_ppm: 0.0,
            initial_frequency_uncertainty_ppm: 200.0,
            min_poll: 4,
            max_poll: 10,
            poll_hold: 8,
            poll_error_ratio: 0.25,
            outlier_gate: 5.0,
            outlier_limit: 3,
            observe_only: false,
        }
    }
}
