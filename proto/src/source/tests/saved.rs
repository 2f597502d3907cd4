//! Saved associations: the text form and resuming from it.

use crate::source::harness::{t, World};
use crate::source::*;
use crate::time::UnixTime;
use rand::RngCore;
use std::time::Duration;

fn saved(w: &World) -> SavedAssociation {
    let mut s = NtsSource::new(NtsSourceConfig::default(), t(0.0), 0.0);
    s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(0.0));
    s.save().unwrap()
}

#[test]
fn saved_association_round_trips_and_restores_without_ke() {
    let w = World::new();
    let saved = saved(&w);
    let text = saved.to_text();
    let back = SavedAssociation::from_text(&text).unwrap();
    assert_eq!(back.cookies, saved.cookies);
    assert_eq!(back.association.c2s, w.assoc.c2s);
    assert_eq!(back.association.ntp_host, "time.example");
    assert_eq!(back.association.established, w.assoc.established);
    let unix = |d: u64| w.assoc.established + Duration::from_secs(d);
    let mut r = NtsSource::restored(
        NtsSourceConfig::default(),
        back.clone(),
        t(5.0),
        unix(600),
        0.0,
    );
    assert_eq!(r.cookies(), 8);
    assert_eq!(r.rekey_reason(), None);
    assert_eq!(r.association_age(t(5.0)), Some(Duration::from_secs(600)));
    assert_eq!(r.next_step(t(5.0)), Step::Request);
    // Too old: dropped, and a key exchange is due.
    let mut old = NtsSource::restored(
        NtsSourceConfig::default(),
        back.clone(),
        t(5.0),
        unix(90_000),
        0.0,
    );
    assert_eq!(old.cookies(), 0);
    assert_eq!(old.next_step(t(5.0)), Step::KeyExchange);
    // From the future (a clock that was wrong): dropped too.
    let early = UnixTime::from_secs(w.assoc.established.as_secs() - 3600);
    let future = NtsSource::restored(NtsSourceConfig::default(), back, t(5.0), early, 0.0);
    assert_eq!(future.cookies(), 0);
}

#[test]
fn damaged_files_are_errors() {
    let w = World::new();
    let text = saved(&w).to_text();
    assert_eq!(
        SavedAssociation::from_text("hello\n").unwrap_err(),
        SavedError::Magic
    );
    for (from, to) in [
        ("aead 15", "aead 99"),
        ("aead 15", "aead x"),
        ("ntp 123", "ntp 0"),
        ("cookie ", "cookie zz"),
        ("established", "bogus"),
        ("established 1", "established -1"),
    ] {
        let bad = text.replacen(from, to, 1);
        assert!(SavedAssociation::from_text(&bad).is_err(), "{to}");
    }
    let no_c2s: String = text
        .lines()
        .filter(|l| !l.starts_with("c2s"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        SavedAssociation::from_text(&no_c2s).unwrap_err(),
        SavedError::Missing("c2s")
    );
    // Random bytes never panic.
    let mut rng = rand::thread_rng();
    for _ in 0..2000 {
        let mut b = text.clone().into_bytes();
        let at = rng.next_u32() as usize % b.len();
        b[at] = rng.next_u32() as u8;
        let _ = SavedAssociation::from_text(&String::from_utf8_lossy(&b));
    }
}
