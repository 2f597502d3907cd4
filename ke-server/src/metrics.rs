//! Counters an operator watches on an NTS-KE server.

use nts_ops::metrics::{Counter, Exposition, Gauge};
use nts_proto::admission::Eviction;

/// Why a connection was closed without a normal response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    HandshakeTimeout,
    HandshakeFailed,
    NoAlpn,
    RequestTimeout,
    ClosedEarly,
    WriteFailed,
}

impl CutOff {
    const ALL: [CutOff; 6] = [
        Self::HandshakeTimeout,
        Self::HandshakeFailed,
        Self::NoAlpn,
        Self::RequestTimeout,
        Self::ClosedEarly,
        Self::WriteFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::NoAlpn => "no_alpn",
            Self::RequestTimeout => "request_timeout",
            Self::ClosedEarly => "closed_early",
            Self::WriteFailed => "write_failed",
        }
    }
}

/// What became of a connection at the PROXY protocol step (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyResult {
    /// A trusted balancer's header named the client.
    Accepted,
    /// A trusted balancer's header named no client (v2 LOCAL, UNSPEC, v1 UNKNOWN):
    /// its own address is used.
    Local,
    /// A trusted balancer's connection did not open with a header.
    Missing,
    Malformed,
    /// The trusted balancer closed inside the header.
    Truncated,
    /// No complete header from a trusted balancer within `server.handshake_timeout`.
    Timeout,
    /// A header (or its first octets) from a peer outside `server.proxy_trusted_networks`.
    Untrusted,
    /// `server.max_connections` headers were being read already.
    Overloaded,
}

impl ProxyResult {
    const ALL: [ProxyResult; 8] = [
        Self::Accepted,
        Self::Local,
        Self::Missing,
        Self::Malformed,
        Self::Truncated,
        Self::Timeout,
        Self::Untrusted,
        Self::Overloaded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Local => "local",
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::Timeout => "timeout",
            Self::Untrusted => "untrusted",
            Self::Overloaded => "overloaded",
        }
    }
}

/// Why key sync refused a registration, report or watch (metric labels).
pub const REFUSALS: [&str; 4] = ["identity", "address", "revoked", "limit"];

/// Labels of request errors, as returned by `RequestError::reason`.
const REQUEST_ERRORS: [&str; 4] = [
    "unrecognized_critical",
    "bad_request",
    "too_large",
    "too_many_records",
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: Counter,
    pub refused_rate_limited: Counter,
    /// Connections closed to make room for a newer one: [prefix full, table full].
    evicted: [Counter; 2],
    pub active_connections: Gauge,
    /// 1 from SIGTERM on: not ready, serving until `server.drain_delay` ends.
    pub draining: Gauge,
    cut_off: [Counter; 6],
    proxy_headers: [Counter; 8],
    request_errors: [Counter; 4],
    pub internal_errors: Counter,
    pub key_exchanges_ok: Counter,
    pub no_common_protocol: Counter,
    pub no_common_algorithm: Counter,
    pub cookies_issued: Counter,
    pub cert_reloads_ok: Counter,
    pub cert_reloads_failed: Counter,
    pub current_key_id: Gauge,
    pub key_sync_connections: Counter,
    pub key_sync_refused: Counter,
    /// Key-sync handshakes closed to make room for a newer one: [prefix full, table full].
    key_sync_evicted: [Counter; 2],
    /// Key-sync handshakes running now.
    pub key_sync_handshakes: Gauge,
    /// Key-sync connections closed before TLS: source outside `key_sync.allowed_networks`.
    pub key_sync_not_allowed: Counter,
    /// Refused registrations, reports and watches, by [`REFUSALS`].
    registrations_refused: [Counter; 4],
    pub key_watchers: Gauge,
    pub key_sets_sent: Counter,
    pub negotiated_registered: Counter,
    pub negotiated_fallback: Counter,
    /// Key exchanges refused: key sync has no live time server and no fallback is configured.
    pub negotiated_none: Counter,
    /// Not-after of the ACME certificate in service, Unix seconds (0: none).
    pub acme_cert_expiry: Gauge,
    pub acme_renewals_ok: Counter,
    pub acme_renewals_failed: Counter,
    pub acme_consecutive_failures: Gauge,
    pub acme_orders: Counter,
    pub acme_bad_nonce_retries: Counter,
    pub acme_cache_loads: Counter,
    pub acme_tls_alpn_answers: Counter,
    pub acme_http01_answers: Counter,
}

