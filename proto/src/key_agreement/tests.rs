use super::*;
use crate::key_ring::{KeyRing, KeySchedule};
use sha2::Digest;

fn root(b: u8) -> RootSecret {
    RootSecret::from_bytes(&[b; 32]).unwrap()
}

fn ring(b: u8, period: u64) -> KeyRing {
    KeyRing::derive(&root(b), &KeySchedule::new(period, 1).unwrap(), 1_000_000)
}

fn offer(b: u8, keys: &KeyRing) -> Option<Offer<'_>> {
    Some(Offer {
        fingerprint: Some(RootFingerprint::of(&root(b))),
        keys: keys.keys(),
    })
}

#[test]
fn fingerprint_is_stable_and_differs_between_secrets() {
    // Pinned (checked with Python hmac: HKDF-Expand(HKDF-Extract(salt, root), label)):
    // replicas of different versions must agree on it.
    assert_eq!(
        RootFingerprint::of(&root(1)).to_string(),
        "9a47daad836f0a96"
    );
    assert_eq!(RootFingerprint::of(&root(1)), RootFingerprint::of(&root(1)));
    assert_ne!(RootFingerprint::of(&root(1)), RootFingerprint::of(&root(2)));
    let fp = RootFingerprint::of(&root(7));
    assert_eq!(fp.to_string().len(), 2 * FINGERPRINT_LEN);
    assert_eq!(RootFingerprint::from_bytes(fp.as_bytes()), Some(fp));
    assert_eq!(
        RootFingerprint::from_bytes(&[]),
        None,
        "older peers send none"
    );
    assert_eq!(RootFingerprint::from_bytes(&[0; 9]), None);
}

#[test]
fn fingerprint_is_no_key_and_no_hash_of_the_secret() {
    let r = root(9);
    let fp = RootFingerprint::of(&r);
    let schedule = KeySchedule::new(1, 0).unwrap();
    // No cookie key of any epoch starts with it (the label differs from every key's).
    for t in (0..2000u64).chain([u64::MAX - 1, 0x6e74_732d_726f_6f74]) {
        assert_ne!(
            &r.derive_key(t, &schedule).key_bytes()[..FINGERPRINT_LEN],
            fp.as_bytes()
        );
    }
    assert_ne!(&r.as_bytes()[..FINGERPRINT_LEN], fp.as_bytes());
    let sha = sha2::Sha256::digest(r.as_bytes());
    assert_ne!(&sha[..FINGERPRINT_LEN], fp.as_bytes());
}

#[test]
fn a_lone_offer_is_always_served() {
    let (r1, r2) = (ring(1, 60), ring(2, 60));
    // Held keys of another secret, and only one ke-server now: it is served.
    let held = offer(1, &r1);
    let c = choose(held, &[None, offer(2, &r2)]);
    assert_eq!(c.accepted, vec![false, true]);
    assert_eq!(c.fingerprint, Some(RootFingerprint::of(&root(2))));
    assert_eq!(choose(None, &[]).accepted, Vec::<bool>::new());
    assert_eq!(choose(None, &[None]).fingerprint, None);
}

#[test]
fn agreeing_offers_are_all_served() {
    let (a, b) = (ring(1, 60), ring(1, 60));
    let c = choose(None, &[offer(1, &a), offer(1, &b)]);
    assert_eq!(c.accepted, vec![true, true]);
}

#[test]
fn on_a_tie_the_established_secret_wins_in_either_order() {
    let (r1, r2) = (ring(1, 60), ring(2, 60));
    let held = offer(1, &r1);
    let c = choose(held, &[offer(1, &r1), offer(2, &r2)]);
    assert_eq!(c.accepted, vec![true, false]);
    let c = choose(held, &[offer(2, &r2), offer(1, &r1)]);
    assert_eq!(c.accepted, vec![false, true]);
    assert_eq!(c.fingerprint, Some(RootFingerprint::of(&root(1))));
    // Held keys from an older ke-server (no fingerprint) count by their keys.
    let old = Offer {
        fingerprint: None,
        keys: r2.keys(),
    };
    let c = choose(Some(old), &[offer(1, &r1), offer(2, &r2)]);
    assert_eq!(c.accepted, vec![false, true]);
}

