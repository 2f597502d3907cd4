//! What the time servers say about this replica's key set (rule 7). Each
//! report tells whether the time server refuses the set (it serves keys of
//! another root secret) and which fingerprint it serves; the replica is not
//! ready while most live time servers refuse it
//! ([`nts_proto::key_agreement::standing`]).

use nts_proto::key_agreement::{standing, RootFingerprint, Standing, TimeServerView};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The latest view of each time server, and the standing last logged.
#[derive(Debug)]
pub struct KeySetStatus {
    own: RootFingerprint,
    /// A report older than this no longer counts (the registry's expiry).
    expiry: Duration,
    views: Mutex<HashMap<String, (Instant, TimeServerView)>>,
    logged: Mutex<Standing>,
}

/// What a change of standing is told by: its kind and the fingerprint named.
fn change_key(s: &Standing) -> (u8, Option<RootFingerprint>) {
    match s {
        Standing::Agreed => (0, None),
        Standing::Contested { .. } => (1, None),
        Standing::Refused { theirs, .. } => (2, *theirs),
    }
}

impl KeySetStatus {
    pub fn new(own: RootFingerprint, expiry: Duration) -> Self {
        Self {
            own,
            expiry,
            views: Mutex::new(HashMap::new()),
            logged: Mutex::new(Standing::Agreed),
        }
    }

    /// Fingerprint of this replica's root secret.
    pub fn own(&self) -> RootFingerprint {
        self.own
    }

    /// Record a time server's report, and log the standing if that changed it.
    pub fn report(&self, server_id: &str, view: TimeServerView, now: Instant) {
        {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            // Forget time servers silent for long, so the map stays bounded by live ones.
            let keep = self.expiry * 10;
            views.retain(|_, (seen, _)| now.saturating_duration_since(*seen) <= keep);
            views.insert(server_id.to_string(), (now, view));
        }
        self.standing(now);
    }

    /// The standing from the time servers that reported within the expiry;
    /// logged once per change (not at every report).
    pub fn standing(&self, now: Instant) -> Standing {
        let live: Vec<TimeServerView> = {
            let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            views
                .values()
                .filter(|(seen, _)| now.saturating_duration_since(*seen) <= self.expiry)
                .map(|(_, v)| *v)
                .collect()
        };
        let s = standing(self.own, &live);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if change_key(&s) != change_key(&logged) {
            log_change(&s);
            *logged = s.clone();
        }
        s
    }

    /// Live time servers refusing this replica's key set now.
    pub fn refusing(&self, now: Instant) -> usize {
        match self.standing(now) {
            Standing::Agreed => 0,
            Standing::Contested { refusing, .. } | Standing::Refused { refusing, .. } => refusing,
        }
    }
}

fn log_change(s: &Standing) {
    match s {
        Standing::Agreed => {
            tracing::info!("no live time server refuses this replica's key set any more")
        }
        Standing::Contested { refusing, live } => tracing::warn!(
            refusing,
            live,
            "{refusing} of {live} live time servers refuse this replica's key set (they serve keys of another root secret); as many accept it, so this replica stays ready and sends clients only to those"
        ),
        Standing::Refused { .. } => {
            let why = s.not_ready_reason().unwrap_or_default();
            tracing::warn!("not ready: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::key_ring::RootSecret;

    fn fp(b: u8) -> RootFingerprint {
        RootFingerprint::of(&RootSecret::from_bytes(&[b; 32]).unwrap())
    }

    #[test]
    fn refused_while_reports_say_so_and_forgotten_after_the_expiry() {
        let s = KeySetStatus::new(fp(2), Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(s.standing(t0), Standing::Agreed);
        let refused = TimeServerView {
            refused: true,
            serves: Some(fp(1)),
        };
        s.report("ts-a", refused, t0);
        assert!(s.standing(t0).not_ready_reason().is_some());
        assert_eq!(s.refusing(t0), 1);
        // The time server goes silent: its refusal no longer counts.
        assert_eq!(s.standing(t0 + Duration::from_secs(3)), Standing::Agreed);
        // It reports again, accepting (the replica got the right secret).
        let t1 = t0 + Duration::from_secs(4);
        s.report("ts-a", refused, t1);
        s.report(
            "ts-a",
            TimeServerView {
                refused: false,
                serves: Some(fp(2)),
            },
            t1,
        );
        assert_eq!(s.refusing(t1), 0);
    }
}
