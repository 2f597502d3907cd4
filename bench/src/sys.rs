//! Small Linux helpers: clocks, CPU accounting, `/proc` readers.

use std::path::Path;

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds (pacing).
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in nanoseconds (the clock of kernel receive timestamps).
pub fn real_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// User + system CPU seconds used by this process so far (all threads).
pub fn self_cpu_secs() -> f64 {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields of `/proc/PID/stat` after the command name (index 0 is the state, field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU seconds of process `pid` (all its threads).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// Parent PID of `pid`.
pub fn proc_ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Direct children of `pid` (scans `/proc`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_ppid(p) == Some(pid))
        .collect()
}

/// A `kB` value from `/proc/PID/status`, e.g. `VmHWM` (peak RSS) or `VmRSS`.
pub fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Machine-wide CPU time from `/proc/stat`: (busy, total) in clock ticks.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// One-minute load average.
pub fn loadavg1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Number of online CPUs.
pub fn ncpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Whether `path` names an executable regular file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Set an integer socket option.
pub fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: the option value is an i32 that lives for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `Udp: RcvbufErrors` from `/proc/net/snmp` (datagrams dropped because a
/// socket's receive buffer was full), for this network namespace.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// Machine-wide busy cores over the next `window`.
pub fn machine_busy_over(window: std::time::Duration) -> Option<f64> {
    let a = machine_cpu_ticks()?;
    std::thread::sleep(window);
    let b = machine_cpu_ticks()?;
    if b.1 <= a.1 {
        return Some(0.0);
    }
    Some((b.0 - a.0) as f64 / (b.1 - a.1) as f64 * ncpus() as f64)
}

/// Wait (at most `limit`) until the machine is at most `cores` busy; returns
/// the last reading.
pub fn wait_quiet(cores: f64, limit: std::time::Duration) -> Option<f64> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let busy = machine_busy_over(std::time::Duration::from_millis(500))?;
        if busy <= cores || std::time::Instant::now() >= deadline {
            return Some(busy);
        }
    }
}

/// A CPU set holding only `cpu`.
fn single_cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: all-zero is an empty cpu_set_t; CPU_SET writes a bit inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t (CPU_SET ignores CPUs past its size).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// Restrict task `tid` (a thread or process ID; 0 = the calling thread) to `cpu`.
pub fn pin_task(tid: u32, cpu: usize) -> std::io::Result<()> {
    let set = single_cpu_set(cpu);
    // SAFETY: sched_setaffinity reads a cpu_set_t of the size given.
    let r = unsafe {
        libc::sched_setaffinity(
            tid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Make `cmd`'s process start restricted to `cpu` (set between fork and exec,
/// so every thread and child it creates inherits it from the start).
pub fn pin_command(cmd: &mut std::process::Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    let set = single_cpu_set(cpu);
    // SAFETY: the closure only makes one system call (async-signal-safe) on a
    // cpu_set_t copied in before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Thread IDs of process `pid` (from `/proc/PID/task`).
pub fn tasks_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// `pid` and all its descendants (chronyd's NTS-KE helpers are children).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let mut kids = children_of(all[i]);
        kids.sort_unstable();
        all.extend(kids);
        i += 1;
    }
    all
}

/// Pin every thread of `pid` and of its descendants to `cpu`; returns how
/// many threads were pinned.
pub fn pin_process_tree(pid: u32, cpu: usize) -> std::io::Result<usize> {
    let mut n = 0;
    for p in process_tree(pid) {
        for t in tasks_of(p) {
            pin_task(t, cpu)?;
            n += 1;
        }
    }
    Ok(n)
}

/// `Cpus_allowed_list` of thread `tid` of process `pid`, e.g. "1" or "0-1".
pub fn cpus_allowed_list(pid: u32, tid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Where the threads of `pid` and its descendants may run, e.g.
/// `pid 12: 3 threads on CPU 1; pid 13: 1 thread on CPU 1`, and whether all
/// of them are restricted to exactly `cpu`.
pub fn affinity_summary(pid: u32, cpu: usize) -> (String, bool) {
    let want = cpu.to_string();
    let mut all_ok = true;
    let mut parts = Vec::new();
    for p in process_tree(pid) {
        let mut lists: Vec<String> = tasks_of(p)
            .into_iter()
            .filter_map(|t| cpus_allowed_list(p, t))
            .collect();
        let n = lists.len();
        all_ok &= n > 0 && lists.iter().all(|l| *l == want);
        lists.sort();
        lists.dedup();
        parts.push(format!(
            "pid {p}: {n} thread{} on CPU {}",
            if n == 1 { "" } else { "s" },
            lists.join(" / ")
        ));
    }
    (parts.join("; "), all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_child_and_its_threads_stay_on_one_cpu() {
        // CPU 0 always exists; a child started pinned reports exactly "0".
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("5");
        pin_command(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn sleep");
        let (text, ok) = affinity_summary(child.id(), 0);
        let (_, ok_other) = affinity_summary(child.id(), 1);
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "{text}");
        assert!(text.contains("1 thread on CPU 0"), "{text}");
        assert!(!ok_other);
    }

    #[test]
    fn pinning_a_running_process_tree_moves_every_thread() {
        if ncpus() < 2 {
            return;
        }
        // A shell with a child: both end up on CPU 1.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .expect("spawn sh");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while children_of(child.id()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let n = pin_process_tree(child.id(), 1).expect("pin");
        let (text, ok) = affinity_summary(child.id(), 1);
        for p in process_tree(child.id()).into_iter().rev() {
            // SAFETY: kill(2) on processes this test started.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.wait();
        assert_eq!(n, 2, "{text}");
        assert!(ok, "{text}");
    }
}
