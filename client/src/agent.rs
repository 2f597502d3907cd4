//! The running agent: an async shell around `nts_proto::clock::Agent`. It owns
//! the sources (NTS-KE, cookie jars, NTP exchanges), feeds checked samples to
//! the clock state machine, carries out its commands on the system clock
//! (only in discipline mode with CAP_SYS_TIME), and publishes a status
//! snapshot for `nts-client status`, /metrics and /readyz.

use crate::association_file::{prepare_state_dir, AssociationFile};
use crate::config::{ClockMode, Config, SourceKind};
use crate::exchange::{exchange, plain_exchange, ExchangeError, Sample as Measured};
use crate::ke::{self, KeOutcome};
use crate::state_dir::StateDir;
use crate::status::{SourceReport, StatusReport, Tracking};
use crate::system_clock::{has_cap_sys_time, SystemClock};
use anyhow::{Context, Result};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::clock::{
    apply_command, Agent, AgentConfig, AgentStatus, Clock, ClockCommand, InitialFrequency,
    LeapStatus, Sample, ServerInfo, SourceId, SourceState,
};
use nts_proto::interleaved::InterleavedClient;
use nts_proto::ntp_client::ResponseCheckError;
use nts_proto::nts_source::{Association, NtsSource, NtsSourceConfig, Step, Transition, Verdict};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cookies a source tries to hold (placeholders ask the server for the rest).
pub const COOKIE_JAR: usize = nts_proto::nts_source::DEFAULT_JAR_SIZE;

/// What one source is and how it stands.
struct Source {
    id: SourceId,
    name: String,
    kind: SourceKind,
    /// KE server (NTS) or NTP server (plain) host and port.
    host: String,
    port: u16,
    /// For pool members: the address to contact; the name stays the TLS server name.
    address: Option<std::net::IpAddr>,
    /// The NTS association (NTS sources only).
    nts: Option<NtsSource>,
    /// Where the association is kept across restarts.
    state_file: Option<AssociationFile>,
    /// Plain NTP: the resolved server.
    ntp_addr: Option<SocketAddr>,
    timeouts: u64,
    in_timeouts: bool,
    kiss: Option<String>,
    /// DENY/RSTR kiss: stop polling this source.
    denied: bool,
    backoff_until: Option<Instant>,
    ke_failures_in_row: u32,
    /// A key exchange moved the source to another time server: forget its samples.
    server_changed: bool,
    last_error: Option<String>,
    last_offset: Option<f64>,
    last_delay: Option<f64>,
    /// Unix time of the last usable sample.
    last_sample_unix: Option<f64>,
    /// Interleaved mode state (`xleave = true`), and the server it refers to.
    xleave: Option<InterleavedClient>,
    xleave_server: Option<SocketAddr>,
}

impl Source {
    /// The interleaved-mode state for exchanges with `server`, forgotten when
    /// the source moves to another server (the previous exchange was not with it).
    fn interleave_state(&mut self, server: SocketAddr) -> Option<&mut InterleavedClient> {
        let x = self.xleave.as_mut()?;
        if self.xleave_server != Some(server) {
            x.reset();
            self.xleave_server = Some(server);
        }
        Some(x)
    }

    fn authenticated(&self) -> bool {
        self.nts.is_some()
    }

    /// Where NTP requests go now.
    fn current_ntp_addr(&self) -> Option<SocketAddr> {
        match &self.nts {
            Some(n) => n.address(),
            None => self.ntp_addr,
        }
    }
}

