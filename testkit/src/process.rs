//! A guard around a spawned peer process.
//!
//! [`ChildGuard::spawn`] starts a [`Command`] with its standard output and error
//! written to `NAME.stdout.log` and `NAME.stderr.log` in a directory of the
//! caller's choice (usually the peer's temporary directory);
//! [`ChildGuard::spawn_combined`] writes both, in order, to `NAME.log` (used
//! for the peers). [`ChildGuard::wait_for_log`] polls the log for a condition;
//! [`ChildGuard::logs`] returns a labelled dump for messages. On drop the child
//! is sent SIGTERM, then SIGKILL after a grace period, and reaped; if the
//! current thread is panicking (a failing test), its logs are printed to stderr
//! first, which the test harness shows with the failure.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a child gets to exit after SIGTERM before it is sent SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Where a child's standard output and error go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// `NAME.stdout.log` and `NAME.stderr.log`.
    Separate,
    /// Both into `NAME.log`, in the order written.
    Combined,
}

/// A running child process, killed and reaped on drop. See the module docs.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    pid: u32,
    command_line: String,
    mode: LogMode,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    state: Mutex<State>,
    grace: Duration,
    print_logs_on_panic: bool,
}

#[derive(Debug)]
struct State {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from `/dev/null` and stdout/stderr redirected to
    /// `log_dir/NAME.stdout.log` and `log_dir/NAME.stderr.log`.
    pub fn spawn(name: &str, cmd: Command, log_dir: &Path) -> Result<ChildGuard> {
        Self::spawn_with(name, cmd, log_dir, LogMode::Separate)
    }

    /// Spawns `cmd` with stdin from `/dev/null` and both stdout and stderr
    /// written, in order, to the single file `log_dir/NAME.log`. Use this for
    /// programs that split their log between the two (NTPsec's ntpd prints
    /// errors to stderr and the rest to stdout).
    pub fn spawn_combined(name: &str, cmd: Command, log_dir: &Path) -> Result<ChildGuard> {
        Self::spawn_with(name, cmd, log_dir, LogMode::Combined)
    }

    /// Spawns `cmd` with its output logged as `mode` says.
    pub fn spawn_with(
        name: &str,
        mut cmd: Command,
        log_dir: &Path,
        mode: LogMode,
    ) -> Result<ChildGuard> {
        let create = |p: &Path| {
            File::create(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
        };
        let (stdout_path, stderr_path, out, err) = match mode {
            LogMode::Separate => {
                let o = log_dir.join(format!("{name}.stdout.log"));
                let e = log_dir.join(format!("{name}.stderr.log"));
                let (fo, fe) = (create(&o)?, create(&e)?);
                (o, e, fo, fe)
            }
            LogMode::Combined => {
                let p = log_dir.join(format!("{name}.log"));
                let f = create(&p)?;
                let f2 = f
                    .try_clone()
                    .map_err(|e| Error::io(format!("duplicating {}", p.display()), e))?;
                (p.clone(), p, f, f2)
            }
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let command_line = format_command(&cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("spawning {name}: `{command_line}`"), e))?;
        Ok(ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            command_line,
            mode,
            stdout_path,
            stderr_path,
            state: Mutex::new(State {
                child,
                status: None,
            }),
            grace: DEFAULT_GRACE,
            print_logs_on_panic: true,
        })
    }

