//! `nts-client query`: one measurement against one server, like `chronyd -Q`
//! or `ntpdig`, with NTS by default.

use crate::exchange::{exchange, NtsCredentials, Sample};
use crate::ke::{self, KeError, DEFAULT_KE_PORT, DEFAULT_NTP_PORT};
use anyhow::{Context, Result};
use nts_proto::aead::AeadAlgorithm;
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
    pub cookies_in_response: usize,
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

async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

fn report(
    server: &str,
    addr: SocketAddr,
    s: &Sample,
    aead: Option<AeadAlgorithm>,
    ke_cookies: Option<usize>,
) -> QueryReport {
    QueryReport {
        server: server.to_string(),
        ntp_address: addr.to_string(),
        authenticated: s.authenticated,
        aead: aead.map(|a| a.name().to_string()),
        cookies_from_ke: ke_cookies,
        cookies_in_response: s.cookies.len(),
        offset: s.offset,
        delay: s.delay,
        stratum: s.header.stratum,
        leap: s.header.leap as u8,
        reference_id: refid(s.header.reference_id, s.header.stratum),
        root_delay: s.header.root_delay.to_seconds(),
        root_dispersion: s.header.root_dispersion.to_seconds(),
    }
}

/// Run the query.
pub async fn query(opts: &QueryOptions) -> Result<QueryReport> {
    if !opts.nts {
        let (host, port) =
            crate::split_host_port(&opts.server, DEFAULT_NTP_PORT).map_err(anyhow::Error::msg)?;
        let addr = resolve(&host, port).await?;
        let s = exchange(addr, None, opts.timeout)
            .await
            .with_context(|| format!("NTP query to {addr}"))?;
        return Ok(report(&opts.server, addr, &s, None, None));
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
    let addr = resolve(&ko.ntp_server, ko.ntp_port).await?;
    let cookie = ko.cookies.first().context("no cookie")?;
    let s = exchange(
        addr,
        Some(NtsCredentials {
            cookie,
            c2s: &ko.c2s,
            s2c: &ko.s2c,
            placeholders: 0,
        }),
        opts.timeout,
    )
    .await
    .with_context(|| format!("NTS-protected NTP query to {addr}"))?;
    Ok(report(
        &opts.server,
        addr,
        &s,
        Some(ko.aead),
        Some(ko.cookies.len()),
    ))
}

impl QueryReport {
    /// One line: offset, delay, stratum, authentication.
    pub fn brief(&self) -> String {
        format!(
            "{}: offset {:+.1} us, delay {:.1} us, stratum {}, {}",
            self.ntp_address,
            self.offset * 1e6,
            self.delay * 1e6,
            self.stratum,
            match (&self.aead, self.cookies_from_ke) {
                (Some(a), Some(n)) if self.authenticated =>
                    format!("authenticated (NTS, {a}, {n} cookies)"),
                _ if self.authenticated => "authenticated".to_string(),
                _ => "NOT authenticated".to_string(),
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
        if let Some(n) = self.cookies_from_ke {
            writeln!(
                f,
                "cookies         {n} from key exchange, {} in the response",
                self.cookies_in_response
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