fn unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Monotonic seconds since the process-wide epoch (CLOCK_MONOTONIC based).
fn mono(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Everything shared with the status socket and the metrics endpoint.
pub struct Shared {
    pub report: Mutex<StatusReport>,
}

fn agent_config(cfg: &Config, observe: bool) -> AgentConfig {
    let mut a = AgentConfig::default();
    a.select.min_sources = cfg.clock.min_sources;
    a.discipline.step_threshold = cfg.clock.step_threshold;
    a.discipline.step_limit = cfg.clock.step_limit;
    a.discipline.panic_threshold = Some(cfg.clock.panic_threshold);
    a.discipline.max_frequency_ppm = cfg.clock.max_frequency;
    a.discipline.min_poll = cfg.clock.minpoll;
    a.discipline.max_poll = cfg.clock.maxpoll;
    a.discipline.observe_only = observe;
    a
}

/// Decide whether the clock may be touched: only in discipline mode with CAP_SYS_TIME.
pub fn effective_observe(cfg: &Config) -> bool {
    match cfg.clock.mode {
        ClockMode::Observe => true,
        ClockMode::Discipline if has_cap_sys_time() => false,
        ClockMode::Discipline => {
            tracing::warn!(
                "clock.mode = \"discipline\" but this process lacks CAP_SYS_TIME: running observe-only (measuring, never adjusting)"
            );
            true
        }
    }
}

fn nts_config(cfg: &Config) -> NtsSourceConfig {
    NtsSourceConfig {
        jar_size: COOKIE_JAR,
        ke_refresh: cfg.nts.ke_refresh,
        ke_spread: cfg.nts.ke_spread,
        ke_backoff_min: cfg.nts.ke_backoff_min,
        ke_backoff_max: cfg.nts.ke_backoff_max,
        unreachable_polls: cfg.nts.unreachable_polls,
        ..NtsSourceConfig::default()
    }
}

fn save_source(src: &Source) {
    let (Some(file), Some(nts)) = (&src.state_file, &src.nts) else {
        return;
    };
    if let Err(e) = file.store(nts.save().as_ref()) {
        tracing::warn!(source = %src.name, "cannot save NTS cookies: {e}");
    }
}

/// The sources of the configuration (pools expanded). A saved association
/// that fails the state-directory rules stops start-up.
async fn expand_sources(
    cfg: &Config,
    state: Option<&Arc<StateDir>>,
    agent: &mut Agent,
    started: Instant,
) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let now = mono(started);
    let unix_now = unix_f64() as u64;
    for s in &cfg.sources {
        let default = match s.kind {
            SourceKind::Nts | SourceKind::NtsPool => ke::DEFAULT_KE_PORT,
            SourceKind::Ntp | SourceKind::Pool => ke::DEFAULT_NTP_PORT,
        };
        let Ok((host, port)) = crate::split_host_port(&s.address, default) else {
            continue;
        };
        let members: Vec<Option<std::net::IpAddr>> = match s.kind {
            SourceKind::Nts | SourceKind::Ntp => vec![None],
            SourceKind::NtsPool | SourceKind::Pool => {
                match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => {
                        let mut v: Vec<_> = addrs.map(|a| Some(a.ip())).collect();
                        v.dedup();
                        v.truncate(s.max_sources);
                        if v.is_empty() {
                            tracing::warn!(pool = %host, "pool name has no addresses");
                        }
                        v
                    }
                    Err(e) => {
                        tracing::warn!(pool = %host, "cannot resolve pool: {e}");
                        Vec::new()
                    }
                }
            }
        };
        for address in members {
            let name = match address {
                Some(ip) => format!("{host}[{ip}]"),
                None => host_port(&host, port),
            };
            let authenticated = matches!(s.kind, SourceKind::Nts | SourceKind::NtsPool);
            let state_file = state
                .filter(|_| authenticated)
                .map(|d| AssociationFile::new(d.clone(), &name));
            let saved = match &state_file {
                Some(f) => f
                    .load()
                    .map_err(|e| anyhow::anyhow!("nts.state_dir: {e}"))?,
                None => None,
            };
            let nts = authenticated.then(|| {
                let jitter: f64 = rand::random();
                match saved {
                    Some(saved) => {
                        let src =
                            NtsSource::restored(nts_config(cfg), saved, now, unix_now, jitter);
                        if src.cookies() > 0 {
                            tracing::info!(
                                source = %name,
                                cookies = src.cookies(),
                                "resuming the saved NTS association: no key exchange needed"
                            );
                        } else {
                            tracing::info!(source = %name, "saved NTS association too old: a key exchange is due");
                        }
                        src
                    }
                    None => NtsSource::new(nts_config(cfg), now, jitter),
                }
            });
            out.push(Source {
                id: agent.add_source(),
                name,
                kind: s.kind,
                host: host.clone(),
                port,
                address,
                nts,
                state_file,
                ntp_addr: None,
                timeouts: 0,
                in_timeouts: false,
                kiss: None,
                denied: false,
                backoff_until: None,
                ke_failures_in_row: 0,
                server_changed: false,
                last_error: None,
                last_offset: None,
                last_delay: None,
                last_sample_unix: None,
                xleave: s.xleave.then(InterleavedClient::new),
                xleave_server: None,
            });
        }
    }
    Ok(out)
}

