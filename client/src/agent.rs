//! The running agent: an async shell around `nts_proto::clock::Agent`. It owns
//! the sources (NTS-KE, cookie jars, NTP exchanges), feeds checked samples to
//! the clock state machine, carries out its commands on the system clock
//! (only in discipline mode with CAP_SYS_TIME), and publishes a status
//! snapshot for `nts-client status`, /metrics and /readyz.

use crate::config::{ClockMode, Config, SourceKind};
use crate::exchange::{exchange, ExchangeError, NtsCredentials};
use crate::ke::{self, KeOutcome};
use crate::status::{SourceReport, StatusReport};
use crate::system_clock::{has_cap_sys_time, SystemClock};
use anyhow::{Context, Result};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::clock::{
    apply_command, Agent, AgentConfig, ClockCommand, Sample, ServerInfo, SourceId, SourceState,
};
use nts_proto::ntp_client::ResponseCheckError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cookies a source tries to hold (placeholders ask the server for the rest).
pub const COOKIE_JAR: usize = 8;

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
    ke: Option<KeOutcome>,
    ke_at: Option<Instant>,
    ntp_addr: Option<SocketAddr>,
    cookies: Vec<Vec<u8>>,
    ke_ok: u64,
    ke_failures: u64,
    naks: u64,
    auth_failures: u64,
    timeouts: u64,
    kiss: Option<String>,
    /// DENY/RSTR kiss: stop polling this source.
    denied: bool,
    last_error: Option<String>,
    last_offset: Option<f64>,
    last_delay: Option<f64>,
    backoff_until: Option<Instant>,
}

impl Source {
    fn authenticated(&self) -> bool {
        matches!(self.kind, SourceKind::Nts | SourceKind::NtsPool)
    }
}

fn unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

async fn expand_sources(cfg: &Config, agent: &mut Agent) -> Vec<Source> {
    let mut out = Vec::new();
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
                None => format!("{host}:{port}"),
            };
            out.push(Source {
                id: agent.add_source(),
                name,
                kind: s.kind,
                host: host.clone(),
                port,
                address,
                ke: None,
                ke_at: None,
                ntp_addr: None,
                cookies: Vec::new(),
                ke_ok: 0,
                ke_failures: 0,
                naks: 0,
                auth_failures: 0,
                timeouts: 0,
                kiss: None,
                denied: false,
                last_error: None,
                last_offset: None,
                last_delay: None,
                backoff_until: None,
            });
        }
    }
    out
}

/// Run one poll of `src`: key exchange if needed, then one NTP exchange.
async fn poll_source(
    src: &mut Source,
    cfg: &Config,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<crate::exchange::Sample, String> {
    let timeout = Duration::from_secs(2);
    if !src.authenticated() {
        let target = match src.address {
            Some(ip) => SocketAddr::new(ip, src.port),
            None => resolve(&src.host, src.port).await?,
        };
        src.ntp_addr = Some(target);
        return exchange(target, None, timeout)
            .await
            .map_err(|e| classify(src, e));
    }
    let stale = src
        .ke_at
        .is_none_or(|t| t.elapsed().as_secs_f64() > cfg.nts.ke_refresh);
    if src.cookies.is_empty() || stale || src.ke.is_none() {
        let ke_host = src
            .address
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| src.host.clone());
        let ko = ke_exchange(
            &ke_host,
            &src.host,
            src.port,
            tls.clone(),
            Duration::from_secs_f64(cfg.nts.ke_timeout),
        )
        .await
        .map_err(|e| {
            src.ke_failures += 1;
            format!("NTS-KE failed: {e}")
        })?;
        src.ke_ok += 1;
        src.ke_at = Some(Instant::now());
        src.cookies = ko.cookies.clone();
        src.ntp_addr = Some(resolve(&ko.ntp_server, ko.ntp_port).await?);
        src.ke = Some(ko);
    }
    let ko = src.ke.as_ref().ok_or("no keys")?;
    let addr = src.ntp_addr.ok_or("no NTP address")?;
    let cookie = src.cookies.pop().ok_or("no cookie")?;
    let placeholders = COOKIE_JAR.saturating_sub(src.cookies.len() + 1);
    let result = exchange(
        addr,
        Some(NtsCredentials {
            cookie: &cookie,
            c2s: &ko.c2s,
            s2c: &ko.s2c,
            placeholders,
        }),
        timeout,
    )
    .await;
    match result {
        Ok(s) => {
            src.cookies.extend(s.cookies.iter().cloned());
            src.cookies.truncate(COOKIE_JAR);
            Ok(s)
        }
        Err(e) => Err(classify(src, e)),
    }
}

/// Book-keeping for a failed exchange; returns the message to report.
fn classify(src: &mut Source, e: ExchangeError) -> String {
    match &e {
        ExchangeError::Timeout(_) => src.timeouts += 1,
        ExchangeError::Check(ResponseCheckError::NtsNak) => {
            src.naks += 1;
            // The server cannot open our cookies: start over with a new key exchange.
            src.cookies.clear();
            src.ke = None;
        }
        ExchangeError::Check(
            ResponseCheckError::AuthenticationFailed | ResponseCheckError::Unauthenticated,
        ) => {
            src.auth_failures += 1;
        }
        ExchangeError::Check(ResponseCheckError::Kiss(code)) => {
            let code_s = String::from_utf8_lossy(code).to_string();
            if code == b"DENY" || code == b"RSTR" {
                src.denied = true;
            }
            if code == b"RATE" {
                // Slow down: hold this source for a while.
                src.backoff_until = Some(Instant::now() + Duration::from_secs(64));
            }
            src.kiss = Some(code_s);
        }
        _ => {}
    }
    e.to_string()
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
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
    SourceReport {
        name: s.name.clone(),
        kind: format!("{:?}", s.kind).to_lowercase(),
        authenticated: s.authenticated(),
        state: ss.map_or("no_data", |x| state_label(x.state)).to_string(),
        reach: ss.map_or(0, |x| x.reach),
        poll: ss.map_or(0.0, |x| x.poll_interval),
        offset: f.map(|f| f.offset).or(s.last_offset),
        delay: f.map(|f| f.delay).or(s.last_delay),
        jitter: f.map(|f| f.jitter),
        stratum: f.map(|f| f.server.stratum),
        ntp_address: s.ntp_addr.map(|a| a.to_string()),
        ke_age: s.ke_at.map(|t| t.elapsed().as_secs_f64()),
        ke_ok: s.ke_ok,
        ke_failures: s.ke_failures,
        cookies: s.cookies.len(),
        naks: s.naks,
        auth_failures: s.auth_failures,
        timeouts: s.timeouts,
        kiss: s.kiss.clone(),
        last_error: s.last_error.clone(),
    }
}

