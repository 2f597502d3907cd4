//! Readiness of each server role, decided from a typed snapshot of what the
//! role holds (never read back from its metrics): what `/readyz` answers and,
//! for a time server, what it reports to the KE replicas, which send clients
//! only to healthy time servers. The first reason that applies is given, in
//! the order an operator should fix them.

/// Why a role is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining: shutting down (SIGTERM)")]
    Draining,
    #[error("clock not synchronized")]
    Unsynchronized,
    #[error("no cookie keys yet")]
    NoCookieKeys,
    /// Most live time servers refuse this replica's key set (the reason says whose).
    #[error("{0}")]
    KeySetRefused(String),
    #[error("no live time server registered over key sync, and no ntp.server fallback")]
    NoTimeServer,
    #[error("no certificate yet (ACME)")]
    NoCertificate,
    #[error("no current cookie key")]
    NoCurrentKey,
}

/// What a time server's readiness depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeServerSnapshot {
    /// SIGTERM received: still answering, but clients should go elsewhere.
    pub draining: bool,
    /// Responses claim a synchronized clock (or this host is the local reference).
    pub synchronized: bool,
    /// At least one cookie key inside its window.
    pub has_keys: bool,
}

/// A time server is ready when it is not draining, its clock is synchronized
/// and it holds cookie keys.
pub fn time_server_readiness(s: &TimeServerSnapshot) -> Result<(), NotReady> {
    if s.draining {
        return Err(NotReady::Draining);
    }
    if !s.synchronized {
        return Err(NotReady::Unsynchronized);
    }
    if !s.has_keys {
        return Err(NotReady::NoCookieKeys);
    }
    Ok(())
}

/// What a KE server's readiness depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeServerSnapshot {
    pub draining: bool,
    /// Why this replica's key set stands refused by the time servers, if it does.
    pub key_set_refused: Option<String>,
    /// Key sync is on (time servers register) and no live one is registered.
    pub no_live_time_server: bool,
    /// A configured `ntp.server` that answers can name when none is live.
    pub has_fallback: bool,
    /// ACME is configured and has no certificate yet.
    pub awaiting_certificate: bool,
    /// The key ring has a key to seal cookies with now.
    pub has_current_key: bool,
}

/// A KE server is ready when it can complete a key exchange that sends the
/// client to a live time server.
pub fn ke_server_readiness(s: &KeServerSnapshot) -> Result<(), NotReady> {
    if s.draining {
        return Err(NotReady::Draining);
    }
    // Next: it explains why no time server would be live for this replica.
    if let Some(why) = &s.key_set_refused {
        return Err(NotReady::KeySetRefused(why.clone()));
    }
    if s.no_live_time_server && !s.has_fallback {
        return Err(NotReady::NoTimeServer);
    }
    if s.awaiting_certificate {
        return Err(NotReady::NoCertificate);
    }
    if !s.has_current_key {
        return Err(NotReady::NoCurrentKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_server_reasons_in_order() {
        let ok = TimeServerSnapshot {
            draining: false,
            synchronized: true,
            has_keys: true,
        };
        assert_eq!(time_server_readiness(&ok), Ok(()));
        let none = TimeServerSnapshot {
            draining: true,
            synchronized: false,
            has_keys: false,
        };
        assert_eq!(time_server_readiness(&none), Err(NotReady::Draining));
        let s = TimeServerSnapshot {
            draining: false,
            ..none
        };
        assert_eq!(time_server_readiness(&s), Err(NotReady::Unsynchronized));
        let s = TimeServerSnapshot {
            synchronized: true,
            ..s
        };
        assert_eq!(time_server_readiness(&s), Err(NotReady::NoCookieKeys));
    }

    #[test]
    fn ke_server_reasons_in_order() {
        let ok = KeServerSnapshot {
            draining: false,
            key_set_refused: None,
            no_live_time_server: false,
            has_fallback: false,
            awaiting_certificate: false,
            has_current_key: true,
        };
        assert_eq!(ke_server_readiness(&ok), Ok(()));
        let mut s = KeServerSnapshot {
            draining: true,
            key_set_refused: Some("refused by 2 of 3".into()),
            no_live_time_server: true,
            has_fallback: false,
            awaiting_certificate: true,
            has_current_key: false,
        };
        let mut seen = Vec::new();
        while let Err(why) = ke_server_readiness(&s) {
            seen.push(why.to_string());
            match why {
                NotReady::Draining => s.draining = false,
                NotReady::KeySetRefused(_) => s.key_set_refused = None,
                NotReady::NoTimeServer => s.no_live_time_server = false,
                NotReady::NoCertificate => s.awaiting_certificate = false,
                NotReady::NoCurrentKey => s.has_current_key = true,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(seen[1], "refused by 2 of 3");
        // A fallback makes an empty registry no reason.
        let s = KeServerSnapshot {
            no_live_time_server: true,
            has_fallback: true,
            ..ok
        };
        assert_eq!(ke_server_readiness(&s), Ok(()));
    }
}
