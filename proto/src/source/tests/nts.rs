//! The NTS half: cookie jar, NAK rule, verdicts, re-key decisions, backoff.

use crate::aead::AeadKey;
use crate::ntp_packet::NtpHeader;
use crate::source::harness::{nak_for, reseal, t, World};
use crate::source::*;

fn rnd(b: &mut [u8]) {
    use rand::RngCore;
    rand::thread_rng().fill_bytes(b)
}

/// The cookie a request carries: the body of its (only) NTS Cookie field.
fn cookie_in(req: &[u8]) -> Vec<u8> {
    crate::extension_field::ExtensionFields::new(&req[48..], 16)
        .map(|f| f.unwrap())
        .find(|f| f.field_type == crate::extension_field::field_type::NTS_COOKIE)
        .map(|f| f.body.to_vec())
        .unwrap()
}

fn source(w: &World) -> NtsSource {
    let mut s = NtsSource::new(NtsSourceConfig::default(), t(0.0), 0.0);
    assert_eq!(s.next_step(t(0.0)), Step::KeyExchange);
    s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(0.0));
    s
}

#[test]
fn genuine_answer_refills_the_jar() {
    let w = World::new();
    let mut s = source(&w);
    assert_eq!(s.next_step(t(1.0)), Step::Request);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    assert_eq!(s.cookies(), 7);
    let resp = w.serve(&req);
    let v = s.on_datagram(&resp, &mut f);
    assert!(matches!(v, Verdict::Accepted(_)));
    assert_eq!(s.answered(), None);
    assert_eq!(s.cookies(), 8);
    assert_eq!(s.counters().accepted, 1);
    // The same answer again (replayed later) matches no request.
    let mut req2 = Vec::new();
    let mut f2 = s.prepare_request(&mut req2, None, &mut rnd).unwrap();
    assert_eq!(
        s.on_datagram(&resp, &mut f2),
        Verdict::KeepWaiting(Some(Ignored::Mismatch))
    );
}

#[test]
fn the_next_key_exchange_is_announced_while_backing_off() {
    let w = World::new();
    let mut s = NtsSource::new(NtsSourceConfig::default(), t(0.0), 0.0);
    assert_eq!(
        s.next_key_exchange_in(t(0.0)),
        Some(std::time::Duration::ZERO)
    );
    assert_eq!(s.next_step(t(0.0)), Step::KeyExchange);
    s.begin_key_exchange();
    assert!(s.exchanging());
    let next = s.ke_failed(t(0.0), 0.0);
    assert!(!s.exchanging());
    assert!(next > t(0.0));
    assert_eq!(
        s.next_key_exchange_in(t(1.0)),
        Some(next.saturating_since(t(1.0)))
    );
    s.ke_succeeded(w.assoc.clone(), w.cookies(8), next);
    assert_eq!(
        s.next_key_exchange_in(next),
        None,
        "none wanted with cookies"
    );
}

#[test]
fn cookies_are_spent_oldest_first() {
    // First in, first out: a jar used newest-first keeps cycling the same
    // slot while the older cookies age past their key's lifetime.
    let w = World::new();
    let mut s = source(&w);
    let issued = w.cookies(8);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    assert_eq!(cookie_in(&req), issued[0], "the oldest cookie goes first");
    let resp = w.serve(&req);
    assert!(matches!(s.on_datagram(&resp, &mut f), Verdict::Accepted(_)));
    // The fresh cookie from the answer waits behind the seven older ones.
    for (i, want) in issued.iter().enumerate().skip(1) {
        let mut req = Vec::new();
        s.prepare_request(&mut req, None, &mut rnd).unwrap();
        assert_eq!(&cookie_in(&req), want, "request {i}");
    }
}

