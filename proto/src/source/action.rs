//! What a source asks its shell to do, and the events the shell logs.

use super::nts::{Association, RekeyReason, Transition};
use super::saved::SavedAssociation;
use std::net::SocketAddr;
use std::time::Duration;

/// What the shell must do for a source.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send `datagram` to `to`, then hand every datagram that comes back to
    /// [`Source::handle_datagram`](super::Source::handle_datagram). This is a poll: tell the clock agent.
    Send { to: SocketAddr, datagram: Vec<u8> },
    /// Run NTS-KE with the source's KE server, then [`Source::handle_key_exchange`](super::Source::handle_key_exchange).
    KeyExchange,
    /// Resolve `host`, then [`Source::handle_resolved`](super::Source::handle_resolved).
    Resolve { host: String, port: u16 },
    /// Write the saved association (`None`: remove it). Only when keys or
    /// the cookie set changed enough to matter, never on every poll.
    Persist(Option<Box<SavedAssociation>>),
    /// The source moved to another time server: the clock agent forgets its samples.
    ForgetSamples,
    /// Something worth one log line.
    Note(Event),
    /// DENY or RSTR: this source sends nothing more.
    Stopped([u8; 4]),
}

/// Events the shell logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Transition(Transition),
    /// An NTS NAK was noted; the source waits for an authentic answer.
    NakNoted,
    /// A kiss that counts (authenticated for NTS).
    Kiss([u8; 4]),
    KeyExchangeDone {
        reason: Option<RekeyReason>,
        time_server_changed: bool,
        cookies: usize,
        after_failures: u32,
    },
    KeyExchangeFailed {
        error: String,
        retry_in: Duration,
        failures: u32,
    },
    ResolveFailed(String),
}

/// What NTS-KE gave the shell.
#[derive(Debug, Clone)]
pub struct KeyExchangeResult {
    pub association: Association,
    pub cookies: Vec<Vec<u8>>,
}
