//! `nts-client query`: one measurement against one server, like `chronyd -Q`
//! or `ntpdig`, with NTS by default.

use crate::exchange::{exchange, plain_exchange, timestamps, ExchangeError};
use crate::ke::{self, KeError, DEFAULT_KE_PORT, DEFAULT_NTP_PORT};
use anyhow::{Context, Result};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::interleaved::InterleavedClient;
use nts_proto::source::{
    interleave_families, Association, Measurement as Sample, NtsSource, NtsSourceConfig, Unusable,
    Verdict,
};
use nts_proto::time::{MonoTime, UnixTime};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What to query and how.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// `HOST` or `HOST:PORT` (KE port with NTS, NTP port without).
    pub server: String,
    pub nts: bool,
    pub ca_files: Vec<PathBuf>,
    pub system_roots: bool,
    pub timeout: Duration,
    /// Samples to take; the one with the least delay is reported.
    pub samples: u32,
    /// Seconds between samples.
    pub interval: Duration,
    /// Ask for interleaved mode.
    pub xleave: bool,
}

/// The result, printed as text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct QueryReport {
    pub server: String,
    /// Where the NTP request went (after Server/Port Negotiation).
    pub ntp_address: String,
    pub authenticated: bool,
    pub aead: Option<String>,
    pub cookies_from_ke: Option<usize>,
    /// Cookies held after the last exchange (NTS only).
    pub cookies_held: Option<usize>,
    /// Answers received and requests that got none (retried).
    pub samples: u32,
    pub lost: u32,
    /// Answers that came in interleaved mode (with `--xleave`).
    pub interleaved: u32,
    /// The reported sample was measured in interleaved mode.
    pub reported_interleaved: bool,
    /// Datagrams ignored (forged, stray, NAK) while waiting (NTS only).
    pub ignored: u64,
    /// Set when the server says it is not synchronized: the offset is only informative.
    pub warning: Option<String>,
    /// Server minus local clock, seconds.
    pub offset: f64,
    /// Round-trip delay, seconds.
    pub delay: f64,
    pub stratum: u8,
    pub leap: u8,
    pub reference_id: String,
    pub root_delay: f64,
    pub root_dispersion: f64,
}

