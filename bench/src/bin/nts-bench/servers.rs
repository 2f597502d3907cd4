//! Starting, watching and stopping the servers under test.

use crate::measure::Ctx;
use crate::results::{Results, Rss};
use crate::Bins;
use anyhow::{bail, Context, Result};
use nts_bench::server_config::{time_server_toml, ServerOption, TimeServerSetup};
use nts_bench::sys;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::certs::TestPki;
use testkit::chrony::ChronyServer;
use testkit::process::ChildGuard;

/// PIDs of every server this process started, for the watchdog.
pub(crate) static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub(crate) fn track(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

pub(crate) fn untrack(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

/// Peak memory, the metrics that show dropped requests, then stop.
pub(crate) fn finish_ours(ours: Ours, results: &mut Results, logs: &Path, tag: &str) {
    results
        .rss
        .push(rss(&format!("nts-time-server{tag}"), ours.ts.pid()));
    results
        .rss
        .push(rss(&format!("nts-ke-server{tag}"), ours.ke.pid()));
    if let Some(m) = scrape(&ours.metrics_addr) {
        let _ = std::fs::write(logs.join(format!("nts-time-server{tag}.metrics.txt")), &m);
        for l in m.lines().filter(|l| {
            (l.starts_with("nts_time_requests_dropped_total")
                || l.starts_with("nts_time_send_errors_total")
                || l.starts_with("nts_time_nts_nak_total"))
                && !l.ends_with(" 0")
        }) {
            results
                .notes
                .push(format!("nts-time-server{tag} metric after the run: {l}"));
        }
    }
    stop(ours.ts);
    stop(ours.ke);
}

/// Start chronyd as an NTS server (None, with a note, when chrony is missing
/// or skipped). `pin`: (server CPU, CPU to return this thread to): chronyd is
/// forked from this thread while it runs on the server CPU, so chronyd and
/// the helpers it forks start there.
pub(crate) fn start_chrony(
    pki: &TestPki,
    results: &mut Results,
    pin: Option<(usize, usize)>,
) -> Result<Option<ChronyServer>> {
    let Some(cbins) = testkit::peers::require_chrony() else {
        results.notes.push("chrony not found: skipped".into());
        return Ok(None);
    };
    eprintln!(
        "\n=== chronyd -x as NTS server (no ratelimit){} ===",
        pin.map_or(String::new(), |(s, _)| format!(" on CPU {s}"))
    );
    results.chrony_version = Command::new(&cbins.chronyd)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some((server_cpu, _)) = pin {
        sys::pin_task(0, server_cpu)?;
    }
    let server = ChronyServer::builder(&cbins, pki)
        .name("chrony-bench")
        // Sources are 127.0.0.2 and up.
        .config_line("allow 127.0.0.0/8")
        .start();
    if let Some((_, back)) = pin {
        sys::pin_task(0, back)?;
    }
    let server = server.context("starting chronyd")?;
    track(server.process().pid());
    Ok(Some(server))
}

pub(crate) fn finish_chrony(server: ChronyServer, results: &mut Results, logs: &Path) {
    let pid = server.process().pid();
    results.rss.push(rss("chronyd (main: NTP)", pid));
    for c in sys::children_of(pid) {
        results.rss.push(rss("chronyd (NTS-KE helper)", c));
    }
    let _ = std::fs::write(logs.join("chronyd.log"), server.logs());
    let _ = std::fs::write(logs.join("chronyd.conf"), server.config());
    drop(server);
    untrack(pid);
}

/// Start nts-echo with `workers` threads, optionally pinned to a CPU.
pub(crate) fn start_echo(
    ctx: &Ctx<'_>,
    workers: usize,
    logs: &Path,
    pin: Option<usize>,
) -> Result<(ChildGuard, String)> {
    let port = testkit::ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&ctx.bins.echo);
    cmd.args(["--listen", &addr, "--workers", &workers.to_string()]);
    cmd.args(["--max-secs", &(ctx.cli.budget_secs as u64 + 60).to_string()]);
    if let Some(cpu) = pin {
        sys::pin_command(&mut cmd, cpu);
    }
    let echo = ChildGuard::spawn("nts-echo", cmd, logs)?;
    track(echo.pid());
    wait_for(Duration::from_secs(10), || {
        testkit::ports::is_udp_bound(port)
    })
    .context("nts-echo did not bind")?;
    Ok((echo, addr))
}

pub(crate) struct Ours {
    pub(crate) ke: ChildGuard,
    pub(crate) ts: ChildGuard,
    pub(crate) ke_addr: String,
    pub(crate) ntp_addr: String,
    pub(crate) metrics_addr: String,
}

/// Start nts-ke-server and nts-time-server with `server_options` added to its
/// [server] table; `tag` names the logs; `pin` restricts the time server (all
/// its threads, from exec on) to one CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_ours(
    bins: &Bins,
    pki: &TestPki,
    dir: &Path,
    workers: usize,
    logs: &Path,
    server_options: &[ServerOption],
    tag: &str,
    pin: Option<usize>,
) -> Result<Ours> {
    let ports = testkit::ports::free_ports(3);
    let (ke_port, ntp_port, metrics_port) = (ports[0], ports[1], ports[2]);
    let root = dir.join("cookie-root.key");
    let ke_conf = dir.join("ke-server.toml");
    std::fs::write(
        &ke_conf,
        format!(
            r#"# nts-bench: NTS-KE for the load generator (many exchanges from 127.0.0.1).
[server]
listen = ["127.0.0.1:{ke_port}"]
connections_per_minute = 0
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
port = {ntp_port}
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[log]
level = "warn"
"#,
            chain = pki.chain_path(),
            key = pki.key_path(),
        ),
    )?;
    let ts_conf = dir.join("time-server.toml");
    let setup = TimeServerSetup {
        ntp_port,
        metrics_port,
        workers,
        root_secret: &root,
    };
    std::fs::write(&ts_conf, time_server_toml(&setup, server_options))?;
    let _ = std::fs::copy(&ke_conf, logs.join(format!("ke-server{tag}.toml")));
    let _ = std::fs::copy(&ts_conf, logs.join(format!("time-server{tag}.toml")));
    let mut cmd = Command::new(&bins.ke);
    cmd.arg("--config").arg(&ke_conf);
    let ke = ChildGuard::spawn(&format!("nts-ke-server{tag}"), cmd, logs)?;
    track(ke.pid());
    wait_for(Duration::from_secs(15), || {
        testkit::ports::is_tcp_listening(ke_port) && root.exists()
    })
    .with_context(|| format!("nts-ke-server did not start:\n{}", ke.logs()))?;
    let mut cmd = Command::new(&bins.ts);
    cmd.arg("--config").arg(&ts_conf);
    if let Some(cpu) = pin {
        sys::pin_command(&mut cmd, cpu);
    }
    let ts = ChildGuard::spawn(&format!("nts-time-server{tag}"), cmd, logs)?;
    track(ts.pid());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    wait_for(Duration::from_secs(15), || {
        http_get(&metrics_addr, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .with_context(|| format!("nts-time-server did not become ready:\n{}", ts.logs()))?;
    Ok(Ours {
        ke,
        ts,
        ke_addr: format!("127.0.0.1:{ke_port}"),
        ntp_addr: format!("127.0.0.1:{ntp_port}"),
        metrics_addr,
    })
}

pub(crate) fn stop(c: ChildGuard) {
    let pid = c.pid();
    let _ = c.stop();
    untrack(pid);
}

pub(crate) fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // Normalise the status line for the readiness check.
    Some(out.replacen("HTTP/1.0", "HTTP/1.1", 1))
}

pub(crate) fn scrape(addr: &str) -> Option<String> {
    let r = http_get(addr, "/metrics")?;
    Some(
        r.split_once("\r\n\r\n")
            .map_or(r.clone(), |(_, b)| b.to_string()),
    )
}

pub(crate) fn rss(process: &str, pid: u32) -> Rss {
    Rss {
        process: format!("{process} (pid {pid})"),
        vm_hwm_kib: sys::proc_status_kb(pid, "VmHWM"),
        vm_rss_kib: sys::proc_status_kb(pid, "VmRSS"),
    }
}