    /// Sets the time between SIGTERM and SIGKILL when stopping (default
    /// [`DEFAULT_GRACE`]).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Whether to print the logs to stderr when dropped during a panic (default
    /// true).
    pub fn set_print_logs_on_panic(&mut self, yes: bool) {
        self.print_logs_on_panic = yes;
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with (for messages).
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Path of the standard output log (with [`LogMode::Combined`], the one log).
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the standard error log (with [`LogMode::Combined`], the one log).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Standard output so far (with [`LogMode::Combined`], everything).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Standard error so far (with [`LogMode::Combined`], everything).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Everything the child printed: the one log with [`LogMode::Combined`],
    /// else standard output followed by standard error.
    pub fn output(&self) -> String {
        match self.mode {
            LogMode::Combined => self.stdout(),
            LogMode::Separate => {
                let mut s = self.stdout();
                s.push_str(&self.stderr());
                s
            }
        }
    }

    /// A labelled dump of the command line, status and both logs, for failure
    /// messages.
    pub fn logs(&self) -> String {
        let status = match self.exit_status() {
            Ok(Some(s)) => format!("exited: {s}"),
            Ok(None) => "running".to_string(),
            Err(e) => format!("unknown: {e}"),
        };
        let head = format!(
            "===== {name} (pid {pid}, {status}): {cmd}\n",
            name = self.name,
            pid = self.pid,
            cmd = self.command_line,
        );
        let body = match self.mode {
            LogMode::Combined => format!(
                "----- {} output ({}) -----\n{}",
                self.name,
                self.stdout_path.display(),
                with_newline(self.stdout())
            ),
            LogMode::Separate => format!(
                "----- {name} stdout ({out}) -----\n{o}----- {name} stderr ({err}) -----\n{e}",
                name = self.name,
                out = self.stdout_path.display(),
                err = self.stderr_path.display(),
                o = with_newline(self.stdout()),
                e = with_newline(self.stderr()),
            ),
        };
        format!("{head}{body}===== end of {} =====\n", self.name)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut st = self.state();
        if st.status.is_none() {
            st.status = st
                .child
                .try_wait()
                .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        }
        Ok(st.status)
    }

    /// True while the child has not exited.
    pub fn is_running(&self) -> bool {
        matches!(self.exit_status(), Ok(None))
    }

    /// `Ok(())` while the child runs, else [`Error::Exited`] with its logs.
    pub fn check_running(&self) -> Result<()> {
        match self.exit_status()? {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status,
                logs: self.logs(),
            }),
        }
    }

    /// Waits until `pred` returns true for the combined output
    /// ([`ChildGuard::output`]), polling every 50 ms. Fails if the child exits
    /// before (after a last look at its output) or on timeout; errors carry the
    /// logs. Returns the output that satisfied `pred`.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.exit_status()?;
            let out = self.output();
            if pred(&out) {
                return Ok(out);
            }
            if let Some(status) = exited {
                return Err(Error::Exited {
                    name: self.name.clone(),
                    status,
                    logs: self.logs(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("a log line from {}", self.name),
                    waited: timeout,
                    details: self.logs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`ChildGuard::wait_for_log`] for a plain substring.
    pub fn wait_for_log_contains(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_log(timeout, |s| s.contains(needle))
            .map_err(|e| match e {
                Error::Timeout {
                    waited, details, ..
                } => Error::Timeout {
                    what: format!("{:?} in the log of {}", needle, self.name),
                    waited,
                    details,
                },
                other => other,
            })
    }

    /// Sends `signal` to the child (by PID), unless it has already been reaped.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let st = self.state();
        if st.status.is_some() {
            return Ok(());
        }
        // The child has not been reaped (we hold it), so its PID cannot have been
        // reused by another process.
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| Error::Other(format!("pid {} out of range", self.pid)))?;
        // SAFETY: kill(2) with a PID of our own unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::io(format!("kill -{signal} {}", self.pid), e));
            }
        }
        Ok(())
    }

    /// Stops the child: SIGTERM, wait up to the grace period, then SIGKILL, and
    /// reap it. Idempotent. Returns its exit status.
    pub fn stop(&self) -> Result<ExitStatus> {
        if let Some(s) = self.exit_status()? {
            return Ok(s);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exit_status()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL)?;
        let mut st = self.state();
        if let Some(s) = st.status {
            return Ok(s);
        }
        let s = st
            .child
            .wait()
            .map_err(|e| Error::io(format!("reaping {}", self.name), e))?;
        st.status = Some(s);
        Ok(s)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.print_logs_on_panic && std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Err(e) = self.stop() {
            eprintln!(
                "testkit: could not stop {} (pid {}): {e}",
                self.name, self.pid
            );
        }
    }
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    }
}