/// Every address of `host`, IPv6 and IPv4 interleaved so that a broken
/// family costs one poll, not all of them.
async fn resolve_all(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    let out = interleave_families(addrs);
    if out.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(out)
}

/// IPv6 and IPv4 addresses alternating (IPv6 first), duplicates removed.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    let (v6, v4): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .filter(|a| seen.insert(*a))
        .partition(|a| a.is_ipv6());
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

/// What a poll produced.
enum PollError {
    /// Not due yet (key exchange backing off): no request was sent.
    NotYet,
    Failed(String),
}

/// Run one poll of `src`: key exchange if due, then one NTP exchange.
async fn poll_source(
    src: &mut Source,
    cfg: &Config,
    tls: &Arc<rustls::ClientConfig>,
    started: Instant,
) -> Result<Measured, PollError> {
    let timeout = Duration::from_secs_f64(cfg.nts.request_timeout);
    if src.nts.is_none() {
        let target = match (src.address, src.ntp_addr) {
            (Some(ip), _) => SocketAddr::new(ip, src.port),
            (None, Some(a)) => a,
            (None, None) => *resolve_all(&src.host, src.port)
                .await
                .map_err(PollError::Failed)?
                .first()
                .ok_or(PollError::NotYet)?,
        };
        src.ntp_addr = Some(target);
        let xleave = src.interleave_state(target);
        return match plain_exchange(target, timeout, xleave).await {
            Ok(m) => {
                src.in_timeouts = false;
                Ok(m)
            }
            Err(e) => Err(PollError::Failed(plain_failure(src, e))),
        };
    }
    let now = mono(started);
    let step = src.nts.as_mut().map(|n| n.next_step(now));
    match step {
        Some(Step::KeyExchange) => key_exchange_for(src, cfg, tls, started).await?,
        Some(Step::Request) => {}
        Some(Step::NotBefore(_)) => return Err(PollError::NotYet),
        Some(Step::Stopped) | None => {
            src.denied = true;
            return Err(PollError::NotYet);
        }
    }
    let nts = src.nts.as_mut().ok_or(PollError::NotYet)?;
    if nts.address().is_none() {
        // A restored association: resolve its time server now.
        let a = nts.association().ok_or(PollError::NotYet)?;
        let (h, p) = (a.ntp_host.clone(), a.ntp_port);
        let addrs = resolve_all(&h, p).await.map_err(PollError::Failed)?;
        nts.set_addresses(addrs);
    }
    let addr = nts.address().ok_or(PollError::NotYet)?;
    let mut req = Vec::with_capacity(1024);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let fields = src.xleave.as_ref().and_then(|x| {
        (src.xleave_server == Some(addr))
            .then(|| x.request_fields())
            .flatten()
    });
    let nts = src.nts.as_mut().ok_or(PollError::NotYet)?;
    let Some(mut flight) = nts.prepare_request_interleaved(&mut req, fields, &mut rng) else {
        return Err(PollError::NotYet);
    };
    let result = exchange(addr, &req, timeout, |d| match nts.on_datagram(d, &mut flight) {
        Verdict::KeepWaiting(why) => {
            if why.is_none() {
                tracing::info!(source = %src.name, server = %addr, "NTS NAK received: waiting for an authentic answer before acting on it");
            } else {
                tracing::debug!(source = %src.name, server = %addr, "ignored a datagram: {why:?}");
            }
            None
        }
        v => Some(v),
    })
    .await;
    let now = mono(started);
    let out = match result {
        Ok((verdict, timing)) => {
            let t = nts.exchange_done(&verdict, now);
            log_transition(&src.name, addr, t);
            match verdict {
                Verdict::Accepted(header) => {
                    let xleave = src.interleave_state(addr);
                    Ok(Measured::with_interleave(
                        header,
                        timing,
                        true,
                        flight.interleaved,
                        xleave,
                    ))
                }
                Verdict::Kiss(code) => {
                    let code_s = nts_proto::ntp_packet::kiss::text(&code);
                    tracing::warn!(source = %src.name, server = %addr, kiss = %code_s, "authenticated kiss-o'-death");
                    src.kiss = Some(code_s.clone());
                    if nts.stopped_by().is_some() {
                        src.denied = true;
                    }
                    Err(PollError::Failed(format!("kiss-o'-death {code_s}")))
                }
                Verdict::KeepWaiting(_) => Err(PollError::Failed("no answer".into())),
            }
        }
        Err(ExchangeError::Timeout(t)) => {
            let tr = nts.timed_out(&flight);
            log_transition(&src.name, addr, tr);
            Err(PollError::Failed(format!(
                "no authentic answer within {t:?}"
            )))
        }
        Err(e) => {
            nts.timed_out(&flight);
            Err(PollError::Failed(e.to_string()))
        }
    };
    save_source(src);
    out
}

