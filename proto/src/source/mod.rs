//! The client's sources: one configured server (NTS or plain NTP) each, as
//! a sans-IO state machine the agent's async shell only drives.
//!
//! - [`driver`]: [`Source`], the whole source: its poll schedule and one
//!   timer table, kiss policy, address rotation, interleaved state, and the
//!   quinn-style interface (`poll_timeout`, `handle_timeout`, `poll_action`,
//!   `handle_datagram`, `handle_key_exchange`, `handle_resolved`).
//! - [`nts`]: the NTS half ([`NtsSource`]): keys, the FIFO cookie jar, the
//!   NAK rule of RFC 8915 section 5.7 and the decision to re-key.
//! - [`action`]: what a source asks its shell to do; [`measurement`]: what
//!   an accepted answer measured (offset, delay, synchronization: once).
//! - [`judge`]: the one mapping from a response check to what to do with it.
//! - [`kiss`], [`addresses`], [`timers`]: the pieces both kinds share.
//! - [`saved`]: the association kept across restarts.
//! - `harness` (tests and the `sim` feature): a deterministic world of
//!   client, KE server and time server with a hostile simulated network.

pub mod action;
pub mod addresses;
pub mod driver;
#[cfg(any(test, feature = "sim"))]
pub mod harness;
pub mod judge;
pub mod kiss;
pub mod measurement;
pub mod nts;
pub mod saved;
#[cfg(any(test, feature = "sim"))]
pub mod sim_world;
pub mod timers;

#[cfg(test)]
mod tests;

pub use action::{Action, Event, KeyExchangeResult};
pub use addresses::{interleave_families, usable_server_addresses, AddressBook, OwnHost};
pub use driver::{Source, SourceConfig};
pub use judge::{Ignored, Judgement};
pub use kiss::{KissAction, KissPolicy};
pub use measurement::{Measurement, Unusable, LOCAL_PRECISION};
pub use nts::{
    Association, InFlight, NtsSource, NtsSourceConfig, RekeyReason, SourceCounters, Step,
    Transition, Verdict, DEFAULT_JAR_SIZE,
};
pub use saved::{SavedAssociation, SavedError};