#[test]
fn forged_nak_is_ignored_when_the_real_answer_follows() {
    let w = World::new();
    let mut s = source(&w);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    let nak = nak_for(&req);
    assert_eq!(s.on_datagram(&nak, &mut f), Verdict::KeepWaiting(None));
    assert_eq!(
        s.on_datagram(&nak, &mut f),
        Verdict::KeepWaiting(Some(Ignored::RepeatedNak))
    );
    let v = s.on_datagram(&w.serve(&req), &mut f);
    assert!(matches!(v, Verdict::Accepted(_)));
    s.answered();
    // Cookies and keys kept, no key exchange.
    assert_eq!(s.cookies(), 8);
    assert_eq!(s.next_step(t(2.0)), Step::Request);
    assert_eq!(s.counters().naks, 1);
}

#[test]
fn nak_without_an_answer_rekeys_but_keeps_polling_meanwhile() {
    let w = World::new();
    let mut s = source(&w);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    s.on_datagram(&nak_for(&req), &mut f);
    assert_eq!(
        s.timed_out(&f),
        Some(Transition::RekeyDue(RekeyReason::Nak))
    );
    assert_eq!(s.rekey_reason(), Some(RekeyReason::Nak));
    assert_eq!(s.next_step(t(3.0)), Step::KeyExchange);
    // The key exchange fails: back off, and keep using the old cookies meanwhile.
    s.begin_key_exchange();
    assert_eq!(s.cookies(), 7, "kept while exchanging");
    let next = s.ke_failed(t(3.0), 0.0);
    assert_eq!(next, t(7.0));
    assert_eq!(s.cookies(), 7);
    assert_eq!(s.next_step(t(4.0)), Step::Request);
    assert_eq!(s.next_step(t(7.0)), Step::KeyExchange);
    // A new key exchange discards the old cookies.
    s.ke_succeeded(w.assoc.clone(), w.cookies(3), t(8.0));
    assert_eq!(s.cookies(), 3);
    assert_eq!(s.next_step(t(8.0)), Step::Request);
}