fn log_transition(name: &str, server: SocketAddr, t: Option<Transition>) {
    match t {
        Some(Transition::TimeoutsBegan) => {
            tracing::warn!(source = %name, %server, "time server stopped answering")
        }
        Some(Transition::Answering { after }) => {
            tracing::info!(source = %name, %server, "time server answers again after {after} missed polls")
        }
        Some(Transition::RekeyDue(why)) => {
            tracing::warn!(source = %name, %server, "new key exchange due: {}", why.as_str())
        }
        None => {}
    }
}

/// Run NTS-KE for `src` and install the result (or back off).
async fn key_exchange_for(
    src: &mut Source,
    cfg: &Config,
    tls: &Arc<rustls::ClientConfig>,
    started: Instant,
) -> Result<(), PollError> {
    let ke_host = src
        .address
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| src.host.clone());
    let reason = src
        .nts
        .as_ref()
        .and_then(|n| n.rekey_reason())
        .map_or("", |r| r.as_str());
    let result = ke_exchange(
        &ke_host,
        &src.host,
        src.port,
        tls.clone(),
        Duration::from_secs_f64(cfg.nts.ke_timeout),
    )
    .await
    .map_err(|e| e.to_string());
    let result = match result {
        Ok(ko) => resolve_all(&ko.ntp_server, ko.ntp_port)
            .await
            .and_then(|addrs| {
                nts_proto::nts_source::usable_server_addresses(
                    addrs,
                    &cfg.nts.own_addresses,
                    cfg.nts.allow_own_host,
                )
                .map_err(|e| e.to_string())
            })
            .map(|addrs| (ko, addrs)),
        Err(e) => Err(format!("NTS-KE failed: {e}")),
    };
    let now = mono(started);
    let nts = src.nts.as_mut().ok_or(PollError::NotYet)?;
    match result {
        Ok((ko, addrs)) => {
            let server = host_port(&ko.ntp_server, ko.ntp_port);
            let assoc = Association {
                aead: ko.aead,
                c2s: ko.c2s,
                s2c: ko.s2c,
                ntp_host: ko.ntp_server,
                ntp_port: ko.ntp_port,
                established_unix: unix_f64() as u64,
            };
            let cookies = ko.cookies.len();
            let changed = nts.ke_succeeded(assoc, ko.cookies, now);
            nts.set_addresses(addrs);
            if src.ke_failures_in_row > 0 {
                tracing::info!(source = %src.name, failures = src.ke_failures_in_row, "key exchange succeeded after failed attempts");
            }
            src.ke_failures_in_row = 0;
            src.server_changed |= changed;
            if changed {
                tracing::info!(source = %src.name, time_server = %server, cookies, reason, "key exchange done: using a new time server");
            } else {
                tracing::info!(source = %src.name, time_server = %server, cookies, reason, "key exchange done");
            }
            save_source(src);
            Ok(())
        }
        Err(e) => {
            let next = nts.ke_failed(now, rand::random());
            src.ke_failures_in_row += 1;
            let wait = (next - now).max(0.0);
            // Each attempt once: the backoff doubles, so these stay few.
            if src.ke_failures_in_row == 1 {
                tracing::warn!(source = %src.name, "key exchange failed: {e}; next attempt in {wait:.0} s, backing off to nts.ke_backoff_max");
            } else {
                tracing::info!(source = %src.name, failures = src.ke_failures_in_row, "key exchange failed again: {e}; next attempt in {wait:.0} s");
            }
            Err(PollError::Failed(e))
        }
    }
}

/// Book-keeping for a failed plain exchange; returns the message to report.
fn plain_failure(src: &mut Source, e: ExchangeError) -> String {
    match &e {
        ExchangeError::Timeout(_) => {
            src.timeouts += 1;
            if !src.in_timeouts {
                src.in_timeouts = true;
                tracing::warn!(source = %src.name, "server stopped answering");
            }
        }
        ExchangeError::Check(ResponseCheckError::Kiss(code)) => {
            let code_s = nts_proto::ntp_packet::kiss::text(code);
            if code == b"DENY" || code == b"RSTR" {
                src.denied = true;
            }
            if code == b"RATE" {
                // Slow down: hold this source for a while.
                src.backoff_until = Some(Instant::now() + Duration::from_secs(64));
            }
            tracing::warn!(source = %src.name, kiss = %code_s, "kiss-o'-death (unauthenticated source)");
            src.kiss = Some(code_s);
        }
        _ => {}
    }
    e.to_string()
}

