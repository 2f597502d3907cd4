//! Whether ke-server replicas hold the same root secret (rule 7: replicas that
//! disagree are detected and refused, never mixed).
//!
//! Three pieces, all pure: a fingerprint of the root secret that is safe to log
//! and send; the rule a time server uses to choose whose key sets it serves when
//! its ke-servers disagree ([`choose`]); and the rule a replica uses to decide,
//! from what the time servers report back, that it is the odd one ([`standing`]).

use crate::key_ring::{find_conflict, CookieKey, RootSecret, HKDF_SALT};
use hkdf::Hkdf;
use sha2::Sha256;
use std::cmp::Ordering;

/// Bytes of a root-secret fingerprint (16 hex digits: enough to tell secrets apart).
pub const FINGERPRINT_LEN: usize = 8;

/// HKDF-Expand label of the fingerprint. Cookie keys use the 8-byte epoch start
/// as their label, so no key is ever derived with this one.
const FINGERPRINT_INFO: &[u8] = b"nts-root-secret-fingerprint/v1";

/// A one-way, non-secret name of a root secret: equal for replicas that derive
/// the same cookie keys, different otherwise. It is an HKDF output under a label
/// of its own, so it reveals nothing about the root secret or any cookie key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RootFingerprint([u8; FINGERPRINT_LEN]);

impl RootFingerprint {
    /// `HKDF-SHA256(salt = "nts-cookie-key/v1", ikm = root, info = "nts-root-secret-fingerprint/v1")`, first 8 bytes.
    pub fn of(root: &RootSecret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), root.as_bytes());
        let mut out = [0u8; FINGERPRINT_LEN];
        // 8 bytes is far below HKDF's limit, so expand cannot fail.
        let _ = hk.expand(FINGERPRINT_INFO, &mut out);
        Self(out)
    }

    /// From the wire; None when absent (an older peer sends none) or malformed.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl std::fmt::Display for RootFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for RootFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootFingerprint({self})")
    }
}

/// One ke-server's latest key set, as a time server holds it.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// None from a ke-server too old to send one: then only the keys can disagree.
    pub fingerprint: Option<RootFingerprint>,
    /// Its unexpired keys.
    pub keys: &'a [CookieKey],
}

impl Offer<'_> {
    /// Same root secret: no fingerprint differs and no key id holds two keys.
    pub fn agrees(&self, other: &Offer<'_>) -> bool {
        let fingerprints_differ = matches!(
            (self.fingerprint, other.fingerprint),
            (Some(a), Some(b)) if a != b
        );
        !fingerprints_differ && find_conflict(self.keys, other.keys).is_none()
    }
}

/// Which ke-servers' key sets a time server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Per offer (same order): its keys are served. False for an absent offer.
    pub accepted: Vec<bool>,
    /// The fingerprint of the root secret served, when a served ke-server sent one.
    pub fingerprint: Option<RootFingerprint>,
}

/// Choose whose key sets to serve when ke-servers disagree.
///
/// Offers that agree form a group. The group served is, in this order:
/// 1. the one offered by the most ke-servers (a ke-server counts by its latest
///    set, whether or not its link is up now, so restarting a good replica never
///    hands the majority to an odd one);
/// 2. on a tie, the one that agrees with `held` (the keys in service), so a
///    replica restarted with another secret never invalidates the cookies out
///    there: the established secret wins;
/// 3. then the lowest fingerprint, then the first offer (the configured order),
///    so every time server with the same view chooses the same group.
///
/// A lone offer is always accepted: one replica is never wrong by itself.
pub fn choose(held: Option<Offer<'_>>, offers: &[Option<Offer<'_>>]) -> Choice {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, offer) in offers.iter().enumerate() {
        let Some(offer) = offer else { continue };
        let fits = |g: &Vec<usize>| {
            g.iter()
                .all(|&j| offers[j].is_some_and(|o| o.agrees(offer)))
        };
        match groups.iter_mut().find(|g| fits(g)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let fingerprint = |g: &[usize]| {
        g.iter()
            .find_map(|&j| offers[j].and_then(|o| o.fingerprint))
    };
    let holds = |g: &[usize]| {
        held.is_some_and(|h| g.iter().all(|&j| offers[j].is_some_and(|o| o.agrees(&h))))
    };
    let rank = |a: &Vec<usize>, b: &Vec<usize>| {
        a.len()
            .cmp(&b.len())
            .then(holds(a).cmp(&holds(b)))
            .then_with(|| match (fingerprint(a), fingerprint(b)) {
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            })
            .then(b[0].cmp(&a[0]))
    };
    let winner = groups.iter().max_by(|a, b| rank(a, b));
    let mut accepted = vec![false; offers.len()];
    for &i in winner.into_iter().flatten() {
        accepted[i] = true;
    }
    Choice {
        accepted,
        fingerprint: winner.and_then(|g| fingerprint(g)),
    }
}

/// What one live time server said about this replica in its latest report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeServerView {
    /// It refuses this replica's key set.
    pub refused: bool,
    /// The fingerprint of the root secret it serves (None: unknown, an older time server).
    pub serves: Option<RootFingerprint>,
}

/// A replica's standing with the live time servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No live time server refuses this replica's key set.
    Agreed,
    /// Some refuse it, but no more than accept it: which side is wrong cannot
    /// be told, so the replica stays ready (it only sends clients to the time
    /// servers that hold its keys).
    Contested { refusing: usize, live: usize },
    /// More live time servers refuse this replica's key set than accept it:
    /// it holds another root secret than the one they serve. Not ready.
    Refused {
        own: RootFingerprint,
        theirs: Option<RootFingerprint>,
        refusing: usize,
        live: usize,
    },
}

impl Standing {
    /// Why the replica is not ready, if it is refused.
    pub fn not_ready_reason(&self) -> Option<String> {
        let Standing::Refused {
            own,
            theirs,
            refusing,
            live,
        } = self
        else {
            return None;
        };
        let theirs = theirs.map_or_else(|| "an unknown one".to_string(), |f| f.to_string());
        Some(format!(
            "root secret differs from the one the time servers hold: fingerprint {own} (this replica) vs {theirs}; {refusing} of {live} live time servers refuse this replica's key set (give it the root secret file of the other replicas)"
        ))
    }
}

/// Decide a replica's standing from the latest report of each live time server.
///
/// Refused only when the refusing time servers outnumber the accepting ones: a
/// time server refuses a set only when another replica offers a different one,
/// so a lone replica is never refused, and an even split is not enough to say
/// which replica is wrong.
pub fn standing(own: RootFingerprint, views: &[TimeServerView]) -> Standing {
    let live = views.len();
    let refusing = views.iter().filter(|v| v.refused).count();
    if refusing == 0 {
        return Standing::Agreed;
    }
    if refusing * 2 <= live {
        return Standing::Contested { refusing, live };
    }
    // The fingerprint most refusing time servers serve (ties: the lowest).
    let mut served: Vec<RootFingerprint> = views
        .iter()
        .filter(|v| v.refused)
        .filter_map(|v| v.serves)
        .collect();
    served.sort();
    let count = |f: &RootFingerprint| served.iter().filter(|s| *s == f).count();
    let theirs = served
        .iter()
        .copied()
        .max_by(|a, b| count(a).cmp(&count(b)).then(b.cmp(a)));
    Standing::Refused {
        own,
        theirs,
        refusing,
        live,
    }
}

#[cfg(test)]
mod tests;
