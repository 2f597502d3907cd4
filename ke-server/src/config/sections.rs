//! The plain sections of the KE server configuration and their defaults.

use nts_proto::key_ring::KeySchedule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySyncSection {
    /// TCP address of the gRPC service.
    pub listen: SocketAddr,
    /// CA whose certificates time servers must present.
    pub client_ca: PathBuf,
    /// This service's certificate chain and key (PEM).
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// Seconds between the load reports time servers send.
    #[serde(default = "default_report_interval")]
    pub report_interval: f64,
    /// Seconds without a report after which a time server is no longer offered to clients.
    #[serde(default = "default_expiry")]
    pub expiry: f64,
    /// How Server Negotiation picks among live time servers.
    #[serde(default = "default_selection")]
    pub selection: crate::registry::Selection,
    /// TLS handshakes on the key-sync listener running at once; more connections are closed.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Handshakes one client address (per `server.ipv4_prefix_length` /
    /// `ipv6_prefix_length`) may run at once; its oldest is closed for a newer one.
    /// Absent: 8, or `max_handshakes` when that is smaller.
    #[serde(default)]
    pub max_handshakes_per_address: Option<usize>,
    /// Seconds a peer has to complete the TLS handshake.
    #[serde(default = "default_key_sync_handshake_timeout")]
    pub handshake_timeout: f64,
    /// Source networks allowed to connect (empty: any); others are closed before TLS.
    #[serde(default)]
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// HTTP/2 streams (RPCs) one authenticated connection may have open at once.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// Time servers one certificate name may have registered at once.
    #[serde(default = "default_max_registrations_per_certificate")]
    pub max_registrations_per_certificate: usize,
    /// Networks whose IP literals time servers may advertise (besides their
    /// certificate's own IP names); with `advertise_domains` empty too: any.
    #[serde(default)]
    pub advertise_networks: Vec<ipnet::IpNet>,
    /// DNS names (and names under them) time servers may advertise.
    #[serde(default)]
    pub advertise_domains: Vec<String>,
    /// SHA-256 fingerprints of time-server certificates that get nothing.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
}

pub(super) fn default_max_registrations_per_certificate() -> usize {
    4
}

pub(super) fn default_max_handshakes() -> usize {
    64
}
/// Key-sync handshakes per client address when `max_handshakes_per_address` is absent.
pub(super) const DEFAULT_HANDSHAKES_PER_ADDRESS: usize = 8;
/// NTS-KE connections per client address when `max_connections_per_address` is absent.
pub(super) const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 16;
pub(super) fn default_key_sync_handshake_timeout() -> f64 {
    5.0
}
pub(super) fn default_max_streams_per_connection() -> u32 {
    16
}

pub(super) fn default_report_interval() -> f64 {
    5.0
}
pub(super) fn default_expiry() -> f64 {
    15.0
}
pub(super) fn default_selection() -> crate::registry::Selection {
    crate::registry::Selection::RoundRobin
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Addresses to accept NTS-KE connections on.
    pub listen: Vec<SocketAddr>,
    /// Connections handled at once. When all are taken, a new connection
    /// closes the oldest of the client address holding the most.
    pub max_connections: usize,
    /// Connections one client address may hold at once; its oldest is closed
    /// for a newer one. Absent: 16, or `max_connections` when that is smaller.
    pub max_connections_per_address: Option<usize>,
    /// Client addresses that count as one for the per-address limits: IPv4 per this prefix length.
    pub ipv4_prefix_length: u8,
    /// IPv6 per this prefix length (one host can use any address of its /64).
    pub ipv6_prefix_length: u8,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most records in one request.
    pub max_request_records: usize,
    /// Seconds allowed for the TLS handshake.
    pub handshake_timeout: f64,
    /// Seconds allowed, after the handshake, to receive the request and send the response.
    pub request_timeout: f64,
    /// Seconds a replica keeps serving after SIGTERM, not ready, so clients
    /// still sent to it while the load balancer catches up are answered
    /// (0: stop accepting at once; the chart sets it for Kubernetes).
    pub drain_delay: f64,
    /// New connections allowed per client address (IPv6: per /64) per minute; 0 turns the limit off.
    pub connections_per_minute: u32,
    /// Slots in the rate limiter's fixed-size table.
    pub rate_limit_slots: usize,
    /// Load balancers whose connections open with a PROXY protocol (v1 or v2)
    /// header naming the client; empty: PROXY protocol off.
    pub proxy_trusted_networks: Vec<ipnet::IpNet>,
    /// User to switch to after binding (when started as root).
    pub user: Option<String>,
    /// Group to switch to (default: the user's primary group).
    pub group: Option<String>,
    /// Confine the process to its seccomp allow-list after start-up (off: for debugging).
    pub seccomp: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["[::]:4460".parse().expect("valid literal")],
            max_connections: 1024,
            max_connections_per_address: None,
            ipv4_prefix_length: 32,
            ipv6_prefix_length: 64,
            max_request_bytes: 1024,
            max_request_records: 64,
            handshake_timeout: 5.0,
            request_timeout: 5.0,
            drain_delay: 0.0,
            connections_per_minute: 120,
            rate_limit_slots: 65_536,
            proxy_trusted_networks: Vec::new(),
            user: None,
            group: None,
            seccomp: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first.
    pub certificate_chain: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Seconds between checks of the files for a renewed certificate.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: f64,
}

pub(super) fn default_reload_interval() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NtpSection {
    /// Host name or address clients should send NTP to (Server Negotiation). Without
    /// `[key_sync]`, unset means the KE host itself (no record sent). With `[key_sync]`
    /// it is the explicit fallback used when no registered time server is alive;
    /// unset: no fallback (key exchanges fail and /readyz says not ready).
    pub server: Option<String>,
    /// UDP port clients should send NTP to (Port Negotiation); unset: 123.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieKeysSection {
    /// File holding the 32-byte root secret (64 hex digits), mode 0600.
    pub root_secret_file: PathBuf,
    /// Create `root_secret_file` (mode 0600) when it does not exist; otherwise a
    /// missing file stops start-up (a typo must not yield a second secret).
    #[serde(default)]
    pub create_if_missing: bool,
    /// Seconds per key epoch.
    #[serde(default = "default_rotation")]
    pub rotation_period: u64,
    /// Epochs after its own during which a key still opens cookies.
    #[serde(default = "default_past_epochs")]
    pub past_epochs: u32,
    /// AEAD algorithms offered to clients.
    #[serde(default = "default_algorithms")]
    pub aead_algorithms: Vec<String>,
}

pub(super) fn default_rotation() -> u64 {
    KeySchedule::default().rotation_period
}
pub(super) fn default_past_epochs() -> u32 {
    KeySchedule::default().past_epochs
}
pub(super) fn default_algorithms() -> Vec<String> {
    vec!["AES-SIV-CMAC-256".into(), "AES-SIV-CMAC-512".into()]
}