/// Key exchange with `connect_host` (a name or address), verifying the certificate for `tls_name`.
async fn ke_exchange(
    connect_host: &str,
    tls_name: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<KeOutcome, ke::KeError> {
    if connect_host == tls_name {
        return ke::key_exchange(tls_name, port, tls, &AeadAlgorithm::ALL, timeout).await;
    }
    ke::key_exchange_at(
        connect_host,
        tls_name,
        port,
        tls,
        &AeadAlgorithm::ALL,
        timeout,
    )
    .await
}

fn state_label(s: SourceState) -> &'static str {
    match s {
        SourceState::NoData => "no_data",
        SourceState::Unselectable => "unselectable",
        SourceState::Falseticker => "falseticker",
        SourceState::Outlier => "outlier",
        SourceState::Survivor => "combined",
        SourceState::SystemPeer => "selected",
    }
}

fn source_report(agent: &Agent, s: &Source, now: f64) -> SourceReport {
    let ss = agent.source_status(s.id, now);
    let f = ss.as_ref().and_then(|x| x.filter);
    let reach = ss.map_or(0, |x| x.reach);
    let mut state = ss.map_or("no_data", |x| state_label(x.state));
    // The last selection may predate the silence: never show an unreachable source as used.
    if reach == 0 && state != "no_data" {
        state = "unreachable";
    }
    if s.denied {
        state = "stopped";
    }
    let nts = s.nts.as_ref();
    let c = nts.map(|n| *n.counters()).unwrap_or_default();
    SourceReport {
        name: s.name.clone(),
        kind: format!("{:?}", s.kind).to_lowercase(),
        authenticated: s.authenticated(),
        state: state.to_string(),
        reach,
        poll: ss.map_or(0.0, |x| x.poll_interval),
        offset: f.map(|f| f.offset).or(s.last_offset),
        delay: f.map(|f| f.delay).or(s.last_delay),
        jitter: f.map(|f| f.jitter),
        stratum: f.map(|f| f.server.stratum),
        ntp_server: nts
            .and_then(|n| n.association())
            .map(|a| host_port(&a.ntp_host, a.ntp_port)),
        ntp_address: s.current_ntp_addr().map(|a| a.to_string()),
        aead: nts
            .and_then(|n| n.association())
            .map(|a| a.aead.name().to_string()),
        ke_age: nts.and_then(|n| n.association_age(now)),
        ke_next_in: nts.and_then(|n| n.next_key_exchange_in(now)),
        ke_ok: c.ke_ok,
        ke_failures: c.ke_failures,
        cookies: nts.map_or(0, |n| n.cookies()),
        naks: c.naks,
        auth_failures: c.ignored_forged,
        ignored: c.ignored(),
        ignored_unauthenticated: c.ignored_unauthenticated,
        ignored_mismatch: c.ignored_mismatch,
        ignored_malformed: c.ignored_malformed,
        requests: c.requests,
        timeouts: c.timeouts + s.timeouts,
        missed_polls: nts.map_or(0, |n| n.missed_polls()),
        rekey_due: nts
            .and_then(|n| n.rekey_reason())
            .map(|r| r.as_str().to_string()),
        kiss: s.kiss.clone(),
        last_sample_age: s.last_sample_unix.map(|t| (unix_f64() - t).max(0.0)),
        last_error: s.last_error.clone(),
        xleave: s.xleave.is_some(),
        interleaved_answers: s.xleave.as_ref().map_or(0, |x| x.counts().0),
        basic_answers: s.xleave.as_ref().map_or(0, |x| x.counts().1),
    }
}

/// What the shell remembers between reports.
#[derive(Default)]
struct TrackState {
    updates_seen: u64,
    last_update_unix: Option<f64>,
    system_peer: Option<SourceId>,
    leap: LeapStatus,
    panicked: bool,
}