fn refid(id: [u8; 4], stratum: u8) -> String {
    if stratum <= 1 && id.iter().all(|b| b.is_ascii_graphic() || *b == 0) {
        String::from_utf8_lossy(&id)
            .trim_end_matches('\0')
            .to_string()
    } else {
        std::net::Ipv4Addr::from(id).to_string()
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let v: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .collect();
    anyhow::ensure!(!v.is_empty(), "{host} has no address");
    Ok(interleave_families(v))
}

/// What a series of samples comes to: the one with the least delay, and how
/// the series went (`none` says what was missing when nothing answered).
fn summarize(
    server: &str,
    got: Vec<(Sample, SocketAddr)>,
    lost: u32,
    last_err: Option<String>,
    none: &str,
    aead: Option<AeadAlgorithm>,
    ke_cookies: Option<usize>,
) -> Result<QueryReport> {
    let samples = got.len() as u32;
    let interleaved = got.iter().filter(|g| g.0.interleaved).count() as u32;
    let (s, addr) =
        best(got).with_context(|| format!("{none}: {}", last_err.unwrap_or_default()))?;
    Ok(QueryReport {
        server: server.to_string(),
        ntp_address: addr.to_string(),
        authenticated: s.authenticated,
        aead: aead.map(|a| a.name().to_string()),
        cookies_from_ke: ke_cookies,
        cookies_held: None,
        samples,
        lost,
        interleaved,
        reported_interleaved: s.interleaved,
        ignored: 0,
        warning: unsync_warning(&s),
        offset: s.offset().as_f64(),
        delay: s.delay().as_f64(),
        stratum: s.header.stratum,
        leap: s.header.leap as u8,
        reference_id: refid(s.header.reference_id, s.header.stratum),
        root_delay: s.header.root_delay.to_seconds(),
        root_dispersion: s.header.root_dispersion.to_seconds(),
    })
}

fn unsync_warning(s: &Sample) -> Option<String> {
    matches!(s.sample, Err(Unusable::Unsynchronized)).then(|| {
        format!(
            "the server says it is NOT synchronized (leap {}, stratum {}): this offset is not time to trust",
            s.header.leap as u8, s.header.stratum
        )
    })
}

fn best(samples: Vec<(Sample, SocketAddr)>) -> Option<(Sample, SocketAddr)> {
    samples
        .into_iter()
        .min_by(|a, b| a.0.delay().as_f64().total_cmp(&b.0.delay().as_f64()))
}

/// Run the query.
pub async fn query(opts: &QueryOptions) -> Result<QueryReport> {
    let wanted = opts.samples.max(1);
    // Each sample may need one retry per lost packet, up to three in a row.
    let max_lost = 3 * wanted;
    if !opts.nts {
        let (host, port) =
            crate::split_host_port(&opts.server, DEFAULT_NTP_PORT).map_err(anyhow::Error::msg)?;
        let addrs = resolve(&host, port).await?;
        let (mut got, mut lost, mut last_err) = (Vec::new(), 0u32, None);
        let mut xleave = opts.xleave.then(InterleavedClient::new);
        let mut i = 0usize;
        while got.len() < wanted as usize && lost <= max_lost {
            let addr = addrs[i % addrs.len()];
            match plain_exchange(addr, opts.timeout, xleave.as_mut()).await {
                Ok(s) => got.push((s, addr)),
                Err(e @ ExchangeError::Check(_)) => {
                    return Err(anyhow::anyhow!(e)).with_context(|| format!("NTP query to {addr}"))
                }
                Err(e) => {
                    lost += 1;
                    i += 1;
                    last_err = Some(format!("{addr}: {e}"));
                }
            }
            if got.len() < wanted as usize {
                tokio::time::sleep(opts.interval).await;
            }
        }
        let none = format!("no answer from {host}");
        return summarize(&opts.server, got, lost, last_err, &none, None, None);
    }
    let (host, port) =
        crate::split_host_port(&opts.server, DEFAULT_KE_PORT).map_err(anyhow::Error::msg)?;
    let cas: Vec<&std::path::Path> = opts.ca_files.iter().map(|p| p.as_path()).collect();
    let roots = ke::root_store(&cas, opts.system_roots)?;
    let ko = ke::key_exchange(
        &host,
        port,
        ke::tls_config(roots),
        &AeadAlgorithm::ALL,
        opts.timeout,
    )
    .await
    .map_err(|e: KeError| anyhow::anyhow!(e))
    .with_context(|| format!("NTS key exchange with {host}:{port}"))?;
    let addrs = resolve(&ko.ntp_server, ko.ntp_port).await?;
    let ke_cookies = ko.cookies.len();
    let aead = ko.aead;
    let mut src = NtsSource::new(
        NtsSourceConfig {
            unreachable_polls: u32::MAX,
            ..Default::default()
        },
        MonoTime::ZERO,
        0.0,
    );
    src.ke_succeeded(
        Association {
            aead: ko.aead,
            c2s: ko.c2s,
            s2c: ko.s2c,
            ntp_host: ko.ntp_server,
            ntp_port: ko.ntp_port,
            established: UnixTime::EPOCH,
        },
        ko.cookies,
        MonoTime::ZERO,
    );
    let (mut got, mut lost, mut last_err) = (Vec::new(), 0u32, None);
    let mut xleave = opts.xleave.then(InterleavedClient::new);
    let mut req = Vec::with_capacity(1024);
    let mut rng = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b);
    let mut i = 0usize;
    while got.len() < wanted as usize && lost <= max_lost {
        let addr = addrs[i % addrs.len()];
        let fields = xleave.as_ref().and_then(|x| x.request_fields());
        let Some(mut flight) = src.prepare_request(&mut req, fields, &mut rng) else {
            anyhow::bail!("out of cookies after {lost} lost packets");
        };
        let r = exchange(addr, &req, opts.timeout, |d| {
            match src.on_datagram(d, &mut flight) {
                Verdict::KeepWaiting(_) => None,
                v => Some(v),
            }
        })
        .await;
        match r {
            Ok((Verdict::Accepted(h), timing)) => {
                src.answered();
                let ts = timestamps(&h, timing, flight.interleaved, xleave.as_mut());
                got.push((Sample::new(addr, h, ts, flight.interleaved, true), addr));
            }
            Ok((Verdict::Kiss(code), _)) => {
                anyhow::bail!(
                    "{addr} sent an authenticated kiss-o'-death {}",
                    nts_proto::ntp_packet::kiss::text(&code)
                )
            }
            Ok((Verdict::KeepWaiting(_), _)) => {}
            Err(e) => {
                src.timed_out(&flight);
                lost += 1;
                i += 1;
                last_err = Some(format!("{addr}: {e}"));
            }
        }
        if got.len() < wanted as usize {
            tokio::time::sleep(opts.interval).await;
        }
    }
    let mut r = summarize(
        &opts.server,
        got,
        lost,
        last_err,
        "no authentic answer",
        Some(aead),
        Some(ke_cookies),
    )?;
    r.cookies_held = Some(src.cookies());
    r.ignored = src.counters().ignored() + src.counters().naks;
    Ok(r)
}

