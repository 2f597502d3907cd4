//! The two kinds of run: servers sharing the machine with the generator, or
//! each pinned to its own core.

use crate::measure::Ctx;
use crate::results::Results;
use crate::servers::{finish_chrony, finish_ours, rss, start_chrony, start_echo, start_ours, stop};
use crate::ServerKind;
use crate::SMALL_RCVBUF;
use anyhow::{bail, Context, Result};
use nts_bench::{percore, sys};
use std::path::Path;
use testkit::certs::TestPki;

/// The shared-cores run: servers and generator scheduled freely on the machine.
pub(crate) fn run_shared(
    ctx: &Ctx<'_>,
    results: &mut Results,
    pki: &TestPki,
    logs: &Path,
) -> Result<()> {
    let cli = ctx.cli;
    if cli.servers.contains(&ServerKind::Ours) {
        shared_ours(ctx, results, pki, logs)?;
    }

    if cli.servers.contains(&ServerKind::Chrony) {
        shared_chrony(ctx, results, pki, logs)?;
    }

    if cli.servers.contains(&ServerKind::Echo) {
        shared_echo(ctx, results, logs)?;
    }
    Ok(())
}

/// The per-core run: each server pinned to `--server-cpu`, the generator
/// (and this runner, and nts-ke-server, which inherit it) to `--gen-cpu`.
pub(crate) fn run_per_core(
    ctx: &Ctx<'_>,
    results: &mut Results,
    pki: &TestPki,
    logs: &Path,
) -> Result<()> {
    let cli = ctx.cli;
    let (scpu, gcpu) = (cli.server_cpu, cli.gen_cpu);
    let ncpu = sys::ncpus();
    if scpu == gcpu || scpu >= ncpu || gcpu >= ncpu {
        bail!("--server-cpu {scpu} and --gen-cpu {gcpu} must be two different CPUs below {ncpu}");
    }
    sys::pin_task(0, gcpu).context("pinning the runner to the generator's CPU")?;

    if cli.servers.contains(&ServerKind::Ours) {
        per_core_ours(ctx, results, pki, logs, (scpu, gcpu))?;
    }

    if cli.servers.contains(&ServerKind::Chrony) {
        per_core_chrony(ctx, results, pki, logs, (scpu, gcpu))?;
    }

    if cli.servers.contains(&ServerKind::Echo) {
        per_core_echo(ctx, results, logs, scpu)?;
    }
    Ok(())
}

/// Record where `pid`'s threads (and child processes) may run; fails unless
/// all of them are restricted to `cpu`.
pub(crate) fn check_pinned(
    name: &str,
    when: &str,
    pid: u32,
    cpu: usize,
    log: &mut Vec<String>,
) -> Result<()> {
    let (text, ok) = sys::affinity_summary(pid, cpu);
    let line = format!("{name} {when}: {text}");
    eprintln!("  {line}");
    log.push(line);
    if !ok {
        bail!("{name} is not pinned to CPU {cpu}: {text}");
    }
    Ok(())
}

/// The NTS and plain measurements of one server: NTS-KE at `ke_addr`
/// (NTP where it negotiates), plain NTP at `ntp_addr`.
fn nts_and_plain(
    ctx: &Ctx<'_>,
    results: &mut Results,
    server: &str,
    ke_addr: &str,
    ntp_addr: &str,
    pids: &[u32],
) -> Result<()> {
    let nts = ctx.measure(server, "NTS", "nts", ke_addr, None, pids)?;
    results.measurements.push(nts);
    let plain = ctx.measure(server, "plain", "plain", "", Some(ntp_addr), pids)?;
    results.measurements.push(plain);
    Ok(())
}

/// Length of our NTS requests in this run (for the NTS-sized echo).
pub(crate) fn nts_request_len(results: &Results) -> Option<usize> {
    results
        .measurements
        .iter()
        .find(|m| m.server == percore::OURS && m.load == "NTS")
        .and_then(|m| {
            // The shortest: requests that also ask for cookies are longer.
            m.find_max
                .steps
                .iter()
                .map(|s| s.request_len)
                .filter(|&l| l > 0)
                .min()
        })
        .filter(|&l| l > 48)
}