/// Say when the panic threshold starts refusing the offset (naming it and
/// the key) and when it stops: once per change, not once per poll.
fn log_panic_change(agent: &Agent, st: &AgentStatus, observe: bool, track: &mut TrackState) {
    if st.panicked == track.panicked {
        return;
    }
    track.panicked = st.panicked;
    let threshold = agent
        .config()
        .discipline
        .panic_threshold
        .unwrap_or(f64::INFINITY);
    match st.refused_offset.filter(|_| st.panicked) {
        Some(offset) => tracing::warn!(
            offset,
            threshold,
            "offset beyond clock.panic_threshold: {}",
            if observe {
                "observe-only, but disciplining would refuse to correct the clock"
            } else {
                "refusing to correct the clock"
            }
        ),
        None => tracing::info!(threshold, "offset back within clock.panic_threshold"),
    }
}

/// Refresh the shared report. Sources being polled right now keep their last entry.
#[allow(clippy::too_many_arguments)]
fn publish(
    shared: &Shared,
    agent: &Agent,
    slots: &[Option<Source>],
    cache: &mut [SourceReport],
    started: Instant,
    observe: bool,
    commands: u64,
    track: &mut TrackState,
) {
    let now = mono(started);
    for (slot, cached) in slots.iter().zip(cache.iter_mut()) {
        if let Some(s) = slot {
            *cached = source_report(agent, s, now);
        }
    }
    let st = agent.status(now);
    if st.updates != track.updates_seen {
        track.updates_seen = st.updates;
        track.last_update_unix = Some(unix_f64());
    }
    let ids = agent.source_ids();
    let name_of = |id: SourceId| ids.iter().position(|x| *x == id).and_then(|i| cache.get(i));
    // Selection and leap changes, logged once each.
    let peer = st.selection.as_ref().ok().map(|s| s.system_peer);
    if peer != track.system_peer {
        match peer.and_then(name_of) {
            Some(r) => tracing::info!(source = %r.name, "selected as the reference source"),
            None => tracing::warn!("no source selectable: {:?}", st.selection.as_ref().err()),
        }
        track.system_peer = peer;
    }
    log_panic_change(agent, &st, observe, track);
    if st.leap.announced != track.leap {
        track.leap = st.leap.announced;
        match (st.leap.announced, st.leap.at_unix) {
            (LeapStatus::None, _) => tracing::info!("no leap second announced any more"),
            (l, Some(at)) => tracing::warn!(
                source = st.leap.source.as_str(),
                "leap second announced: {}{}",
                nts_proto::clock::leap::format_leap_second(at, l),
                if observe {
                    " (observe-only: reported, the kernel is not told)"
                } else {
                    ""
                }
            ),
            (l, None) => tracing::warn!("leap second announced: {}", l.as_str()),
        }
    }
    let t = st.tracking.as_ref();
    let peer_report = t.and_then(|t| name_of(t.reference));
    let tracking = Tracking {
        reference: peer_report.map(|r| r.name.clone()),
        reference_time_server: peer_report.and_then(|r| r.ntp_address.clone()),
        stratum: t.map(|t| t.stratum),
        reference_time_unix: t
            .map(|t| {
                t.reference_time
                    .to_unix_f64(nts_proto::clock::agent::NTP_ERA_PIVOT_UNIX)
            })
            .filter(|u| *u > 0.0),
        system_time_offset: st.offset,
        last_offset: t.and_then(|t| t.last_offset),
        rms_offset: t.and_then(|t| t.rms_offset),
        frequency_ppm: st.frequency_ppm,
        estimated_frequency_ppm: st.estimated_frequency_ppm,
        residual_frequency_ppm: st.residual_frequency_ppm,
        skew_ppm: st.frequency_sd_ppm,
        root_delay: t.map(|t| t.root_delay),
        root_dispersion: t.map(|t| t.root_dispersion),
        update_interval: t
            .and_then(|t| t.update_interval)
            .unwrap_or_else(|| 2f64.powi(i32::from(st.poll_exponent))),
        last_update_age: t.and_then(|t| t.last_update_age),
        last_sample_age: t.and_then(|t| t.last_sample_age),
        leap_status: match (st.leap.status, st.leap.announced) {
            (LeapStatus::Insert, _) => "insert second (armed)".into(),
            (LeapStatus::Delete, _) => "delete second (armed)".into(),
            (_, LeapStatus::Insert) => "insert second at the end of the month".into(),
            (_, LeapStatus::Delete) => "delete second at the end of the month".into(),
            _ if t.is_some() => "normal".into(),
            _ => "not synchronised".into(),
        },
        leap_at: st
            .leap
            .at_unix
            .filter(|_| st.leap.announced != LeapStatus::None)
            .map(|a| nts_proto::clock::leap::format_leap_second(a, st.leap.announced)),
    };
    let reachable_peer = peer_report.is_some_and(|r| r.reach != 0);
    let report = StatusReport {
        observe_only: observe,
        synchronized: st.synchronized && reachable_peer,
        panicked: st.panicked,
        offset: st.offset,
        offset_sd: st.offset_sd,
        frequency_ppm: st.frequency_ppm,
        poll_exponent: st.poll_exponent,
        updates: st.updates,
        steps: st.steps,
        clock_commands: commands,
        last_update_unix: track.last_update_unix,
        tracking,
        sources: cache.to_vec(),
    };
    *shared.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
}

