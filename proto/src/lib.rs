//! Sans-IO core of the NTS (RFC 8915) stack: every byte that crosses the wire
//! is parsed, built, sealed or opened here, with no sockets, clocks or async
//! runtime. Callers pass in time and randomness; parsers return typed errors
//! on any input and never panic.
//!
//! No `unsafe` here, ever: everything a wire byte touches is safe Rust.
#![forbid(unsafe_code)]

pub mod admission;
pub mod aead;
pub mod client_prefix;
pub mod clock;
pub mod cookie;
pub mod extension_field;
pub mod health;
pub mod interleaved;
pub mod ke_answer;
pub mod ke_client;
pub mod ke_discovery;
pub mod ke_record;
pub mod ke_server;
pub mod key_agreement;
pub mod key_merge;
pub mod key_ring;
#[cfg(feature = "grpc")]
pub mod key_sync;
pub mod key_sync_report;
pub mod ntp_client;
pub mod ntp_packet;
pub mod ntp_server;
pub mod nts_fields;
pub mod placement;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod server_clock;
mod siv;
pub mod source;
pub mod time;
