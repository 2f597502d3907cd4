//! `nts-time-server` configuration: one TOML file, every key documented in
//! `docs/time-server.md`, unknown keys rejected, values checked at start-up
//! with errors that name the key.

use anyhow::{bail, Context, Result};
use nts_ops::config::{LogSection, MetricsSection};
use nts_proto::key_ring::KeySchedule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    #[serde(default)]
    pub clock: ClockSection,
    #[serde(default)]
    pub timestamping: TimestampingSection,
    /// Keys from a root secret file on this host (single-host setups)...
    pub keys: Option<KeysSection>,
    /// ...or from ke-servers over gRPC with mutual TLS.
    pub key_sync: Option<KeySyncSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// UDP addresses to serve NTP on; each gets one socket per worker (SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Worker threads per listen address; 0 means one per CPU core.
    pub workers: usize,
    /// Datagrams received and sent per system call (recvmmsg/sendmmsg).
    pub batch_size: usize,
    /// Answer plain NTP (no NTS fields).
    pub serve_unauthenticated: bool,
    /// Requests with more extension fields than this are dropped.
    pub max_extension_fields: usize,
    /// Socket receive buffer in bytes (0 = kernel default).
    pub receive_buffer: usize,
    /// Seconds a request may wait in the socket queue (by its kernel receive
    /// timestamp); older ones are dropped so the answers that leave are fresh.
    pub max_request_age: f64,
    /// Seconds a worker may wait for more requests after a short batch, when
    /// the arrival rate makes the wait gather several (0: never wait).
    pub batch_wait: f64,
    /// Entries per worker of the interleaved-mode table (32 bytes each,
    /// rounded up to a power of two); 0 answers every client in basic mode.
    pub interleaved_slots: usize,
    /// User and group to switch to after binding.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Confine the process to its seccomp allow-list after start-up (off: for debugging).
    pub seccomp: bool,
    /// Seconds the server keeps answering after SIGTERM, once it has told
    /// the KE replicas to stop handing it out (at least half a second with
    /// key sync, for that report to leave).
    pub drain_grace: f64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "0.0.0.0:123".parse().expect("literal"),
                "[::]:123".parse().expect("literal"),
            ],
            workers: 0,
            batch_size: 32,
            serve_unauthenticated: true,
            max_extension_fields: 16,
            receive_buffer: 4 << 20,
            max_request_age: 0.05,
            interleaved_slots: 4096,
            batch_wait: 0.0,
            user: None,
            group: None,
            seccomp: true,
            drain_grace: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    pub enabled: bool,
    /// Sustained requests per second allowed per client address (IPv6: per /64).
    pub rate: f64,
    /// Requests a client may send in a burst above the rate.
    pub burst: f64,
    /// Seconds between two RATE kiss-o'-death packets to one address; other excess requests are dropped.
    pub kiss_interval: f64,
    /// Table entries per worker (16 bytes each, in 4-way buckets of 64 bytes);
    /// memory does not grow with the number of clients.
    pub slots: usize,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 4.0,
            burst: 32.0,
            kiss_interval: 10.0,
            slots: 65_536,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSection {
    /// Claim synchronization whatever the kernel says (this host is the reference:
    /// a GNSS/PTP-fed clock, or tests). Otherwise an unsynchronized kernel clock yields leap 3.
    pub local_reference: bool,
    /// Stratum to announce while synchronized (1 for a local reference).
    pub stratum: u8,
    /// Reference id: four ASCII characters (for stratum 1) or an IPv4 address (upstream server).
    pub reference_id: String,
    /// Root delay to announce, in seconds (the kernel does not know it).
    pub root_delay: f64,
    /// Seconds between reads of the kernel clock state.
    pub refresh_interval: f64,
}