impl QueryReport {
    /// One line: offset, delay, stratum, authentication.
    pub fn brief(&self) -> String {
        format!(
            "{}: offset {:+.1} us, delay {:.1} us, stratum {}, {}{}",
            self.ntp_address,
            self.offset * 1e6,
            self.delay * 1e6,
            self.stratum,
            match (&self.aead, self.cookies_from_ke) {
                (Some(a), Some(n)) if self.authenticated =>
                    format!("authenticated (NTS, {a}, {n} cookies)"),
                _ if self.authenticated => "authenticated".to_string(),
                _ => "NOT authenticated".to_string(),
            },
            if self.warning.is_some() {
                ", WARNING: server unsynchronized"
            } else {
                ""
            }
        )
    }
}

impl std::fmt::Display for QueryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "server          {} (NTP at {})",
            self.server, self.ntp_address
        )?;
        writeln!(
            f,
            "authenticated   {}{}",
            if self.authenticated {
                "yes (NTS)"
            } else {
                "no"
            },
            self.aead
                .as_deref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default()
        )?;
        if let Some(w) = &self.warning {
            writeln!(f, "WARNING         {w}")?;
        }
        if let Some(n) = self.cookies_from_ke {
            writeln!(
                f,
                "cookies         {n} from key exchange, {} held after the exchanges",
                self.cookies_held.unwrap_or(0)
            )?;
        }
        writeln!(
            f,
            "samples         {} (best by delay shown), {} lost and retried{}",
            self.samples,
            self.lost,
            if self.ignored > 0 {
                format!(", {} forged or stray datagrams ignored", self.ignored)
            } else {
                String::new()
            }
        )?;
        if self.interleaved > 0 {
            writeln!(
                f,
                "interleaved     {} of {} answers{}",
                self.interleaved,
                self.samples,
                if self.reported_interleaved {
                    " (the one shown too)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f, "offset          {:+.6} s", self.offset)?;
        writeln!(f, "delay           {:.6} s", self.delay)?;
        writeln!(f, "stratum         {}", self.stratum)?;
        writeln!(f, "leap            {}", self.leap)?;
        writeln!(f, "reference id    {}", self.reference_id)?;
        write!(
            f,
            "root distance   {:.6} s",
            self.root_delay / 2.0 + self.root_dispersion
        )
    }
}
