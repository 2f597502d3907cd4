//! `nts-echo`: the baseline. The same socket set-up as `nts-time-server`
//! (one `SO_REUSEPORT` socket and thread per worker, 4 MiB receive buffer,
//! `SO_TIMESTAMPING` software receive timestamps, blocking `recvmmsg` with
//! `MSG_WAITFORONE` and a 200 ms timeout, batched `sendmmsg`, through the
//! same `nts_ops::batch_socket` as the time server's workers), but every
//! datagram goes back unchanged: the cost of moving packets, without NTP.

use anyhow::{bail, Context, Result};
use clap::Parser;
use nts_bench::sys::setsockopt_int;
use nts_ops::batch_socket::{RxBatch, TxBatch};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
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
    // The time server's batch I/O, so the baseline measures the same path.
    let mut rx = RxBatch::new(batch, MAX_LEN, RX_CTRL);
    let mut tx = TxBatch::new(batch, MAX_LEN, 0);
    while !stop.load(Ordering::Relaxed) {
        let n = rx.recv(sock.as_fd()).unwrap_or(0);
        if n == 0 {
            continue;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        // Send back what came in: same bytes, to the sender.
        for i in 0..n {
            let d = rx.get(i);
            let (buf, _) = tx.next_slot();
            buf[..d.data.len()].copy_from_slice(d.data);
            tx.queue(d.data.len(), 0, d.peer, d.peer_len);
        }
        tx.send(sock.as_fd());
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