#[test]
fn forged_and_unauthenticated_datagrams_are_ignored() {
    let w = World::new();
    let mut s = source(&w);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    let genuine = w.serve(&req);
    // Tampered: the authenticator fails.
    let mut forged = genuine.clone();
    forged[44] ^= 1; // transmit timestamp
    assert_eq!(
        s.on_datagram(&forged, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Forged))
    );
    // Unauthenticated copy of the header with the right UID, and a forged RATE kiss.
    let mut unauth = genuine[..48 + 36].to_vec();
    assert_eq!(
        s.on_datagram(&unauth, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
    );
    unauth[1] = 0;
    unauth[12..16].copy_from_slice(b"RATE");
    assert_eq!(
        s.on_datagram(&unauth, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
    );
    unauth[12..16].copy_from_slice(b"DENY");
    assert_eq!(
        s.on_datagram(&unauth, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
    );
    // Garbage and a stray answer.
    assert_eq!(
        s.on_datagram(&[0x24; 13], &mut f),
        Verdict::KeepWaiting(Some(Ignored::Malformed))
    );
    let mut stray = genuine.clone();
    stray[24] ^= 1; // origin
    assert_eq!(
        s.on_datagram(&stray, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Mismatch))
    );
    // The real answer still wins.
    assert!(matches!(
        s.on_datagram(&genuine, &mut f),
        Verdict::Accepted(_)
    ));
    let c = s.counters();
    assert_eq!(c.ignored(), 6);
    assert_eq!(c.ignored_unauthenticated, 3);
}

#[test]
fn authenticated_kisses_are_reported() {
    let w = World::new();
    let mut s = source(&w);
    let mut req = Vec::new();
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    // Turn the genuine response into a RATE kiss and seal it again with S2C.
    let mut resp = w.serve(&req);
    let (h, _) = NtpHeader::parse(&resp).unwrap();
    let kissed = NtpHeader {
        stratum: 0,
        reference_id: *b"RATE",
        ..h
    };
    resp[..48].copy_from_slice(&kissed.to_bytes());
    reseal(&mut resp, &w.assoc.s2c);
    assert_eq!(s.on_datagram(&resp, &mut f), Verdict::Kiss(*b"RATE"));
    assert_eq!(s.counters().kisses, 1);
    // Sealed with another key: forged.
    let other = AeadKey::new(w.assoc.aead, &[0x33; 32]).unwrap();
    reseal(&mut resp, &other);
    assert_eq!(
        s.on_datagram(&resp, &mut f),
        Verdict::KeepWaiting(Some(Ignored::Forged))
    );
}

#[test]
fn silent_server_rekeys_after_missed_polls() {
    let w = World::new();
    let mut s = source(&w);
    let mut req = Vec::new();
    let f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    assert_eq!(s.timed_out(&f), Some(Transition::TimeoutsBegan));
    assert_eq!(s.timed_out(&f), None);
    assert_eq!(s.timed_out(&f), None);
    assert_eq!(
        s.timed_out(&f),
        Some(Transition::RekeyDue(RekeyReason::Unreachable))
    );
    assert_eq!(s.next_step(t(50.0)), Step::KeyExchange);
    // If it answers before the key exchange ran, stay.
    let mut f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
    assert!(matches!(
        s.on_datagram(&w.serve(&req), &mut f),
        Verdict::Accepted(_)
    ));
    assert_eq!(s.answered(), Some(Transition::Answering { after: 4 }));
    assert_eq!(s.next_step(t(52.0)), Step::Request);
    // A key exchange that hands out another server says so.
    let mut other = w.assoc.clone();
    other.ntp_host = "other.example".into();
    assert!(s.ke_succeeded(other, w.cookies(8), t(60.0)));
    assert!(s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(61.0)));
    assert!(!s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(62.0)));
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let cfg = NtsSourceConfig {
        ke_spread: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    let mut s = NtsSource::new(cfg, t(100.0), 0.5);
    assert_eq!(s.next_step(t(100.0)), Step::NotBefore(t(105.0)));
    assert_eq!(s.next_step(t(105.0)), Step::KeyExchange);
    let mut now = t(105.0);
    let mut waits = Vec::new();
    for _ in 0..12 {
        let next = s.ke_failed(now, 0.0);
        waits.push(next.saturating_since(now).as_secs_f64());
        assert_eq!(s.next_step(now), Step::NotBefore(next));
        now = next;
    }
    assert_eq!(&waits[..4], &[4.0, 8.0, 16.0, 32.0]);
    assert_eq!(*waits.last().unwrap(), 1024.0);
    // Jitter takes at most half off.
    let next = s.ke_failed(now, 0.999).saturating_since(now).as_secs_f64();
    assert!(next > 512.0 && next < 1024.0, "{next}");
}

#[test]
fn out_of_cookies_and_refresh() {
    let w = World::new();
    let mut s = NtsSource::new(
        NtsSourceConfig {
            unreachable_polls: u32::MAX,
            ..Default::default()
        },
        t(0.0),
        0.0,
    );
    s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(0.0));
    let mut req = Vec::new();
    for _ in 0..8 {
        let f = s.prepare_request(&mut req, None, &mut rnd).unwrap();
        s.timed_out(&f);
    }
    assert_eq!(s.cookies(), 0);
    assert!(s.prepare_request(&mut req, None, &mut rnd).is_none());
    assert_eq!(s.next_step(t(1.0)), Step::KeyExchange);
    assert_eq!(s.rekey_reason(), Some(RekeyReason::NoCookies));
    s.ke_succeeded(w.assoc.clone(), w.cookies(8), t(1.0));
    assert_eq!(s.next_step(t(86_400.0)), Step::Request);
    assert_eq!(s.next_step(t(86_401.0)), Step::KeyExchange);
    assert_eq!(s.rekey_reason(), Some(RekeyReason::Refresh));
}

#[test]
fn discarded_keys_wait_for_the_backoff_then_rekey() {
    let w = World::new();
    let mut s = source(&w);
    s.discard();
    assert_eq!(s.cookies(), 0);
    assert!(s.association().is_none());
    let next = s.ke_failed(t(1.0), 0.0);
    assert_eq!(s.next_step(t(2.0)), Step::NotBefore(next));
    assert_eq!(s.next_step(next), Step::KeyExchange);
}