/// The frequency to start from: the drift file (discipline mode), else what
/// the kernel has in force (a read, never a change), so a restart does not
/// disturb a clock that is already disciplined.
fn initial_frequency(cfg: &Config, observe: bool, acfg: &mut AgentConfig) -> Result<()> {
    let drift = match (&cfg.clock.drift_file, observe) {
        (Some(p), false) => crate::drift_file::read(p).context("clock.drift_file")?,
        _ => None,
    };
    let kernel = SystemClock::new();
    let reading = match (kernel.frequency(), kernel.sync_status()) {
        (Ok(f), Ok(s)) => Some((f, s)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot read the kernel's frequency: {e}");
            None
        }
    };
    let init = InitialFrequency::decide(
        drift.as_ref().map(|d| (d, crate::drift_file::unix_now())),
        reading.as_ref().map(|(f, s)| (*f, s)),
        acfg.discipline.wander,
    );
    init.apply(&mut acfg.discipline);
    tracing::info!(
        ppm = init.ppm,
        uncertainty_ppm = init.uncertainty_ppm,
        origin = ?init.origin,
        "starting frequency"
    );
    Ok(())
}

/// Run the agent until `stop` turns true; then end a slew in progress and
/// write the drift file, so the kernel is left at the frequency found.
pub async fn run(
    cfg: Config,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let observe = effective_observe(&cfg);
    let cas: Vec<&std::path::Path> = cfg.nts.ca_files.iter().map(|p| p.as_path()).collect();
    let roots = ke::root_store(&cas, cfg.nts.system_roots).context("nts.ca_files")?;
    let tls = ke::tls_config(roots);
    let state = prepare_state_dir(&cfg)?;
    let started = Instant::now();
    let mut acfg = agent_config(&cfg, observe);
    initial_frequency(&cfg, observe, &mut acfg)?;
    let mut agent = Agent::new(acfg);
    if let Some(p) = &cfg.clock.leap_seconds_file {
        let list = crate::leap_file::read(p).context("clock.leap_seconds_file")?;
        if !list.is_valid_at(unix_f64()) {
            tracing::warn!(
                file = %p.display(),
                expired = %nts_proto::clock::leap::format_unix(list.expires_unix()),
                "leap-seconds list has expired: the sources decide leap seconds"
            );
        }
        agent.set_leap_seconds_list(Some(list));
    }
    let mut drift_writer = match (&cfg.clock.drift_file, observe) {
        (Some(p), false) => Some(crate::drift_file::DriftWriter::new(
            p.clone(),
            Duration::from_secs_f64(cfg.clock.drift_interval),
        )),
        _ => None,
    };
    let sources = expand_sources(&cfg, state.as_ref(), &mut agent, started).await?;
    let mut clock = (!observe).then(SystemClock::new);
    let mut commands = 0u64;
    tracing::info!(
        sources = sources.len(),
        mode = if observe {
            "observe-only"
        } else {
            "discipline"
        },
        "agent started"
    );
    let mut cache: Vec<SourceReport> = sources
        .iter()
        .map(|s| source_report(&agent, s, 0.0))
        .collect();
    // A source is in its slot while idle, and out of it (in a task) while being polled,
    // so a slow or silent server never holds up the others.
    let mut slots: Vec<Option<Source>> = sources.into_iter().map(Some).collect();
    let cfg = Arc::new(cfg);
    let mut track = TrackState::default();
    let mut polls = tokio::task::JoinSet::new();
    loop {
        let now = mono(started);
        // The next thing due: a poll of an idle source, or the discipline's deadline.
        let mut due: Option<(f64, Option<usize>)> = agent.next_deadline().map(|d| (d, None));
        for (i, s) in slots.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            if s.denied {
                continue;
            }
            let mut t = agent.next_poll(s.id).unwrap_or(f64::INFINITY);
            if let Some(b) = s.backoff_until {
                t = t.max(b.saturating_duration_since(started).as_secs_f64());
            }
            if let Some(n) = s.nts.as_mut() {
                match n.next_step(now) {
                    Step::NotBefore(nb) => t = t.max(nb),
                    Step::Stopped => {
                        s.denied = true;
                        continue;
                    }
                    Step::KeyExchange | Step::Request => {}
                }
            }
            if due.is_none_or(|(d, _)| t < d) {
                due = Some((t, Some(i)));
            }
        }
        let (when, which) = due.unwrap_or((now + 1.0, None));
        let wait = Duration::from_secs_f64((when - now).clamp(0.0, 3600.0));
        let mut cmds = Vec::new();
        let mut stopping = false;
        tokio::select! {
            _ = stop.changed() => {
                stopping = true;
                cmds.extend(agent.shutdown(mono(started)));
            }
            _ = tokio::time::sleep(wait) => {
                let now = mono(started);
                match which {
                    None => cmds.extend(agent.tick(now)),
                    Some(i) => {
                        if let Some(mut src) = slots[i].take() {
                            agent.poll_sent(src.id, now);
                            let (cfg, tls) = (cfg.clone(), tls.clone());
                            polls.spawn(async move {
                                let r = poll_source(&mut src, &cfg, &tls, started).await;
                                (i, src, r)
                            });
                        }
                    }
                }
            }
            Some(done) = polls.join_next(), if !polls.is_empty() => {
                let Ok((i, mut src, result)) = done else { continue };
                if std::mem::take(&mut src.server_changed) {
                    agent.reset_source(src.id);
                }
                match result {
                    Ok(m) if m.unsynchronized() => {
                        src.last_error = Some("server is unsynchronized (leap indicator 3 or stratum 0/16)".into());
                    }
                    Ok(m) => {
                        src.last_error = None;
                        src.last_offset = Some(m.offset);
                        src.last_delay = Some(m.delay);
                        src.last_sample_unix = Some(unix_f64());
                        let info = ServerInfo::from_header(&m.header);
                        match Sample::from_timestamps(m.t1, m.t2, m.t3, m.t4, info, 1e-8) {
                            Ok(sample) => cmds.extend(agent.on_sample(src.id, sample, mono(started))),
                            Err(e) => src.last_error = Some(format!("unusable sample: {e}")),
                        }
                    }
                    Err(PollError::NotYet) => {}
                    Err(PollError::Failed(e)) => {
                        tracing::debug!(source = %src.name, "poll failed: {e}");
                        src.last_error = Some(e);
                    }
                }
                slots[i] = Some(src);
            }
        }
        for cmd in &cmds {
            match (cmd, clock.as_mut()) {
                // Logged once per change by log_panic_change.
                (ClockCommand::Panic { offset, threshold }, _) => {
                    tracing::debug!(offset, threshold, "panic threshold: correction refused")
                }
                (_, Some(c)) => {
                    commands += 1;
                    match cmd {
                        ClockCommand::Step { offset } => {
                            tracing::warn!(offset, "stepping the clock")
                        }
                        ClockCommand::SetLeap(l) => {
                            tracing::warn!(
                                leap = l.as_str(),
                                "telling the kernel about the leap second"
                            )
                        }
                        _ => {}
                    }
                    if let Err(e) = apply_command(c, cmd) {
                        tracing::error!("clock adjustment failed: {e}");
                    }
                }
                (_, None) => {}
            }
        }
        if let Some(w) = drift_writer.as_mut() {
            let record = agent.drift_record(mono(started));
            if let Err(e) = w.maybe_write(record, Instant::now(), stopping) {
                tracing::warn!("{e}");
            }
        }
        publish(
            &shared, &agent, &slots, &mut cache, started, observe, commands, &mut track,
        );
        if stopping {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_without_duplicates() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = interleave_families(vec![
            a("192.0.2.1:123"),
            a("192.0.2.2:123"),
            a("[2001:db8::1]:123"),
            a("192.0.2.1:123"),
            a("192.0.2.3:123"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:123"),
                a("192.0.2.1:123"),
                a("192.0.2.2:123"),
                a("192.0.2.3:123")
            ]
        );
        assert!(interleave_families(Vec::new()).is_empty());
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 4460), "[::1]:4460");
        assert_eq!(host_port("time.example", 4460), "time.example:4460");
    }
}