/// nts-ke-server + nts-time-server: NTS and plain.
fn shared_ours(ctx: &Ctx<'_>, results: &mut Results, pki: &TestPki, logs: &Path) -> Result<()> {
    let cli = ctx.cli;
    let bins = ctx.bins;
    let opts = &cli.ours_server_option;
    eprintln!(
        "\n=== nts-ke-server + nts-time-server (workers {}, rate limit off) ===",
        cli.workers
    );
    let dir = tempfile::Builder::new()
        .prefix("nts-bench-ours-")
        .tempdir()?;
    let ours = start_ours(bins, pki, dir.path(), cli.workers, logs, opts, "", None)?;
    let pids = vec![ours.ts.pid()];
    let r = nts_and_plain(
        ctx,
        results,
        percore::OURS,
        &ours.ke_addr,
        &ours.ntp_addr,
        &pids,
    );
    finish_ours(ours, results, logs, "");
    r?;

    // Ours with chrony's receive buffer (the kernel default), NTS only.
    if !cli.no_small_rcvbuf {
        eprintln!("\n=== nts-time-server with the kernel-default socket receive buffer ===");
        let dir = tempfile::Builder::new()
            .prefix("nts-bench-ours-")
            .tempdir()?;
        let mut small = opts.clone();
        small.push("receive_buffer = 0".parse()?);
        let ours = start_ours(
            bins,
            pki,
            dir.path(),
            cli.workers,
            logs,
            &small,
            "-small-rcvbuf",
            None,
        )?;
        let pids = vec![ours.ts.pid()];
        let m = ctx.measure(SMALL_RCVBUF, "NTS", "nts", &ours.ke_addr, None, &pids);
        stop(ours.ts);
        stop(ours.ke);
        results.measurements.push(m?);
    }
    Ok(())
}

/// chronyd: NTS and plain (skipped with a note when chrony is missing).
fn shared_chrony(ctx: &Ctx<'_>, results: &mut Results, pki: &TestPki, logs: &Path) -> Result<()> {
    if let Some(server) = start_chrony(pki, results, None)? {
        let pid = server.process().pid();
        let ke_addr = format!("127.0.0.1:{}", server.ke_port());
        let ntp_addr = format!("127.0.0.1:{}", server.ntp_port());
        let pids = vec![pid];
        let r = nts_and_plain(ctx, results, percore::CHRONY, &ke_addr, &ntp_addr, &pids);
        finish_chrony(server, results, logs);
        r?;
    }
    Ok(())
}

/// nts-echo: the UDP echo baseline.
fn shared_echo(ctx: &Ctx<'_>, results: &mut Results, logs: &Path) -> Result<()> {
    let cli = ctx.cli;
    eprintln!("\n=== nts-echo (UDP echo, {} workers) ===", cli.workers);
    let (echo, addr) = start_echo(ctx, cli.workers, logs, None)?;
    let pids = vec![echo.pid()];
    let r = (|| -> Result<()> {
        let m = ctx.measure(percore::ECHO, "echo 48 B", "echo", "", Some(&addr), &pids)?;
        results.measurements.push(m);
        if cli.echo_nts_size {
            let len = nts_request_len(results).unwrap_or(cli.echo_nts_len);
            let load = format!("echo {len} B");
            let m = ctx.measure_with(
                percore::ECHO,
                &load,
                "echo",
                "",
                Some(&addr),
                &pids,
                &["--echo-len".into(), len.to_string()],
            )?;
            results.measurements.push(m);
        }
        Ok(())
    })();
    results.rss.push(rss("nts-echo", echo.pid()));
    stop(echo);
    r?;
    Ok(())
}

