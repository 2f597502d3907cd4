use super::*;

fn info(id: &str, port: u16, workers: u32) -> ServerInfo {
    ServerInfo {
        server_id: id.into(),
        main: Endpoint {
            host: "127.0.0.1".into(),
            port,
        },
        alternates: Vec::new(),
        workers,
    }
}

fn up(rps: f64) -> Load {
    Load {
        requests_per_second: rps,
        has_keys: true,
        healthy: true,
    }
}

fn t(secs: u64) -> MonoTime {
    MonoTime::from_nanos(1_000_000_000 * (100 + secs))
}

#[test]
fn only_live_servers_with_keys_are_picked() {
    let mut r = Placement::new(Duration::from_secs(10), Selection::RoundRobin, 16);
    assert_eq!(r.pick(t(0), None), None);
    r.register(info("a", 1001, 2), "c", t(0)).unwrap();
    assert_eq!(r.pick(t(0), None), None, "registered but no keys yet");
    r.report(info("a", 1001, 2), "c", up(0.0), t(0)).unwrap();
    r.report(info("b", 1002, 2), "c", up(0.0), t(0)).unwrap();
    let no_keys = Load {
        has_keys: false,
        ..up(0.0)
    };
    r.report(info("c", 1003, 2), "c", no_keys, t(0)).unwrap();
    let mut seen: Vec<u16> = (0..4).map(|_| r.pick(t(0), None).unwrap().port).collect();
    seen.sort();
    assert_eq!(seen, vec![1001, 1001, 1002, 1002]);
    // b goes silent: after the expiry only a is picked.
    r.report(info("a", 1001, 2), "c", up(0.0), t(11)).unwrap();
    assert!((0..4).all(|_| r.pick(t(11), None).unwrap().port == 1001));
    // Unhealthy servers are skipped.
    let sick = Load {
        healthy: false,
        ..up(0.0)
    };
    r.report(info("a", 1001, 2), "c", sick, t(11)).unwrap();
    assert_eq!(r.pick(t(11), None), None);
    assert_eq!(r.view(t(11)).len(), 3);
    assert!(!r.has_live(t(11)));
    r.report(info("a", 1001, 2), "c", up(0.0), t(11)).unwrap();
    assert!(r.has_live(t(11)));
    // Entries dead for ten expiries are forgotten by the next pick.
    assert!(r.is_registered("b"));
    r.report(info("a", 1001, 2), "c", up(0.0), t(200)).unwrap();
    r.pick(t(200), None);
    assert!(!r.is_registered("b"));
    r.clear();
    assert!(!r.has_live(t(200)));
}

#[test]
fn client_gets_an_address_of_its_family() {
    let mut i = info("a", 123, 1);
    i.alternates = vec![Endpoint {
        host: "2001:db8::7".into(),
        port: 1123,
    }];
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    assert_eq!(address_for(&i, Some(v4)).host, "127.0.0.1");
    assert_eq!(address_for(&i, Some(mapped)).host, "127.0.0.1");
    assert_eq!(
        address_for(&i, Some(v6)),
        Endpoint {
            host: "2001:db8::7".into(),
            port: 1123
        }
    );
    assert_eq!(address_for(&i, None).host, "127.0.0.1");
    // No address of the client's family: the main one.
    i.alternates.clear();
    assert_eq!(address_for(&i, Some(v6)).host, "127.0.0.1");
    let mut r = Placement::new(Duration::from_secs(10), Selection::RoundRobin, 16);
    i.alternates = vec![Endpoint {
        host: "::1".into(),
        port: 5,
    }];
    r.report(i, "c", up(0.0), t(0)).unwrap();
    assert_eq!(r.pick(t(0), Some(v6)).unwrap().host, "::1");
    assert_eq!(r.pick(t(0), Some(v4)).unwrap().host, "127.0.0.1");
}

#[test]
fn one_certificate_holds_a_bounded_share() {
    let mut r = Placement::new(Duration::from_secs(10), Selection::RoundRobin, 2);
    r.register(info("a:1", 1, 1), "a", t(0)).unwrap();
    r.report(info("a:2", 2, 1), "a", up(0.0), t(0)).unwrap();
    let e = r.register(info("a:3", 3, 1), "a", t(0)).unwrap_err();
    assert_eq!(e.limit, 2);
    assert!(r.report(info("a:3", 3, 1), "a", up(0.0), t(0)).is_err());
    // Known entries refresh; other certificates are not affected.
    r.report(info("a:1", 1, 1), "a", up(0.0), t(0)).unwrap();
    r.register(info("b:1", 4, 1), "b", t(0)).unwrap();
    // Entries silent past the expiry no longer count.
    r.report(info("a:1", 1, 1), "a", up(0.0), t(11)).unwrap();
    r.register(info("a:3", 3, 1), "a", t(11)).unwrap();
}

#[test]
fn a_client_is_not_sent_to_the_time_server_on_its_own_host() {
    let mut r = Placement::new(Duration::from_secs(10), Selection::RoundRobin, 16);
    let mut a = info("node-a", 123, 1);
    a.main.host = "10.0.0.1".into();
    let mut b = info("node-b", 123, 1);
    b.main.host = "time-b.example.net".into();
    r.report(a, "c", up(0.0), t(0)).unwrap();
    r.report(b, "c", up(0.0), t(0)).unwrap();
    r.note_peer("node-b", "::ffff:10.0.0.2".parse().unwrap());
    let on_a: IpAddr = "10.0.0.1".parse().unwrap();
    let on_b: IpAddr = "10.0.0.2".parse().unwrap();
    // Round robin would alternate; a client on either node never gets its own.
    for _ in 0..6 {
        assert_eq!(r.pick(t(0), Some(on_a)).unwrap().host, "time-b.example.net");
        assert_eq!(r.pick(t(0), Some(on_b)).unwrap().host, "10.0.0.1");
    }
    // The only live server is the client's own: it gets it (and may refuse it).
    let mut r1 = Placement::new(Duration::from_secs(10), Selection::RoundRobin, 16);
    let mut only = info("node-a", 123, 1);
    only.main.host = "10.0.0.1".into();
    r1.report(only, "c", up(0.0), t(0)).unwrap();
    assert_eq!(r1.pick(t(0), Some(on_a)).unwrap().host, "10.0.0.1");
}

#[test]
fn least_loaded_per_worker() {
    let mut r = Placement::new(Duration::from_secs(10), Selection::LeastLoaded, 16);
    r.report(info("a", 1, 1), "c", up(100.0), t(0)).unwrap();
    r.report(info("b", 2, 4), "c", up(200.0), t(0)).unwrap();
    r.report(info("c", 3, 1), "c", up(f64::NAN), t(0)).unwrap();
    assert_eq!(r.pick(t(0), None).unwrap().port, 3, "NaN counts as idle");
    r.report(info("c", 3, 1), "c", up(500.0), t(0)).unwrap();
    assert_eq!(r.pick(t(0), None).unwrap().port, 2);
}
