//! chrony as an NTS client ([`ChronyClient`]) or NTS server ([`ChronyServer`]).
//!
//! Each instance runs `chronyd -x -d -f CONF` (`-x`: never touch the system
//! clock; `-d`: foreground, log to stderr) in its own temporary directory:
//!
//! ```text
//! DIR/                 0755 root      chronyd.conf, NAME.log (chronyd's output)
//! DIR/run/             0750 _chrony   chronyd.sock (bindcmdaddress), chronyd.pid,
//!                                     NTS dump files (ntsdumpdir)
//! ```
//!
//! `cmdport 0` disables the UDP command port; chronyc talks to the Unix socket
//! with `chronyc -h DIR/run/chronyd.sock -c -N CMD`. A `pidfile` in the run
//! directory is essential: the default `/run/chrony/chronyd.pid` would make a
//! second instance refuse to start.

pub mod report;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use report::{AuthData, AuthMode, NtpData, ServerStats, Source, SourceMode, SourceState};

use crate::certs::TestPki;
use crate::fsutil;
use crate::peers::ChronyBins;
use crate::process::{run_capture, ChildGuard};
use crate::{ports, Error, Result, POLL_INTERVAL};

/// How long chronyc may take for one command.
const CHRONYC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a chronyd gets to start (command socket up, ports bound).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running chronyd with its directory, shared by client and server.
#[derive(Debug)]
struct Chronyd {
    // Field order matters: the process is stopped before its directory is removed.
    proc: ChildGuard,
    chronyc: PathBuf,
    socket: PathBuf,
    config: String,
    dir: tempfile::TempDir,
}

impl Chronyd {
    /// Creates the directories, writes the configuration produced by `config`
    /// (given the run directory) and starts chronyd.
    fn start(
        bins: &ChronyBins,
        name: &str,
        hosts_file: Option<&Path>,
        config: impl FnOnce(&Path) -> String,
    ) -> Result<Chronyd> {
        let dir = fsutil::tempdir(&format!("ntstk-{name}-"))?;
        let run = dir.path().join("run");
        let owner = fsutil::chrony_user();
        fsutil::create_owned_dir(&run, owner, 0o750)?;
        let config = config(&run);
        let conf_path = dir.path().join("chronyd.conf");
        fsutil::write_file(&conf_path, &config, 0o644)?;

        let mut cmd = match hosts_file {
            None => Command::new(&bins.chronyd),
            Some(hosts) => {
                // A private mount namespace in which `hosts` is bind-mounted over
                // /etc/hosts; the system's file is untouched. unshare and sh exec,
                // so the PID stays chronyd's.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
                    .arg(hosts)
                    .arg(&bins.chronyd);
                c
            }
        };
        // -x: never adjust the system clock. -d: foreground, log to stderr.
        cmd.arg("-x").arg("-d").arg("-f").arg(&conf_path);
        cmd.current_dir(dir.path());
        let proc = ChildGuard::spawn_combined(name, cmd, dir.path())?;
        Ok(Chronyd {
            proc,
            chronyc: bins.chronyc.clone(),
            socket: run.join("chronyd.sock"),
            config,
            dir,
        })
    }