/// Refresh the shared report. Sources being polled right now keep their last entry.
fn publish(
    shared: &Shared,
    agent: &Agent,
    slots: &[Option<Source>],
    cache: &mut [SourceReport],
    started: Instant,
    observe: bool,
    commands: u64,
) {
    let now = started.elapsed().as_secs_f64();
    for (slot, cached) in slots.iter().zip(cache.iter_mut()) {
        if let Some(s) = slot {
            *cached = source_report(agent, s, now);
        }
    }
    let st = agent.status(now);
    let report = StatusReport {
        observe_only: observe,
        synchronized: st.synchronized,
        panicked: st.panicked,
        offset: st.offset,
        offset_sd: st.offset_sd,
        frequency_ppm: st.frequency_ppm,
        poll_exponent: st.poll_exponent,
        updates: st.updates,
        steps: st.steps,
        clock_commands: commands,
        last_update_unix: unix_f64(),
        sources: cache.to_vec(),
    };
    *shared.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
}

/// Run the agent until the task is dropped.
pub async fn run(cfg: Config, shared: Arc<Shared>) -> Result<()> {
    let observe = effective_observe(&cfg);
    let cas: Vec<&std::path::Path> = cfg.nts.ca_files.iter().map(|p| p.as_path()).collect();
    let roots = ke::root_store(&cas, cfg.nts.system_roots).context("nts.ca_files")?;
    let tls = ke::tls_config(roots);
    let mut agent = Agent::new(agent_config(&cfg, observe));
    let sources = expand_sources(&cfg, &mut agent).await;
    let mut clock = (!observe).then(SystemClock::new);
    let started = Instant::now();
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
    let mut polls = tokio::task::JoinSet::new();
    loop {
        let now = started.elapsed().as_secs_f64();
        // The next thing due: a poll of an idle source, or the discipline's deadline.
        let mut due: Option<(f64, Option<usize>)> = agent.next_deadline().map(|d| (d, None));
        for (i, s) in slots.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.denied {
                continue;
            }
            let mut t = agent.next_poll(s.id).unwrap_or(f64::INFINITY);
            if let Some(b) = s.backoff_until {
                t = t.max(b.saturating_duration_since(started).as_secs_f64());
            }
            if due.is_none_or(|(d, _)| t < d) {
                due = Some((t, Some(i)));
            }
        }
        let (when, which) = due.unwrap_or((now + 1.0, None));
        let wait = Duration::from_secs_f64((when - now).clamp(0.0, 3600.0));
        let mut cmds = Vec::new();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let now = started.elapsed().as_secs_f64();
                match which {
                    None => cmds.extend(agent.tick(now)),
                    Some(i) => {
                        if let Some(mut src) = slots[i].take() {
                            agent.poll_sent(src.id, now);
                            let (cfg, tls) = (cfg.clone(), tls.clone());
                            polls.spawn(async move {
                                let r = poll_source(&mut src, &cfg, &tls).await;
                                (i, src, r)
                            });
                        }
                    }
                }
            }
            Some(done) = polls.join_next(), if !polls.is_empty() => {
                let Ok((i, mut src, result)) = done else { continue };
                match result {
                    Ok(m) => {
                        src.last_error = None;
                        src.last_offset = Some(m.offset);
                        src.last_delay = Some(m.delay);
                        let info = ServerInfo::from_header(&m.header);
                        let t2 = m.header.receive_timestamp;
                        let t3 = m.header.transmit_timestamp;
                        match Sample::from_timestamps(m.t1, t2, t3, m.t4, info, 1e-8) {
                            Ok(sample) => cmds.extend(agent.on_sample(src.id, sample, started.elapsed().as_secs_f64())),
                            Err(e) => src.last_error = Some(format!("unusable sample: {e}")),
                        }
                    }
                    Err(e) => {
                        tracing::debug!(source = %src.name, "poll failed: {e}");
                        src.last_error = Some(e);
                    }
                }
                slots[i] = Some(src);
            }
        }
        for cmd in &cmds {
            match (cmd, clock.as_mut()) {
                (ClockCommand::Panic { offset, threshold }, _) => tracing::error!(
                    offset,
                    threshold,
                    "offset beyond the panic threshold: refusing to correct the clock"
                ),
                (_, Some(c)) => {
                    commands += 1;
                    if let ClockCommand::Step { offset } = cmd {
                        tracing::warn!(offset, "stepping the clock");
                    }
                    if let Err(e) = apply_command(c, cmd) {
                        tracing::error!("clock adjustment failed: {e}");
                    }
                }
                (_, None) => {}
            }
        }
        publish(
            &shared, &agent, &slots, &mut cache, started, observe, commands,
        );
    }
}
