//! A fleet restarting together must not storm its KE server: 100 NTS sources
//! (the agent's state machine, real NTS-KE and real NTP on loopback) start
//! cold, then restart with the associations they saved.
//!
//! - Cold start: their first key exchanges spread over `ke_spread` instead of
//!   arriving together (shown as a histogram per second).
//! - Restart with saved associations: zero key exchanges; every source gets
//!   an authenticated answer with the cookies it kept.

use nts_client::exchange::exchange;
use nts_client::ke;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::source::{Association, NtsSource, NtsSourceConfig, SavedAssociation, Step, Verdict};
use nts_proto::time::{MonoTime, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use testkit::stack::{self, KeServerOptions, TimeServerOptions};

const FLEET: usize = 100;
const SPREAD: f64 = 8.0;

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// One authenticated NTP exchange with what the source holds.
async fn poll(src: &mut NtsSource, addrs: &[SocketAddr]) -> Result<(), String> {
    let addr = *addrs.first().ok_or("no address")?;
    let mut req = Vec::new();
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let mut flight = src
        .prepare_request(&mut req, None, &mut rng)
        .ok_or("no cookie")?;
    let (v, _) = exchange(addr, &req, Duration::from_secs(3), |d| {
        match src.on_datagram(d, &mut flight) {
            Verdict::KeepWaiting(_) => None,
            v => Some(v),
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    match v {
        Verdict::Accepted(_) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_restart_spreads_key_exchanges_and_saved_cookies_need_none() {
    let dir = tempfile::tempdir().unwrap();
    let pki = testkit::certs::TestPki::generate().unwrap();
    let root = dir.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    // The whole fleet comes from 127.0.0.1: no per-address limit on this server.
    let ts = stack::start_time_server(
        dir.path(),
        &root,
        &TimeServerOptions {
            extra: "[rate_limit]\nenabled = false\n".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let ke_d = stack::start_ke_server(
        dir.path(),
        &pki,
        &root,
        &KeServerOptions {
            ntp_port: ts.port(),
            server_extra: "connections_per_minute = 0".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let tls = ke::tls_config(ke::root_store(&[pki.ca_path()], false).unwrap());
    let cfg = NtsSourceConfig {
        ke_spread: Duration::from_secs_f64(SPREAD),
        ..Default::default()
    };
    let ke_port = ke_d.port();

    // Cold start: every source begins at the same instant with nothing saved.
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLEET {
        let tls = tls.clone();
        tasks.spawn(async move {
            let mono = || MonoTime::from_duration(t0.elapsed());
            let mut src = NtsSource::new(cfg, mono(), rand::random());
            loop {
                match src.next_step(mono()) {
                    Step::NotBefore(t) => tokio::time::sleep(t.saturating_since(mono())).await,
                    Step::KeyExchange => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let at = mono().as_secs_f64();
            let ko = ke::key_exchange(
                "127.0.0.1",
                ke_port,
                Arc::clone(&tls),
                &AeadAlgorithm::ALL,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            let addrs: Vec<_> = tokio::net::lookup_host((ko.ntp_server.as_str(), ko.ntp_port))
                .await
                .unwrap()
                .collect();
            src.ke_succeeded(
                Association {
                    aead: ko.aead,
                    c2s: ko.c2s,
                    s2c: ko.s2c,
                    ntp_host: ko.ntp_server,
                    ntp_port: ko.ntp_port,
                    established: unix_now(),
                },
                ko.cookies,
                mono(),
            );
            poll(&mut src, &addrs).await.unwrap();
            (at, src.save().unwrap().to_text())
        });
    }
    let mut times = Vec::new();
    let mut saved = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (at, text) = r.unwrap();
        times.push(at);
        saved.push(text);
    }
    times.sort_by(f64::total_cmp);
    let mut buckets = vec![0usize; SPREAD.ceil() as usize + 1];
    let last = buckets.len() - 1;
    for t in &times {
        buckets[(*t as usize).min(last)] += 1;
    }
    let first_second_cold = buckets[0];
    eprintln!(
        "cold start of {FLEET} sources, ke_spread {SPREAD} s: key exchanges per second {buckets:?}, first at {:.2} s, last at {:.2} s",
        times[0],
        times[FLEET - 1]
    );
    assert_eq!(ke_d.metric("nts_ke_key_exchanges_total"), FLEET as f64);
    assert!(
        times[FLEET - 1] - times[0] > SPREAD * 0.6,
        "spread over the window: {times:?}"
    );
    let peak = *buckets.iter().max().unwrap();
    assert!(
        peak <= FLEET * 3 / SPREAD as usize,
        "no second holds more than 3x the even share: {buckets:?}"
    );

    // Restart: every source resumes from what it saved.
    let t1 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for text in saved {
        tasks.spawn(async move {
            let mono = || MonoTime::from_duration(t1.elapsed());
            let back = SavedAssociation::from_text(&text).unwrap();
            let mut src = NtsSource::restored(cfg, back, mono(), unix_now(), rand::random());
            assert_eq!(src.next_step(mono()), Step::Request, "no key exchange due");
            let a = src.association().unwrap();
            let addrs: Vec<_> = tokio::net::lookup_host((a.ntp_host.as_str(), a.ntp_port))
                .await
                .unwrap()
                .collect();
            poll(&mut src, &addrs).await.unwrap();
            src.cookies()
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), 8, "the jar is full again");
        ok += 1;
    }
    eprintln!(
        "restart of {ok} sources with saved associations: {} new key exchanges, all answered in {:.2} s (cold start put {first_second_cold} in its first second)",
        ke_d.metric("nts_ke_key_exchanges_total") - FLEET as f64,
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(ok, FLEET);
    assert_eq!(
        ke_d.metric("nts_ke_key_exchanges_total"),
        FLEET as f64,
        "zero key exchanges after the restart"
    );
    drop(ts);
}