#[test]
fn with_nothing_held_a_tie_goes_to_the_lowest_fingerprint() {
    let (r1, r2) = (ring(1, 60), ring(2, 60));
    let low = if RootFingerprint::of(&root(1)) < RootFingerprint::of(&root(2)) {
        1
    } else {
        2
    };
    for offers in [
        [offer(1, &r1), offer(2, &r2)],
        [offer(2, &r2), offer(1, &r1)],
    ] {
        let c = choose(None, &offers);
        assert_eq!(c.fingerprint, Some(RootFingerprint::of(&root(low))));
        assert_eq!(c.accepted.iter().filter(|a| **a).count(), 1);
    }
}

#[test]
fn the_majority_beats_the_keys_held() {
    // Every replica but one moved to a new secret: the time server follows them.
    let (r1, r2) = (ring(1, 60), ring(2, 60));
    let c = choose(
        offer(1, &r1),
        &[offer(2, &r2), offer(1, &r1), offer(2, &r2)],
    );
    assert_eq!(c.accepted, vec![true, false, true]);
}

#[test]
fn disagreement_is_seen_by_keys_or_by_fingerprint() {
    let (r1, r2) = (ring(1, 60), ring(2, 60));
    fn no_fp(r: &KeyRing) -> Offer<'_> {
        Offer {
            fingerprint: None,
            keys: r.keys(),
        }
    }
    // Older ke-servers without a fingerprint: the same id holding two keys.
    assert!(!no_fp(&r1).agrees(&no_fp(&r2)));
    assert!(no_fp(&r1).agrees(&no_fp(&ring(1, 60))));
    // A fingerprint on one side only: the keys decide.
    assert!(no_fp(&r1).agrees(&offer(1, &r1).unwrap()));
    // Different fingerprints disagree even when no key id is shared.
    let r2_other_ids = KeyRing::derive(&root(2), &KeySchedule::new(7, 0).unwrap(), 1_000_003);
    assert_eq!(find_conflict(r1.keys(), r2_other_ids.keys()), None);
    assert!(!offer(1, &r1)
        .unwrap()
        .agrees(&offer(2, &r2_other_ids).unwrap()));
}

fn view(refused: bool, serves: u8) -> TimeServerView {
    TimeServerView {
        refused,
        serves: Some(RootFingerprint::of(&root(serves))),
    }
}

#[test]
fn a_replica_is_refused_only_by_a_majority_of_live_time_servers() {
    let own = RootFingerprint::of(&root(2));
    let theirs = RootFingerprint::of(&root(1));
    assert_eq!(standing(own, &[]), Standing::Agreed);
    assert_eq!(standing(own, &[view(false, 2)]), Standing::Agreed);
    let one_of_one = standing(own, &[view(true, 1)]);
    assert_eq!(
        one_of_one,
        Standing::Refused {
            own,
            theirs: Some(theirs),
            refusing: 1,
            live: 1
        }
    );
    let why = one_of_one.not_ready_reason().unwrap();
    assert!(why.contains("root secret differs"), "{why}");
    assert!(
        why.contains(&own.to_string()) && why.contains(&theirs.to_string()),
        "{why}"
    );
    // An even split cannot say which replica is wrong.
    assert_eq!(
        standing(own, &[view(true, 1), view(false, 2)]),
        Standing::Contested {
            refusing: 1,
            live: 2
        }
    );
    assert_eq!(
        standing(own, &[view(true, 1), view(false, 2)]).not_ready_reason(),
        None
    );
    let s = standing(
        own,
        &[view(true, 1), view(true, 3), view(true, 1), view(false, 2)],
    );
    assert!(
        matches!(s, Standing::Refused { theirs: Some(t), refusing: 3, live: 4, .. } if t == theirs)
    );
    // Older time servers name no fingerprint.
    let old = TimeServerView {
        refused: true,
        serves: None,
    };
    let s = standing(own, &[old]);
    assert!(s.not_ready_reason().unwrap().contains("an unknown one"));
}