fn eviction_index(why: Eviction) -> usize {
    match why {
        Eviction::PrefixFull => 0,
        Eviction::TableFull => 1,
    }
}

impl Metrics {
    /// Count an NTS-KE connection closed to make room for a newer one.
    pub fn evicted(&self, why: Eviction) {
        self.evicted[eviction_index(why)].inc();
    }

    /// Count a key-sync handshake closed to make room for a newer one.
    pub fn key_sync_evicted(&self, why: Eviction) {
        self.key_sync_evicted[eviction_index(why)].inc();
    }

    pub fn cut_off(&self, why: CutOff) {
        self.cut_off[why as usize].inc();
    }

    pub fn proxy_header(&self, result: ProxyResult) {
        self.proxy_headers[result as usize].inc();
    }

    pub fn cut_off_count(&self, why: CutOff) -> u64 {
        self.cut_off[why as usize].get()
    }

    /// Count a refused registration, report or watch by its [`REFUSALS`] label.
    pub fn registration_refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.registrations_refused[i].inc();
        }
    }

    pub fn request_error(&self, reason: &str) {
        if let Some(i) = REQUEST_ERRORS.iter().position(|r| *r == reason) {
            self.request_errors[i].inc();
        }
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "nts_ke_connections_accepted_total",
            "TCP connections accepted for NTS-KE.",
            self.connections_accepted.get(),
        );
        e.counters(
            "nts_ke_connections_refused_total",
            "Connections closed at once, by reason.",
            &[(
                &[("reason", "rate_limited")],
                self.refused_rate_limited.get(),
            )],
        );
        e.counters(
            "nts_ke_connections_evicted_total",
            "Connections closed to make room for a newer one: their address held server.max_connections_per_address (prefix_full), or every slot was taken and their address held the most (table_full).",
            &[
                (&[("reason", Eviction::PrefixFull.label())], self.evicted[0].get()),
                (&[("reason", Eviction::TableFull.label())], self.evicted[1].get()),
            ],
        );
        e.gauge(
            "nts_ke_draining",
            "1 after SIGTERM: not ready, still serving for server.drain_delay, then finishing the connections in flight.",
            self.draining.get(),
        );
        e.gauge(
            "nts_ke_active_connections",
            "Connections being served now.",
            self.active_connections.get(),
        );
        e.counters_by(
            "nts_ke_connections_cut_off_total",
            "Connections closed without a response, by reason.",
            "reason",
            CutOff::ALL.map(|c| (c.label(), self.cut_off_count(c))),
        );
        e.counters_by(
            "nts_ke_proxy_headers_total",
            "PROXY protocol on the NTS-KE listener, by result (see docs/ke-server.md, Behind a load balancer).",
            "result",
            ProxyResult::ALL.map(|r| (r.label(), self.proxy_headers[r as usize].get())),
        );
        e.counters_by(
            "nts_ke_request_errors_total",
            "Requests answered with an Error record, by reason.",
            "reason",
            REQUEST_ERRORS
                .iter()
                .zip(&self.request_errors)
                .map(|(r, c)| (*r, c.get())),
        );
        e.counter(
            "nts_ke_internal_errors_total",
            "Requests answered with Internal Server Error.",
            self.internal_errors.get(),
        );
        e.counter(
            "nts_ke_key_exchanges_total",
            "Successful key exchanges (cookies sent).",
            self.key_exchanges_ok.get(),
        );
        e.counters(
            "nts_ke_negotiation_failures_total",
            "Requests with nothing in common with this server.",
            &[
                (&[("what", "protocol")], self.no_common_protocol.get()),
                (&[("what", "aead")], self.no_common_algorithm.get()),
            ],
        );
        e.counter(
            "nts_ke_cookies_issued_total",
            "Cookies handed out.",
            self.cookies_issued.get(),
        );
        e.counters(
            "nts_ke_certificate_reloads_total",
            "Certificate reloads from disk, by result.",
            &[
                (&[("result", "ok")], self.cert_reloads_ok.get()),
                (&[("result", "failed")], self.cert_reloads_failed.get()),
            ],
        );
        e.gauge(
            "nts_ke_cookie_key_id",
            "Key id new cookies are sealed with.",
            self.current_key_id.get(),
        );
        e.counter(
            "nts_ke_key_sync_connections_total",
            "Key-sync (gRPC) connections that passed mutual TLS.",
            self.key_sync_connections.get(),
        );
        e.counter(
            "nts_ke_key_sync_refused_total",
            "Key-sync connections refused at the TLS handshake (no or untrusted client certificate).",
            self.key_sync_refused.get(),
        );
        e.counters(
            "nts_ke_key_sync_evicted_total",
            "Key-sync handshakes closed to make room for a newer one: their address held key_sync.max_handshakes_per_address (prefix_full), or key_sync.max_handshakes were running and their address held the most (table_full).",
            &[
                (&[("reason", Eviction::PrefixFull.label())], self.key_sync_evicted[0].get()),
                (&[("reason", Eviction::TableFull.label())], self.key_sync_evicted[1].get()),
            ],
        );
        e.gauge(
            "nts_ke_key_sync_handshakes_in_progress",
            "Key-sync TLS handshakes running now (unauthenticated peers).",
            self.key_sync_handshakes.get(),
        );
        e.counter(
            "nts_ke_key_sync_not_allowed_total",
            "Key-sync connections closed before TLS: source address outside key_sync.allowed_networks.",
            self.key_sync_not_allowed.get(),
        );
        e.counters_by(
            "nts_ke_key_sync_registrations_refused_total",
            "Key-sync registrations, reports and watches refused: identity (server_id not bound to the client certificate), address (unusable or not allowed), revoked (certificate listed in key_sync.revoked_certificates), limit (key_sync.max_registrations_per_certificate reached).",
            "reason",
            REFUSALS.iter().zip(&self.registrations_refused).map(|(r, c)| (*r, c.get())),
        );
        e.gauge(
            "nts_ke_key_watchers",
            "Time servers currently watching the key set.",
            self.key_watchers.get(),
        );
        e.counter(
            "nts_ke_key_sets_sent_total",
            "Key sets streamed to time servers.",
            self.key_sets_sent.get(),
        );
        e.counters(
            "nts_ke_server_negotiation_total",
            "Time server named in Server Negotiation: a registered one, the configured fallback, or none (refused with Internal Server Error).",
            &[
                (&[("source", "registry")], self.negotiated_registered.get()),
                (&[("source", "fallback")], self.negotiated_fallback.get()),
                (&[("source", "none")], self.negotiated_none.get()),
            ],
        );
        e.gauge(
            "nts_ke_acme_certificate_expiry_seconds",
            "ACME: expiry (not after) of the certificate in service, Unix seconds; 0 when none.",
            self.acme_cert_expiry.get(),
        );
        e.counters(
            "nts_ke_acme_renewals_total",
            "ACME: attempts to obtain a certificate (the first one included), by result.",
            &[
                (&[("result", "ok")], self.acme_renewals_ok.get()),
                (&[("result", "failed")], self.acme_renewals_failed.get()),
            ],
        );
        e.gauge(
            "nts_ke_acme_consecutive_failures",
            "ACME: failed attempts since the last success.",
            self.acme_consecutive_failures.get(),
        );
        e.counter(
            "nts_ke_acme_orders_total",
            "ACME: orders placed with the CA.",
            self.acme_orders.get(),
        );
        e.counter(
            "nts_ke_acme_bad_nonce_retries_total",
            "ACME: requests sent again after the CA refused their nonce (badNonce).",
            self.acme_bad_nonce_retries.get(),
        );
        e.counter(
            "nts_ke_acme_cache_loads_total",
            "ACME: certificates taken from the cache (at start, or renewed by another replica).",
            self.acme_cache_loads.get(),
        );
        e.counters(
            "nts_ke_acme_challenge_answers_total",
            "ACME: validation requests answered, by challenge type.",
            &[
                (&[("type", "tls-alpn-01")], self.acme_tls_alpn_answers.get()),
                (&[("type", "http-01")], self.acme_http01_answers.get()),
            ],
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family of the KE server's registry, and every `nts_ke_*` name in
    /// its sources (the families the endpoint adds for certificates, the root
    /// secret and the time-server registry included), is documented in
    /// docs/ke-server.md; adding a metric without documenting it fails here.
    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::default();
        m.cut_off(CutOff::NoAlpn);
        m.request_error("bad_request");
        m.registration_refused("identity");
        let text = m.render();
        assert!(
            text.contains("nts_ke_connections_cut_off_total{reason=\"no_alpn\"} 1\n"),
            "{text}"
        );
        let docs = include_str!("../../docs/ke-server.md");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let missing = nts_ops::metrics::missing_from_docs(&text, &src, "nts_ke_", docs);
        assert!(missing.is_empty(), "not in docs/ke-server.md: {missing:?}");
    }
}
