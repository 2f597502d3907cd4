//! `nts-echo`: the baseline. The same socket set-up as `nts-time-server`
//! (one `SO_REUSEPORT` socket and thread per worker, 4 MiB receive buffer,
//! `SO_TIMESTAMPING` software receive timestamps, blocking `recvmmsg` with
//! `MSG_WAITFORONE` and a 200 ms timeout, batched `sendmmsg`), but every
//! datagram goes back unchanged: the cost of moving packets, without NTP.

use anyhow::{bail, Context, Result};
use clap::Parser;
use nts_bench::sys::setsockopt_int;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_LEN: usize = 2048;
const RX_CTRL: usize = 256;
// linux/net_tstamp.h
const SOF_TIMESTAMPING_RX_SOFTWARE: i32 = 1 << 3;
const SOF_TIMESTAMPING_SOFTWARE: i32 = 1 << 4;

/// UDP echo server with the time server's socket set-up (loopback only).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4124")]
    listen: SocketAddr,
    /// Worker threads (one SO_REUSEPORT socket each).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Datagrams per recvmmsg/sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Do not ask for kernel receive timestamps.
    #[arg(long)]
    no_timestamping: bool,
    /// Exit after this many seconds (the benchmark stops it earlier).
    #[arg(long, default_value_t = 900)]
    max_secs: u64,
}

fn bind(addr: SocketAddr, timestamping: bool) -> Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.bind(&addr.into())
        .with_context(|| format!("cannot bind UDP {addr}"))?;
    if timestamping {
        setsockopt_int(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE,
        )?;
    }
    Ok(s)
}

fn worker(sock: socket2::Socket, batch: usize, stop: &AtomicBool, count: &AtomicU64) {
    let fd = sock.as_raw_fd();
    let mut buf = vec![[0u8; MAX_LEN]; batch];
    let mut ctrl = vec![[0u8; RX_CTRL]; batch];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addr: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; batch];
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut iov: Vec<libc::iovec> = vec![unsafe { zeroed() }; batch];
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut hdr: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; batch];
    while !stop.load(Ordering::Relaxed) {
        for i in 0..batch {
            iov[i] = libc::iovec {
                iov_base: buf[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_LEN,
            };
            let h = &mut hdr[i].msg_hdr;
            h.msg_name = &mut addr[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = ctrl[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = RX_CTRL;
            h.msg_flags = 0;
            hdr[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by this frame, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdr.as_mut_ptr(),
                batch as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        count.fetch_add(n as u64, Ordering::Relaxed);
        // Send back what came in, in place: same buffer, same length, to the sender.
        for i in 0..n {
            iov[i].iov_len = hdr[i].msg_len as usize;
            let h = &mut hdr[i].msg_hdr;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: headers [sent, n) point into live buffers set up above.
            let r = unsafe { libc::sendmmsg(fd, hdr[sent..].as_mut_ptr(), (n - sent) as u32, 0) };
            if r <= 0 {
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let workers = cli.workers.clamp(1, 64);
    let batch = cli.batch.clamp(1, 1024);
    let first = bind(cli.listen, !cli.no_timestamping)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .context("bound socket has no address")?;
    let mut socks = vec![first];
    for _ in 1..workers {
        socks.push(bind(bound, !cli.no_timestamping)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (i, s) in socks.into_iter().enumerate() {
        let (stop, count) = (stop.clone(), count.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-{i}"))
                .spawn(move || worker(s, batch, &stop, &count))?,
        );
    }
    eprintln!("nts-echo: {workers} workers on {bound}, batch {batch}");
    let deadline = Instant::now() + Duration::from_secs(cli.max_secs);
    // SIGTERM/SIGINT end the process by default; the deadline bounds it otherwise.
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    eprintln!(
        "nts-echo: {} datagrams echoed",
        count.load(Ordering::Relaxed)
    );
    Ok(())
}