fn with_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Renders a command line for messages (program and arguments, shell-quoted
/// where needed).
pub(crate) fn format_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
            {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a helper command to completion with a timeout, capturing its output.
/// Returns stdout on success, [`Error::Command`] otherwise (including on
/// timeout, after killing it).
pub(crate) fn run_capture(mut cmd: Command, timeout: Duration) -> Result<String> {
    let line = format_command(&cmd);
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let out = File::create(&out_path).map_err(|e| Error::io("creating capture file", e))?;
    let err = File::create(&err_path).map_err(|e| Error::io("creating capture file", e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("running `{line}`"), e))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::io(format!("waiting for `{line}`"), e)),
        }
    };
    let stdout = read_lossy(&out_path);
    let stderr = read_lossy(&err_path);
    match status {
        Some(s) if s.success() => Ok(stdout),
        status => Err(Error::Command {
            command: line,
            status,
            output: format!(
                "{}stdout:\n{stdout}\nstderr:\n{stderr}",
                if status.is_none() {
                    format!("timed out after {timeout:?}\n")
                } else {
                    String::new()
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn logs_and_wait_for_log() {
        let dir = tempfile::tempdir().unwrap();
        let g = ChildGuard::spawn(
            "echoer",
            sh("echo out-line; echo err-line >&2; sleep 0.3; echo ready >&2; exec sleep 100"),
            dir.path(),
        )
        .unwrap();
        g.wait_for_log_contains("ready", Duration::from_secs(10))
            .unwrap();
        assert!(g.stdout().contains("out-line"));
        assert!(g.stderr().contains("err-line"));
        assert!(g.logs().contains("echoer"));
        assert!(g.is_running());
        let pid = g.pid();
        drop(g);
        // Reaped: no such process any more.
        // SAFETY: signal 0 only checks for existence.
        assert_eq!(unsafe { libc::kill(pid as i32, 0) }, -1);
    }

    #[test]
    fn combined_log_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let g = ChildGuard::spawn_combined(
            "mixed",
            sh("echo one; echo two >&2; echo three; echo done >&2; exec sleep 100"),
            dir.path(),
        )
        .unwrap();
        let out = g
            .wait_for_log_contains("done", Duration::from_secs(10))
            .unwrap();
        assert_eq!(out, "one\ntwo\nthree\ndone\n");
        assert!(dir.path().join("mixed.log").exists());
        assert!(g.logs().contains("mixed output"));
    }

    #[test]
    fn wait_for_log_reports_exit_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let g = ChildGuard::spawn("quitter", sh("echo bye; exit 3"), dir.path()).unwrap();
        let e = g
            .wait_for_log_contains("never", Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(e, Error::Exited { .. }), "{e}");
        assert!(e.to_string().contains("bye"));

        let g = ChildGuard::spawn("sleeper", sh("exec sleep 100"), dir.path()).unwrap();
        let e = g
            .wait_for_log_contains("never", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }

    #[test]
    fn sigkill_after_grace_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = ChildGuard::spawn(
            "stubborn",
            sh("trap '' TERM; echo ready; exec sleep 100"),
            dir.path(),
        )
        .unwrap();
        g.set_grace(Duration::from_millis(300));
        g.wait_for_log_contains("ready", Duration::from_secs(10))
            .unwrap();
        let start = Instant::now();
        let status = g.stop().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Idempotent.
        assert_eq!(g.stop().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn run_capture_ok_fail_timeout() {
        assert_eq!(
            run_capture(sh("echo hi"), Duration::from_secs(5)).unwrap(),
            "hi\n"
        );
        let e = run_capture(sh("echo oops >&2; exit 2"), Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        let e = run_capture(sh("exec sleep 10"), Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn command_formatting_quotes() {
        let mut c = Command::new("capsh");
        c.args(["--drop=cap_sys_time", "--", "-c", "exec ntpd -n"]);
        assert_eq!(
            format_command(&c),
            "capsh --drop=cap_sys_time -- -c 'exec ntpd -n'"
        );
    }
}