    fn chronyc(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.chronyc);
        cmd.arg("-h").arg(&self.socket).args(args);
        run_capture(cmd, CHRONYC_TIMEOUT)
    }

    /// Waits until chronyd answers on its command socket and `ready` holds.
    fn wait_ready(&self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            self.proc.check_running()?;
            let last_err = match self.chronyc(&["-c", "sources"]) {
                Ok(_) if ready() => return Ok(()),
                Ok(_) => format!("{what} not ready yet"),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= START_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("{} to start ({what})", self.proc.name()),
                    waited: START_TIMEOUT,
                    details: format!("last check: {last_err}\n{}", self.proc.logs()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One NTS source of a [`ChronyClient`].
#[derive(Debug, Clone)]
pub struct NtsSource {
    /// Host name or address of the NTS-KE server (also the NTP server unless the
    /// server's NTS-KE response says otherwise). Must match its certificate.
    pub host: String,
    /// NTS-KE (TCP) port.
    pub ke_port: u16,
    /// NTP (UDP) port; `None` leaves chrony's default (123, or whatever the
    /// NTS-KE server negotiates).
    pub ntp_port: Option<u16>,
}

/// Builder for [`ChronyClient`].
#[derive(Debug, Clone)]
pub struct ChronyClientBuilder {
    bins: ChronyBins,
    name: String,
    sources: Vec<NtsSource>,
    trusted_certs: Vec<PathBuf>,
    minpoll: i32,
    maxpoll: i32,
    nts_dump: bool,
    extra: Vec<String>,
    hosts_file: Option<PathBuf>,
    server_options: Vec<String>,
}

impl ChronyClientBuilder {
    /// Appends options to every `server` line (e.g. `xleave`).
    pub fn server_option(mut self, option: &str) -> Self {
        self.server_options.push(option.to_string());
        self
    }

    /// Resolve host names with `file` (in `/etc/hosts` format, readable by
    /// `_chrony`) instead of the system's `/etc/hosts`: chronyd runs in a private
    /// mount namespace (`unshare --mount`) where `file` is bind-mounted over
    /// `/etc/hosts`. The system's file is never changed. Lets chrony verify a
    /// certificate for a name like `nts.test` while connecting to loopback.
    pub fn hosts_file(mut self, file: &Path) -> Self {
        self.hosts_file = Some(file.to_path_buf());
        self
    }

    /// Adds an NTS server (`server HOST iburst nts port NTP ntsport KE ...`).
    pub fn nts_server(mut self, host: &str, ke_port: u16, ntp_port: u16) -> Self {
        self.sources.push(NtsSource {
            host: host.to_string(),
            ke_port,
            ntp_port: Some(ntp_port),
        });
        self
    }

    /// Adds an NTS source described by `source`.
    pub fn source(mut self, source: NtsSource) -> Self {
        self.sources.push(source);
        self
    }

    /// Adds a CA file to trust for NTS-KE (`ntstrustedcerts FILE`). Without
    /// one chrony uses the system's trust store.
    pub fn trusted_certs(mut self, ca_file: &Path) -> Self {
        self.trusted_certs.push(ca_file.to_path_buf());
        self
    }

    /// Polling interval bounds in log2 seconds (default `-1` and `1`). chrony
    /// accepts down to -6.
    pub fn poll(mut self, minpoll: i32, maxpoll: i32) -> Self {
        self.minpoll = minpoll;
        self.maxpoll = maxpoll;
        self
    }

    /// Keep NTS keys and cookies in the run directory across restarts
    /// (`ntsdumpdir`); default off, so every start does a fresh NTS-KE.
    pub fn nts_dump(mut self, yes: bool) -> Self {
        self.nts_dump = yes;
        self
    }

    /// Appends a raw configuration line.
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Name used for the process and its log files (default `chrony-client`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The configuration file that [`ChronyClientBuilder::start`] will write,
    /// given the run directory.
    pub fn config(&self, run_dir: &Path) -> String {
        let mut c = String::from("# chronyd NTS client, generated by testkit\n");
        for s in &self.sources {
            c.push_str(&format!("server {} iburst nts", s.host));
            if let Some(p) = s.ntp_port {
                c.push_str(&format!(" port {p}"));
            }
            c.push_str(&format!(
                " ntsport {} minpoll {} maxpoll {}",
                s.ke_port, self.minpoll, self.maxpoll
            ));
            for o in &self.server_options {
                c.push(' ');
                c.push_str(o);
            }
            c.push('\n');
        }
        for ca in &self.trusted_certs {
            c.push_str(&format!("ntstrustedcerts {}\n", ca.display()));
        }
        let run = run_dir.display();
        // No NTP server port (a client only), no UDP command port.
        c.push_str("port 0\ncmdport 0\n");
        c.push_str(&format!("bindcmdaddress {run}/chronyd.sock\n"));
        c.push_str(&format!("pidfile {run}/chronyd.pid\n"));
        if self.nts_dump {
            c.push_str(&format!("ntsdumpdir {run}\n"));
        }
        for l in &self.extra {
            c.push_str(l);
            c.push('\n');
        }
        c
    }

    /// Writes the configuration, starts chronyd and waits until it answers on
    /// its command socket.
    pub fn start(self) -> Result<ChronyClient> {
        if self.sources.is_empty() {
            return Err(Error::Other(
                "ChronyClient needs at least one NTS server".into(),
            ));
        }
        let d = Chronyd::start(&self.bins, &self.name, self.hosts_file.as_deref(), |run| {
            self.config(run)
        })?;
        d.wait_ready("command socket", || true)?;
        Ok(ChronyClient { d })
    }
}

/// Everything a [`ChronyClient`] reports, polled together.
#[derive(Debug, Clone, Default)]
pub struct ClientStatus {
    /// `authdata`.
    pub authdata: Vec<AuthData>,
    /// `ntpdata`.
    pub ntpdata: Vec<NtpData>,
    /// `sources`.
    pub sources: Vec<Source>,
}

/// chronyd running as an NTS client. Stopped (and its directory removed) on
/// drop; its log is printed if the test is panicking.
#[derive(Debug)]
pub struct ChronyClient {
    d: Chronyd,
}

impl ChronyClient {
    /// Starts building a client. Add servers with
    /// [`ChronyClientBuilder::nts_server`] and a CA with
    /// [`ChronyClientBuilder::trusted_certs`].
    pub fn builder(bins: &ChronyBins) -> ChronyClientBuilder {
        ChronyClientBuilder {
            bins: bins.clone(),
            name: "chrony-client".into(),
            sources: Vec::new(),
            trusted_certs: Vec::new(),
            minpoll: -1,
            maxpoll: 1,
            nts_dump: false,
            extra: Vec::new(),
            hosts_file: None,
            server_options: Vec::new(),
        }
    }

    /// Runs `chronyc -h SOCKET ARGS...` and returns its stdout.
    pub fn chronyc(&self, args: &[&str]) -> Result<String> {
        self.d.chronyc(args)
    }

    /// `chronyc -c -N authdata`, parsed.
    pub fn authdata(&self) -> Result<Vec<AuthData>> {
        report::parse_authdata(&self.chronyc(&["-c", "-N", "authdata"])?)
    }

    /// `chronyc -c ntpdata`, parsed.
    pub fn ntpdata(&self) -> Result<Vec<NtpData>> {
        report::parse_ntpdata(&self.chronyc(&["-c", "ntpdata"])?)
    }

    /// `chronyc -c -N sources`, parsed.
    pub fn sources(&self) -> Result<Vec<Source>> {
        report::parse_sources(&self.chronyc(&["-c", "-N", "sources"])?)
    }

    /// `authdata`, `ntpdata` and `sources` together.
    pub fn status(&self) -> Result<ClientStatus> {
        Ok(ClientStatus {
            authdata: self.authdata()?,
            ntpdata: self.ntpdata()?,
            sources: self.sources()?,
        })
    }

    /// Polls [`ChronyClient::status`] until `pred` holds, and returns that
    /// status. Fails if chronyd exits, or after `timeout` with the last status
    /// (or chronyc error) and chronyd's log in the error.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&ClientStatus) -> bool,
    ) -> Result<ClientStatus> {
        let start = Instant::now();
        loop {
            self.d.proc.check_running()?;
            let last = match self.status() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:#?}"),
                Err(e) => format!("chronyc error: {e}"),
            };
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    details: format!("last status: {last}\n{}", self.d.proc.logs()),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every source is NTS-authenticated and holds at least
    /// `cookies` cookies (`authdata` column `Cook`). Returns the `authdata`.
    pub fn wait_for_cookies(&self, cookies: u32, timeout: Duration) -> Result<Vec<AuthData>> {
        self.wait_until(
            timeout,
            &format!("NTS-KE to complete with >= {cookies} cookies per source"),
            |s| {
                !s.authdata.is_empty()
                    && s.authdata
                        .iter()
                        .all(|a| a.mode == AuthMode::Nts && a.cookies >= cookies)
            },
        )
        .map(|s| s.authdata)
    }

    /// Waits until every source has received at least one valid response and
    /// the last one was authenticated (`ntpdata` `Authenticated: Yes`). Returns
    /// the `ntpdata`.
    pub fn wait_for_authenticated_response(&self, timeout: Duration) -> Result<Vec<NtpData>> {
        self.wait_until(
            timeout,
            "authenticated NTP responses from every source",
            |s| {
                !s.ntpdata.is_empty()
                    && s.ntpdata
                        .iter()
                        .all(|d| d.authenticated && d.total_valid_rx > 0)
            },
        )
        .map(|s| s.ntpdata)
    }

    /// The configuration chronyd was started with.
    pub fn config(&self) -> &str {
        &self.d.config
    }

    /// The temporary directory (configuration, logs, `run/`).
    pub fn dir(&self) -> &Path {
        self.d.dir.path()
    }

    /// The chronyd process.
    pub fn process(&self) -> &ChildGuard {
        &self.d.proc
    }

    /// chronyd's log (labelled dump, see [`ChildGuard::logs`]).
    pub fn logs(&self) -> String {
        self.d.proc.logs()
    }

    /// Stops chronyd now (also done on drop).
    pub fn stop(&self) -> Result<()> {
        self.d.proc.stop().map(drop)
    }
}

/// Builder for [`ChronyServer`].
#[derive(Debug, Clone)]
pub struct ChronyServerBuilder {
    bins: ChronyBins,
    name: String,
    cert: PathBuf,
    key: PathBuf,
    ke_port: Option<u16>,
    ntp_port: Option<u16>,
    extra: Vec<String>,
}

impl ChronyServerBuilder {
    /// NTS-KE (TCP) port; default: a [`ports::free_port`].
    pub fn ke_port(mut self, port: u16) -> Self {
        self.ke_port = Some(port);
        self
    }

    /// NTP (UDP) port; default: a [`ports::free_port`].
    pub fn ntp_port(mut self, port: u16) -> Self {
        self.ntp_port = Some(port);
        self
    }

    /// Certificate (chain) and key files to serve instead of the [`TestPki`]'s.
    pub fn cert_and_key(mut self, cert: &Path, key: &Path) -> Self {
        self.cert = cert.to_path_buf();
        self.key = key.to_path_buf();
        self
    }

    /// Appends a raw configuration line (e.g. `ntsntpserver 127.0.0.1`,
    /// `ratelimit ...`).
    pub fn config_line(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Name used for the process and its log files (default `chrony-server`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    fn config(&self, run_dir: &Path, ke_port: u16, ntp_port: u16) -> String {
        let run = run_dir.display();
        let mut c = format!(
            "# chronyd NTS server, generated by testkit\n\
             ntsserverkey {key}\n\
             ntsservercert {cert}\n\
             ntsport {ke_port}\n\
             port {ntp_port}\n\
             bindaddress 127.0.0.1\n\
             allow 127.0.0.1\n\
             local stratum 1\n\
             ntsdumpdir {run}\n\
             cmdport 0\n\
             bindcmdaddress {run}/chronyd.sock\n\
             pidfile {run}/chronyd.pid\n",
            key = self.key.display(),
            cert = self.cert.display(),
        );
        for l in &self.extra {
            c.push_str(l);
            c.push('\n');
        }
        c
    }

    /// Writes the configuration, starts chronyd and waits until its NTS-KE port
    /// listens, its NTP port is bound and it answers on its command socket.
    ///
    /// Readiness is checked through `/proc/net`, without connecting, so that
    /// `serverstats` only counts the test's own NTS-KE connections.
    pub fn start(self) -> Result<ChronyServer> {
        let ke_port = self.ke_port.unwrap_or_else(ports::free_port);
        let ntp_port = self.ntp_port.unwrap_or_else(ports::free_port);
        let d = Chronyd::start(&self.bins, &self.name, None, |run| {
            self.config(run, ke_port, ntp_port)
        })?;
        d.wait_ready(
            &format!("NTS-KE on TCP {ke_port}, NTP on UDP {ntp_port}"),
            || ports::is_tcp_listening(ke_port) && ports::is_udp_bound(ntp_port),
        )?;
        Ok(ChronyServer {
            d,
            ke_port,
            ntp_port,
        })
    }
}

/// chronyd running as an NTS server on 127.0.0.1 (its NTS-KE listener also
/// binds `[::]:KE_PORT`). Stopped on drop.
#[derive(Debug)]
pub struct ChronyServer {
    d: Chronyd,
    ke_port: u16,
    ntp_port: u16,
}

impl ChronyServer {
    /// Starts building a server that presents `pki`'s server certificate.
    pub fn builder(bins: &ChronyBins, pki: &TestPki) -> ChronyServerBuilder {
        ChronyServerBuilder {
            bins: bins.clone(),
            name: "chrony-server".into(),
            cert: pki.cert_path().to_path_buf(),
            key: pki.key_path().to_path_buf(),
            ke_port: None,
            ntp_port: None,
            extra: Vec::new(),
        }
    }

    /// NTS-KE (TCP) port.
    pub fn ke_port(&self) -> u16 {
        self.ke_port
    }

    /// NTP (UDP) port.
    pub fn ntp_port(&self) -> u16 {
        self.ntp_port
    }

    /// `127.0.0.1:KE_PORT`.
    pub fn ke_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ke_port))
    }

    /// `127.0.0.1:NTP_PORT`.
    pub fn ntp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ntp_port))
    }

    /// Runs `chronyc -h SOCKET ARGS...` and returns its stdout.
    pub fn chronyc(&self, args: &[&str]) -> Result<String> {
        self.d.chronyc(args)
    }

    /// `chronyc -c serverstats`, parsed.
    pub fn serverstats(&self) -> Result<ServerStats> {
        report::parse_serverstats(&self.chronyc(&["-c", "serverstats"])?)
    }

    /// Polls `serverstats` until `pred` holds. Fails if chronyd exits or on
    /// timeout (with the last stats and chronyd's log).
    pub fn wait_for_stats(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&ServerStats) -> bool,
    ) -> Result<ServerStats> {
        let start = Instant::now();
        loop {
            self.d.proc.check_running()?;
            let last = match self.serverstats() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:?}"),
                Err(e) => format!("chronyc error: {e}"),
            };
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    waited: timeout,
                    details: format!("last serverstats: {last}\n{}", self.d.proc.logs()),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The configuration chronyd was started with.
    pub fn config(&self) -> &str {
        &self.d.config
    }

    /// The temporary directory (configuration, logs, `run/`).
    pub fn dir(&self) -> &Path {
        self.d.dir.path()
    }

    /// The chronyd process.
    pub fn process(&self) -> &ChildGuard {
        &self.d.proc
    }

    /// chronyd's log (labelled dump, see [`ChildGuard::logs`]).
    pub fn logs(&self) -> String {
        self.d.proc.logs()
    }

    /// Stops chronyd now (also done on drop).
    pub fn stop(&self) -> Result<()> {
        self.d.proc.stop().map(drop)
    }
}
