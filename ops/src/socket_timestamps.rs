//! Kernel timestamps and destination addresses of datagrams, from the control
//! messages `recvmsg`/`recvmmsg` return (`SO_TIMESTAMPING`, `IP_PKTINFO`),
//! shared by the time server and the client. Parsing is a pure function over
//! bytes, so recorded messages can test it.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

pub const SOF_TIMESTAMPING_TX_SOFTWARE: u32 = 1 << 1;
pub const SOF_TIMESTAMPING_RX_HARDWARE: u32 = 1 << 2;
pub const SOF_TIMESTAMPING_RX_SOFTWARE: u32 = 1 << 3;
pub const SOF_TIMESTAMPING_SOFTWARE: u32 = 1 << 4;
pub const SOF_TIMESTAMPING_RAW_HARDWARE: u32 = 1 << 6;
pub const SOF_TIMESTAMPING_OPT_ID: u32 = 1 << 7;
pub const SOF_TIMESTAMPING_OPT_TSONLY: u32 = 1 << 11;

/// A `struct timespec` as nanoseconds since the Unix epoch; 0 means absent.
pub type Nanos = u64;

/// What the control messages of one datagram say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    pub software: Option<Nanos>,
    /// Raw hardware timestamp, in the NIC clock's timescale.
    pub hardware_raw: Option<Nanos>,
    /// Destination address of the datagram (the address to answer from).
    pub local_addr: Option<IpAddr>,
    pub ifindex: u32,
}

pub fn align(n: usize) -> usize {
    let a = size_of::<usize>();
    (n + a - 1) & !(a - 1)
}

fn ne_usize(b: &[u8]) -> usize {
    let mut a = [0u8; size_of::<usize>()];
    a.copy_from_slice(&b[..size_of::<usize>()]);
    usize::from_ne_bytes(a)
}

fn ne_i32(b: &[u8]) -> i32 {
    i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn ne_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_ne_bytes(a)
}

fn timespec_nanos(b: &[u8]) -> Option<Nanos> {
    let sec = ne_i64(b);
    let nsec = ne_i64(&b[8..]);
    if sec <= 0 && nsec <= 0 || !(0..1_000_000_000).contains(&nsec) || sec < 0 {
        return None;
    }
    Some(sec as u64 * 1_000_000_000 + nsec as u64)
}

/// Parse the control buffer of one received datagram (Linux layout for this target).
/// Unknown or truncated messages are skipped; this never panics.
pub fn parse_control(buf: &[u8]) -> RecvMeta {
    let hdr = size_of::<libc::cmsghdr>();
    let mut meta = RecvMeta::default();
    let mut at = 0;
    while at + hdr <= buf.len() {
        let len = ne_usize(&buf[at..]);
        let level = ne_i32(&buf[at + size_of::<usize>()..]);
        let kind = ne_i32(&buf[at + size_of::<usize>() + 4..]);
        if len < hdr || at + len > buf.len() {
            break;
        }
        let data = &buf[at + hdr..at + len];
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SO_TIMESTAMPING) if data.len() >= 48 => {
                // struct scm_timestamping { timespec ts[3]; }: [0] software, [2] raw hardware.
                meta.software = timespec_nanos(&data[0..16]);
                meta.hardware_raw = timespec_nanos(&data[32..48]);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= 12 => {
                // struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                meta.ifindex = ne_i32(data) as u32;
                let a = &data[8..12];
                meta.local_addr = Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= 20 => {
                // struct in6_pktinfo { in6_addr addr; unsigned ifindex; }
                let mut a = [0u8; 16];
                a.copy_from_slice(&data[..16]);
                meta.local_addr = Some(IpAddr::V6(Ipv6Addr::from(a)));
                meta.ifindex = ne_i32(&data[16..]) as u32;
            }
            _ => {}
        }
        at += align(len);
    }
    meta
}

/// Write one control message (header, `data`, padding) at the start of
/// `out`; returns the bytes used, 0 when it does not fit. Also what tests use
/// to build recorded messages.
pub fn write_cmsg(level: i32, kind: i32, data: &[u8], out: &mut [u8]) -> usize {
    let hdr = size_of::<libc::cmsghdr>();
    let total = align(hdr + data.len());
    if out.len() < total {
        return 0;
    }
    out[..total].fill(0);
    out[..size_of::<usize>()].copy_from_slice(&(hdr + data.len()).to_ne_bytes());
    out[size_of::<usize>()..size_of::<usize>() + 4].copy_from_slice(&level.to_ne_bytes());
    out[size_of::<usize>() + 4..size_of::<usize>() + 8].copy_from_slice(&kind.to_ne_bytes());
    out[hdr..hdr + data.len()].copy_from_slice(data);
    total
}

/// One control message as a new buffer (for building recorded messages in tests).
pub fn cmsg_bytes(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; align(size_of::<libc::cmsghdr>() + data.len())];
    write_cmsg(level, kind, data, &mut v);
    v
}

/// Write a control message that makes the reply leave from `meta.local_addr`.
/// Returns the bytes used (0 when there is nothing to set or no room).
pub fn write_pktinfo(meta: &RecvMeta, out: &mut [u8]) -> usize {
    let (level, kind, data): (i32, i32, [u8; 20]) = match meta.local_addr {
        Some(IpAddr::V4(a)) => {
            let mut d = [0u8; 20];
            // ifindex 0 lets routing pick the interface; spec_dst is the source address.
            d[4..8].copy_from_slice(&a.octets());
            (libc::IPPROTO_IP, libc::IP_PKTINFO, d)
        }
        Some(IpAddr::V6(a)) => {
            let mut d = [0u8; 20];
            d[..16].copy_from_slice(&a.octets());
            d[16..20].copy_from_slice(&meta.ifindex.to_ne_bytes());
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, d)
        }
        None => return 0,
    };
    let dlen = if level == libc::IPPROTO_IP { 12 } else { 20 };
    write_cmsg(level, kind, &data[..dlen], out)
}

/// Ask the kernel for receive timestamps on `sock`, and with `pktinfo =
/// Some(is_ipv6)` for the destination address of each datagram too.
pub fn enable(sock: &impl AsRawFd, hardware: bool, pktinfo: Option<bool>) -> std::io::Result<()> {
    let mut flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    if hardware {
        flags |= SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE;
    }
    setsockopt_u32(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags)?;
    match pktinfo {
        Some(false) => setsockopt_u32(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?,
        Some(true) => setsockopt_u32(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?,
        None => {}
    }
    Ok(())
}

/// Ask for software receive and transmit timestamps; transmit stamps come back
/// on the error queue without the packet (`OPT_TSONLY`).
pub fn enable_rx_tx(sock: &impl AsRawFd) -> std::io::Result<()> {
    let flags = SOF_TIMESTAMPING_RX_SOFTWARE
        | SOF_TIMESTAMPING_TX_SOFTWARE
        | SOF_TIMESTAMPING_SOFTWARE
        | SOF_TIMESTAMPING_OPT_TSONLY
        | SOF_TIMESTAMPING_OPT_ID;
    setsockopt_u32(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags)
}

/// Set an integer socket option.
pub fn setsockopt_u32(sock: &impl AsRawFd, level: i32, name: i32, v: u32) -> std::io::Result<()> {
    // SAFETY: the option value is a u32 that lives for the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &v as *const u32 as *const libc::c_void,
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