/// Pinned: nts-ke-server + nts-time-server: NTS and plain.
fn per_core_ours(
    ctx: &Ctx<'_>,
    results: &mut Results,
    pki: &TestPki,
    logs: &Path,
    (scpu, gcpu): (usize, usize),
) -> Result<()> {
    let cli = ctx.cli;
    let bins = ctx.bins;
    eprintln!(
        "\n=== per core: nts-time-server (1 worker) on CPU {scpu}, generator on CPU {gcpu} ==="
    );
    let dir = tempfile::Builder::new()
        .prefix("nts-bench-ours-")
        .tempdir()?;
    let ours = start_ours(
        bins,
        pki,
        dir.path(),
        1,
        logs,
        &cli.ours_server_option,
        "-per-core",
        Some(scpu),
    )?;
    let pid = ours.ts.pid();
    let r = (|| -> Result<()> {
        check_pinned(
            percore::OURS,
            "after start",
            pid,
            scpu,
            &mut results.pinning,
        )?;
        nts_and_plain(
            ctx,
            results,
            percore::OURS,
            &ours.ke_addr,
            &ours.ntp_addr,
            &[pid],
        )?;
        check_pinned(
            percore::OURS,
            "before stop",
            pid,
            scpu,
            &mut results.pinning,
        )
    })();
    finish_ours(ours, results, logs, "-per-core");
    r?;
    Ok(())
}

/// Pinned: chronyd: NTS and plain (skipped with a note when chrony is missing).
fn per_core_chrony(
    ctx: &Ctx<'_>,
    results: &mut Results,
    pki: &TestPki,
    logs: &Path,
    (scpu, gcpu): (usize, usize),
) -> Result<()> {
    if let Some(server) = start_chrony(pki, results, Some((scpu, gcpu)))? {
        let pid = server.process().pid();
        let ke_addr = format!("127.0.0.1:{}", server.ke_port());
        let ntp_addr = format!("127.0.0.1:{}", server.ntp_port());
        let r = (|| -> Result<()> {
            // chronyd started on the server CPU (so did the NTS-KE helpers
            // it forked); pin every thread of the tree again to be sure.
            sys::pin_process_tree(pid, scpu).context("pinning chronyd")?;
            check_pinned(
                percore::CHRONY,
                "after start",
                pid,
                scpu,
                &mut results.pinning,
            )?;
            nts_and_plain(ctx, results, percore::CHRONY, &ke_addr, &ntp_addr, &[pid])?;
            check_pinned(
                percore::CHRONY,
                "before stop",
                pid,
                scpu,
                &mut results.pinning,
            )
        })();
        finish_chrony(server, results, logs);
        r?;
    }
    Ok(())
}

/// Pinned: nts-echo: the UDP echo baseline.
fn per_core_echo(ctx: &Ctx<'_>, results: &mut Results, logs: &Path, scpu: usize) -> Result<()> {
    let cli = ctx.cli;
    eprintln!("\n=== per core: nts-echo (1 worker) on CPU {scpu} ===");
    let (echo, addr) = start_echo(ctx, 1, logs, Some(scpu))?;
    let pid = echo.pid();
    let len = nts_request_len(results).unwrap_or(cli.echo_nts_len);
    let r = (|| -> Result<()> {
        check_pinned(
            percore::ECHO,
            "after start",
            pid,
            scpu,
            &mut results.pinning,
        )?;
        let m = ctx.measure_with(
            percore::ECHO,
            &format!("echo {len} B"),
            "echo",
            "",
            Some(&addr),
            &[pid],
            &["--echo-len".into(), len.to_string()],
        )?;
        results.measurements.push(m);
        let m = ctx.measure(percore::ECHO, "echo 48 B", "echo", "", Some(&addr), &[pid])?;
        results.measurements.push(m);
        check_pinned(
            percore::ECHO,
            "before stop",
            pid,
            scpu,
            &mut results.pinning,
        )
    })();
    results.rss.push(rss("nts-echo", pid));
    stop(echo);
    r?;
    Ok(())
}
