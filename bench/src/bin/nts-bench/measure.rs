//! One measurement: a find-max search and fixed-rate runs, each one nts-loadgen process.

use crate::results::Measurement;
use crate::{Bins, Cli};
use anyhow::{bail, Context, Result};
use nts_bench::report::RunReport;
use nts_bench::sys;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) struct Ctx<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) bins: &'a Bins,
    pub(crate) t0: Instant,
    pub(crate) budget: Duration,
    pub(crate) ca: PathBuf,
}

impl Ctx<'_> {
    pub(crate) fn measure(
        &self,
        server: &str,
        load: &str,
        mode: &str,
        ke: &str,
        ntp: Option<&str>,
        pids: &[u32],
    ) -> Result<Measurement> {
        self.measure_with(server, load, mode, ke, ntp, pids, &[])
    }

    /// A find-max search, then a fixed-rate run, with one nts-loadgen each.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn measure_with(
        &self,
        server: &str,
        load: &str,
        mode: &str,
        ke: &str,
        ntp: Option<&str>,
        pids: &[u32],
        extra: &[String],
    ) -> Result<Measurement> {
        let c = self.cli;
        let mut base: Vec<String> = vec![
            "--mode".into(),
            mode.into(),
            "--sources".into(),
            c.sources.to_string(),
            "--ports-per-source".into(),
            c.ports_per_source.to_string(),
            "--quiet".into(),
        ];
        if mode == "nts" {
            base.extend([
                "--ke".into(),
                ke.into(),
                "--ca".into(),
                self.ca.display().to_string(),
                "--ke-sessions".into(),
                c.ke_sessions.to_string(),
            ]);
        }
        if let Some(a) = ntp {
            base.extend(["--server".into(), a.into()]);
        }
        for p in pids {
            base.extend(["--server-pid".into(), p.to_string()]);
        }
        base.extend(extra.iter().cloned());

        let background = self.wait_quiet();
        eprintln!(
            "--- {server} {load}: find-max (background load {} cores)",
            background.map_or("?".into(), |b| format!("{b:.2}"))
        );
        let left = self.budget.saturating_sub(self.t0.elapsed()).as_secs_f64();
        if left < 20.0 {
            bail!("time budget exhausted before {server} {load}");
        }
        let mut args = base.clone();
        args.extend([
            "--find-max".into(),
            "--start-rate".into(),
            c.start_rate.to_string(),
            "--factor".into(),
            c.factor.to_string(),
            "--step-secs".into(),
            c.step_secs.to_string(),
            "--max-total-secs".into(),
            (left - 10.0).min(75.0).to_string(),
        ]);
        let find_max = self.loadgen(&args)?;
        for s in &find_max.steps {
            eprintln!("  {}", nts_bench::loadgen::step_line(s));
        }
        match &find_max.best {
            Some(b) => eprintln!(
                "  => {:.0}/s with < {}% loss (stopped by {:?})",
                b.recv_rate, find_max.loss_threshold_pct, find_max.limit
            ),
            None => eprintln!("  => no rate with < {}% loss", find_max.loss_threshold_pct),
        }

        let mut fixed = None;
        let mut fixed_steps = Vec::new();
        if c.per_core {
            for &rate in &c.per_core_rates {
                // A short wait: the search just ended, the machine was checked before it.
                let before = self.wait_quiet_for(c.quiet_wait.min(5.0));
                let r = self.fixed_run(&base, rate, c.per_core_fixed_secs)?;
                // A fixed step is not repeated: if other processes kept the
                // machine busy up to its start, mark it, even when their load
                // does not show in the step's own accounting.
                let busy_before = before.is_some_and(|b| b > c.quiet_cores);
                fixed_steps.extend(r.steps.into_iter().map(|mut st| {
                    st.disturbed |= busy_before;
                    st
                }));
            }
        } else if c.fixed_secs > 0.0 {
            self.wait_quiet();
            fixed = Some(self.fixed_run(&base, c.fixed_rate, c.fixed_secs)?);
        }
        Ok(Measurement {
            server: server.into(),
            load: load.into(),
            find_max,
            fixed,
            fixed_steps,
            background_cores: background,
        })
    }

    /// One nts-loadgen run at a fixed rate.
    pub(crate) fn fixed_run(&self, base: &[String], rate: f64, secs: f64) -> Result<RunReport> {
        let left = self.budget.saturating_sub(self.t0.elapsed()).as_secs_f64();
        let mut args = base.to_vec();
        args.extend([
            "--rate".into(),
            rate.to_string(),
            "--duration".into(),
            secs.to_string(),
            "--max-total-secs".into(),
            (left - 5.0).min(secs + 30.0).max(5.0).to_string(),
        ]);
        let r = self.loadgen(&args)?;
        eprintln!("  fixed: {}", nts_bench::loadgen::step_line(&r.steps[0]));
        Ok(r)
    }

    pub(crate) fn loadgen(&self, args: &[String]) -> Result<RunReport> {
        let json = tempfile::Builder::new()
            .prefix("nts-loadgen-")
            .suffix(".json")
            .tempfile()?;
        let mut cmd = Command::new(&self.bins.loadgen);
        cmd.args(args).arg("--json-out").arg(json.path());
        cmd.stdout(std::process::Stdio::null());
        if self.cli.per_core {
            sys::pin_command(&mut cmd, self.cli.gen_cpu);
        }
        let limit: f64 = args
            .iter()
            .position(|a| a == "--max-total-secs")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(120.0);
        let mut child = cmd.spawn().context("starting nts-loadgen")?;
        let deadline = Instant::now() + Duration::from_secs_f64(limit + 30.0);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nts-loadgen did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("nts-loadgen {} failed: {status}", args.join(" "));
        }
        let text = std::fs::read_to_string(json.path())?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Wait (bounded) until the machine is quiet; returns the last busy reading.
    pub(crate) fn wait_quiet(&self) -> Option<f64> {
        self.wait_quiet_for(self.cli.quiet_wait)
    }

    /// [`Self::wait_quiet`] for at most `secs`.
    pub(crate) fn wait_quiet_for(&self, secs: f64) -> Option<f64> {
        let busy = sys::wait_quiet(self.cli.quiet_cores, Duration::from_secs_f64(secs.max(0.0)))?;
        if busy > self.cli.quiet_cores {
            eprintln!("  (machine still busy with {busy:.2} cores of other load; going on)");
        }
        Some(busy)
    }
}