impl Default for ClockSection {
    fn default() -> Self {
        Self {
            local_reference: false,
            stratum: 2,
            reference_id: "KERN".into(),
            root_delay: 0.0,
            refresh_interval: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampingMode {
    /// Hardware when `interface` supports it, kernel software otherwise.
    Auto,
    /// NIC hardware timestamps on `interface`; start-up fails without them.
    Hardware,
    /// Kernel software receive timestamps.
    Software,
    /// User-space clock reads after receive (no SO_TIMESTAMPING).
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimestampingSection {
    pub mode: TimestampingMode,
    /// Network interface whose NIC timestamps packets (for hardware mode).
    pub interface: Option<String>,
}

impl Default for TimestampingSection {
    fn default() -> Self {
        Self {
            mode: TimestampingMode::Auto,
            interface: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Root secret file shared with the ke-server on this host (single-host setups).
    pub root_secret_file: PathBuf,
    /// Must match the ke-server's cookie_keys.rotation_period.
    #[serde(default = "default_rotation")]
    pub rotation_period: u64,
    /// Must match the ke-server's cookie_keys.past_epochs.
    #[serde(default = "default_past_epochs")]
    pub past_epochs: u32,
}

fn default_rotation() -> u64 {
    KeySchedule::default().rotation_period
}
fn default_past_epochs() -> u32 {
    KeySchedule::default().past_epochs
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySyncSection {
    /// `host:port` of every ke-server's key-sync service.
    pub endpoints: Vec<String>,
    /// CA that signed the ke-servers' key-sync certificates.
    pub ca: PathBuf,
    /// This time server's client certificate and key (from the CA the ke-servers trust).
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// Name to verify in the ke-servers' certificates (default: the endpoint's host).
    pub server_name: Option<String>,
    /// `host:port` clients should send NTP to (default: the first listen address).
    pub advertise: Option<String>,
    /// More `host:port` addresses of this server, typically of the other address
    /// family, so IPv6 clients are sent to an IPv6 address (and IPv4 to IPv4).
    #[serde(default)]
    pub advertise_also: Vec<String>,
    /// Identity in the registry (default: host name and advertised port); must be a
    /// name of the client certificate, or such a name followed by `:` and a suffix.
    pub server_id: Option<String>,
    /// Longest wait between reconnection attempts, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: f64,
}

fn default_max_backoff() -> f64 {
    30.0
}

/// Split an advertised `host:port` (`[v6]:port` for IPv6) into host and port.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = h.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub workers: usize,
    pub schedule: KeySchedule,
    pub reference_id: [u8; 4],
}

/// Parse a reference id: an IPv4 address or one to four ASCII characters (zero-padded).
pub fn parse_reference_id(s: &str) -> Option<[u8; 4]> {
    if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
        return Some(ip.octets());
    }
    if s.is_empty() || s.len() > 4 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 4];
    id[..s.len()].copy_from_slice(s.as_bytes());
    Some(id)
}

fn positive(key: &str, v: f64, max: f64) -> Result<()> {
    if !v.is_finite() || v <= 0.0 || v > max {
        bail!("{key} = {v}: must be a number above 0 and at most {max}");
    }
    Ok(())
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        nts_ops::config::parse_toml(text, origin)
    }

    pub fn load(path: &Path) -> Result<Self> {
        nts_ops::config::load_toml(path)
    }

    /// Apply `--advertise` / `--server-id` (or `NTS_ADVERTISE` / `NTS_SERVER_ID`): they
    /// replace `key_sync.advertise` and `key_sync.server_id`, and need a `[key_sync]` section.
    pub fn override_key_sync(
        &mut self,
        advertise: Option<String>,
        server_id: Option<String>,
    ) -> Result<()> {
        if advertise.is_none() && server_id.is_none() {
            return Ok(());
        }
        let Some(ks) = self.key_sync.as_mut() else {
            bail!("--advertise/--server-id (NTS_ADVERTISE/NTS_SERVER_ID) replace key_sync.advertise/key_sync.server_id: the configuration has no [key_sync] section");
        };
        if advertise.is_some() {
            ks.advertise = advertise;
        }
        if server_id.is_some() {
            ks.server_id = server_id;
        }
        Ok(())
    }

    pub fn validate(self) -> Result<Settings> {
        self.log.validate()?;
        let s = &self.server;
        if s.listen.is_empty() {
            bail!("server.listen: at least one address is needed");
        }
        if s.batch_size == 0 || s.batch_size > 1024 {
            bail!(
                "server.batch_size = {}: must be between 1 and 1024",
                s.batch_size
            );
        }
        if s.workers > 1024 {
            bail!("server.workers = {}: at most 1024", s.workers);
        }
        if s.max_extension_fields == 0 || s.max_extension_fields > 64 {
            bail!(
                "server.max_extension_fields = {}: must be between 1 and 64",
                s.max_extension_fields
            );
        }
        if !s.drain_grace.is_finite() || s.drain_grace < 0.0 || s.drain_grace > 3600.0 {
            bail!(
                "server.drain_grace = {}: must be between 0 and 3600 seconds",
                s.drain_grace
            );
        }
        if !s.max_request_age.is_finite() || s.max_request_age < 0.001 || s.max_request_age > 10.0 {
            bail!(
                "server.max_request_age = {}: must be between 0.001 and 10 seconds",
                s.max_request_age
            );
        }
        if !s.batch_wait.is_finite() || s.batch_wait < 0.0 || s.batch_wait > 0.01 {
            bail!(
                "server.batch_wait = {}: must be between 0 and 0.01 seconds",
                s.batch_wait
            );
        }
        if s.interleaved_slots > 1 << 24 {
            bail!(
                "server.interleaved_slots = {}: at most 16777216 (512 MiB per worker)",
                s.interleaved_slots
            );
        }
        let r = &self.rate_limit;
        if r.enabled {
            positive("rate_limit.rate", r.rate, 1e6)?;
            if !r.burst.is_finite() || r.burst < 1.0 || r.burst > 1e6 {
                bail!(
                    "rate_limit.burst = {}: must be between 1 and 1000000",
                    r.burst
                );
            }
            if !r.kiss_interval.is_finite() || r.kiss_interval < 0.0 || r.kiss_interval > 86_400.0 {
                bail!(
                    "rate_limit.kiss_interval = {}: must be between 0 and 86400 seconds",
                    r.kiss_interval
                );
            }
            if r.slots < 4 || r.slots > 1 << 24 {
                bail!(
                    "rate_limit.slots = {}: must be between 4 and 16777216",
                    r.slots
                );
            }
        }
        let c = &self.clock;
        if c.stratum == 0 || c.stratum > 15 {
            bail!("clock.stratum = {}: must be between 1 and 15", c.stratum);
        }
        let reference_id = parse_reference_id(&c.reference_id).with_context(|| {
            format!(
                "clock.reference_id = {:?}: must be an IPv4 address or 1 to 4 ASCII characters",
                c.reference_id
            )
        })?;
        if !c.root_delay.is_finite() || c.root_delay < 0.0 || c.root_delay > 16.0 {
            bail!(
                "clock.root_delay = {}: must be between 0 and 16 seconds",
                c.root_delay
            );
        }
        positive("clock.refresh_interval", c.refresh_interval, 3600.0)?;
        if self.timestamping.mode == TimestampingMode::Hardware
            && self.timestamping.interface.is_none()
        {
            bail!("timestamping.interface: required when timestamping.mode = \"hardware\"");
        }
        let schedule = match (&self.keys, &self.key_sync) {
            (Some(_), Some(_)) => {
                bail!("[keys] and [key_sync]: configure one source of cookie keys, not both")
            }
            (None, None) => bail!("[keys] or [key_sync]: a source of cookie keys is required"),
            (Some(k), None) => KeySchedule::new(k.rotation_period, k.past_epochs)
                .map_err(|e| anyhow::anyhow!("keys.rotation_period: {e}"))?,
            (None, Some(ks)) => {
                if ks.endpoints.is_empty() {
                    bail!("key_sync.endpoints: at least one ke-server is needed");
                }
                for ep in &ks.endpoints {
                    let port_ok = ep
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_some();
                    if !port_ok {
                        bail!("key_sync.endpoints: {ep:?} is not host:port");
                    }
                }
                if let Some(a) = &ks.advertise {
                    if a.rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_none()
                    {
                        bail!("key_sync.advertise = {a:?}: must be host:port");
                    }
                } else if s.listen[0].ip().is_unspecified() {
                    bail!("key_sync.advertise: required when server.listen[0] ({}) is a wildcard address", s.listen[0]);
                }
                if let Some(id) = &ks.server_id {
                    if id.is_empty() || id.len() > 256 {
                        bail!("key_sync.server_id = {id:?}: must be 1 to 256 characters");
                    }
                }
                if ks.advertise_also.len() > 4 {
                    bail!("key_sync.advertise_also: at most 4 addresses");
                }
                for a in &ks.advertise_also {
                    if split_host_port(a).is_none() {
                        bail!("key_sync.advertise_also: {a:?} is not host:port (IPv6: [address]:port)");
                    }
                }
                positive("key_sync.max_backoff", ks.max_backoff, 3600.0)?;
                KeySchedule::default()
            }
        };
        let workers = if s.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            s.workers
        };
        Ok(Settings {
            config: self,
            workers,
            schedule,
            reference_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[keys]\nroot_secret_file = \"/var/lib/nts/root.key\"\n";

    fn check(text: &str) -> Result<Settings> {
        Config::parse(text, Path::new("t.toml"))?.validate()
    }

    #[test]
    fn defaults() {
        let s = check(MINIMAL).unwrap();
        assert_eq!(s.config.server.listen.len(), 2);
        assert!(s.workers >= 1);
        assert_eq!(&s.reference_id, b"KERN");
        assert!(s.config.rate_limit.enabled);
    }

    #[test]
    fn errors_name_keys() {
        for (extra, key) in [
            ("[server]\nbatch_size = 0\n", "server.batch_size"),
            ("[clock]\nstratum = 16\n", "clock.stratum"),
            (
                "[clock]\nreference_id = \"TOOLONG\"\n",
                "clock.reference_id",
            ),
            ("[rate_limit]\nrate = -1\n", "rate_limit.rate"),
            ("[rate_limit]\nslots = 2\n", "rate_limit.slots"),
            ("[server]\nmax_request_age = 0\n", "server.max_request_age"),
            ("[server]\ndrain_grace = -1\n", "server.drain_grace"),
            ("[server]\nmax_request_age = 60\n", "server.max_request_age"),
            ("[server]\nbatch_wait = -0.001\n", "server.batch_wait"),
            ("[server]\nbatch_wait = 1\n", "server.batch_wait"),
            (
                "[server]\ninterleaved_slots = 100000000\n",
                "server.interleaved_slots",
            ),
            (
                "[timestamping]\nmode = \"hardware\"\n",
                "timestamping.interface",
            ),
            ("[server]\nunknown = 1\n", "unknown"),
            ("[timestamping]\nmode = \"laser\"\n", "laser"),
        ] {
            let e = check(&format!("{extra}{MINIMAL}")).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
    }

    const KEY_SYNC: &str = "[server]\nlisten = [\"0.0.0.0:123\"]\n[key_sync]\nendpoints = [\"ke:4461\"]\nca = \"/ca.pem\"\ncertificate_chain = \"/c.pem\"\nprivate_key = \"/k.pem\"\n";

    #[test]
    fn advertise_and_server_id_overrides() {
        let parse = |t: &str| Config::parse(t, Path::new("t.toml")).unwrap();
        // A wildcard listen address needs an advertised address; the override supplies it.
        let e = parse(KEY_SYNC).validate().unwrap_err();
        assert!(format!("{e:#}").contains("key_sync.advertise"), "{e:#}");
        let mut c = parse(KEY_SYNC);
        c.override_key_sync(Some("[192.0.2.7]:123".into()), Some("node-a".into()))
            .unwrap();
        let s = c.validate().unwrap();
        let ks = s.config.key_sync.unwrap();
        assert_eq!(ks.advertise.as_deref(), Some("[192.0.2.7]:123"));
        assert_eq!(ks.server_id.as_deref(), Some("node-a"));
        // Bad values are reported under the key they replace.
        let mut c = parse(KEY_SYNC);
        c.override_key_sync(Some("192.0.2.7".into()), None).unwrap();
        let e = c.validate().unwrap_err();
        assert!(format!("{e:#}").contains("key_sync.advertise"), "{e:#}");
        let mut c = parse(KEY_SYNC);
        c.override_key_sync(Some("[192.0.2.7]:123".into()), Some(String::new()))
            .unwrap();
        let e = c.validate().unwrap_err();
        assert!(format!("{e:#}").contains("key_sync.server_id"), "{e:#}");
        // Without [key_sync] there is nothing to replace.
        let mut c = parse(MINIMAL);
        assert!(c
            .override_key_sync(Some("[192.0.2.7]:123".into()), None)
            .is_err());
        parse(MINIMAL).override_key_sync(None, None).unwrap();
    }

    #[test]
    fn advertised_addresses() {
        assert_eq!(
            split_host_port("[2001:db8::1]:123"),
            Some(("2001:db8::1".into(), 123))
        );
        assert_eq!(
            split_host_port("a.example:4123"),
            Some(("a.example".into(), 4123))
        );
        assert_eq!(split_host_port("a.example:0"), None);
        assert_eq!(split_host_port("a.example"), None);
        assert_eq!(split_host_port(":123"), None);
    }

    #[test]
    fn reference_ids() {
        assert_eq!(parse_reference_id("GPS"), Some(*b"GPS\0"));
        assert_eq!(parse_reference_id("192.0.2.1"), Some([192, 0, 2, 1]));
        assert_eq!(parse_reference_id(""), None);
        assert_eq!(parse_reference_id("é"), None);
    }
}
