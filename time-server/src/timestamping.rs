//! Receive timestamps from the kernel (`SO_TIMESTAMPING`), from the NIC where
//! it can, and the destination address of each datagram (`IP_PKTINFO`), read
//! out of the control messages that `recvmmsg` returns.
//!
//! Control-message parsing is a pure function over bytes so that the hardware
//! path, which no machine here can exercise, is tested with recorded messages.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

const SOF_TIMESTAMPING_RX_HARDWARE: u32 = 1 << 2;
const SOF_TIMESTAMPING_RX_SOFTWARE: u32 = 1 << 3;
const SOF_TIMESTAMPING_SOFTWARE: u32 = 1 << 4;
const SOF_TIMESTAMPING_RAW_HARDWARE: u32 = 1 << 6;

/// Which clock stamps arriving packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampSource {
    /// The NIC's clock (PHC), converted to system time.
    Hardware,
    /// The kernel, when the packet reaches the socket layer.
    Software,
    /// User space, after recvmmsg returns.
    User,
}

impl TimestampSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hardware => "hardware",
            Self::Software => "software",
            Self::User => "user",
        }
    }
}

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

fn align(n: usize) -> usize {
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

/// Write a control message that makes the reply leave from `meta.local_addr`.
/// Returns the bytes used (0 when there is nothing to set or no room).
pub fn write_pktinfo(meta: &RecvMeta, out: &mut [u8]) -> usize {
    let hdr = size_of::<libc::cmsghdr>();
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
    let total = align(hdr + dlen);
    if out.len() < total {
        return 0;
    }
    out[..total].fill(0);
    out[..size_of::<usize>()].copy_from_slice(&(hdr + dlen).to_ne_bytes());
    out[size_of::<usize>()..size_of::<usize>() + 4].copy_from_slice(&level.to_ne_bytes());
    out[size_of::<usize>() + 4..size_of::<usize>() + 8].copy_from_slice(&kind.to_ne_bytes());
    out[hdr..hdr + dlen].copy_from_slice(&data[..dlen]);
    total
}

/// Converts raw NIC timestamps to system time with the PHC-to-system offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PhcConversion {
    /// system time minus PHC time, in nanoseconds.
    pub offset_ns: i64,
}

impl PhcConversion {
    pub fn to_system(&self, raw: Nanos) -> Nanos {
        (raw as i64).saturating_add(self.offset_ns).max(0) as u64
    }

    /// Estimate the offset from (system before, PHC, system after) samples: the
    /// sample with the shortest bracket wins, its PHC read assumed at the midpoint.
    pub fn from_samples(samples: &[(Nanos, Nanos, Nanos)]) -> Option<Self> {
        samples
            .iter()
            .filter(|(a, _, b)| b >= a)
            .min_by_key(|(a, _, b)| b - a)
            .map(|&(a, phc, b)| {
                let mid = a + (b - a) / 2;
                Self {
                    offset_ns: mid as i64 - phc as i64,
                }
            })
    }
}

/// The timestamp to use for a datagram, per the source chosen at start.
pub fn pick(meta: &RecvMeta, source: TimestampSource, phc: &PhcConversion) -> Option<Nanos> {
    match source {
        TimestampSource::Hardware => meta
            .hardware_raw
            .map(|t| phc.to_system(t))
            .or(meta.software),
        TimestampSource::Software => meta.software,
        TimestampSource::User => None,
    }
}

/// Ask the kernel for receive timestamps (and destination addresses) on `sock`.
pub fn enable(sock: &socket2::Socket, hardware: bool, pktinfo: bool) -> std::io::Result<()> {
    let mut flags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    if hardware {
        flags |= SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE;
    }
    setsockopt_u32(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, flags)?;
    if pktinfo {
        match sock.local_addr()?.as_socket() {
            Some(std::net::SocketAddr::V4(_)) => {
                setsockopt_u32(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?
            }
            Some(std::net::SocketAddr::V6(_)) => {
                setsockopt_u32(sock, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?
            }
            None => {}
        }
    }
    Ok(())
}

fn setsockopt_u32(sock: &socket2::Socket, level: i32, name: i32, v: u32) -> std::io::Result<()> {
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

const SIOCSHWTSTAMP: libc::c_ulong = 0x89b0;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GET_TS_INFO: u32 = 0x41;
const HWTSTAMP_TX_OFF: i32 = 0;
const HWTSTAMP_FILTER_ALL: i32 = 1;
const HWTSTAMP_FILTER_NTP_ALL: i32 = 15;

#[repr(C)]
struct HwtstampConfig {
    flags: i32,
    tx_type: i32,
    rx_filter: i32,
}

#[repr(C)]
struct EthtoolTsInfo {
    cmd: u32,
    so_timestamping: u32,
    phc_index: i32,
    tx_types: u32,
    tx_reserved: [u32; 3],
    rx_filters: u32,
    rx_reserved: [u32; 3],
}

#[repr(C)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ifreq(interface: &str, data: *mut libc::c_void) -> std::io::Result<Ifreq> {
    let b = interface.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let mut name = [0u8; libc::IFNAMSIZ];
    name[..b.len()].copy_from_slice(b);
    Ok(Ifreq {
        name,
        data,
        _pad: [0; 16],
    })
}

/// Turn on NIC receive timestamping for `interface` and find its PHC.
/// Returns the PHC device index. Fails (EOPNOTSUPP and friends) where the NIC cannot.
pub fn enable_hardware(sock: &socket2::Socket, interface: &str) -> std::io::Result<i32> {
    let mut info = EthtoolTsInfo {
        cmd: ETHTOOL_GET_TS_INFO,
        so_timestamping: 0,
        phc_index: -1,
        tx_types: 0,
        tx_reserved: [0; 3],
        rx_filters: 0,
        rx_reserved: [0; 3],
    };
    let mut req = ifreq(interface, &mut info as *mut _ as *mut libc::c_void)?;
    // SAFETY: SIOCETHTOOL reads the ifreq and fills the ethtool_ts_info it points to.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info.so_timestamping & SOF_TIMESTAMPING_RAW_HARDWARE == 0 || info.phc_index < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    for filter in [HWTSTAMP_FILTER_NTP_ALL, HWTSTAMP_FILTER_ALL] {
        let mut cfg = HwtstampConfig {
            flags: 0,
            tx_type: HWTSTAMP_TX_OFF,
            rx_filter: filter,
        };
        let mut req = ifreq(interface, &mut cfg as *mut _ as *mut libc::c_void)?;
        // SAFETY: SIOCSHWTSTAMP reads and updates the hwtstamp_config it points to.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSHWTSTAMP, &mut req) } == 0 {
            return Ok(info.phc_index);
        }
    }
    Err(std::io::Error::last_os_error())
}

/// Open the PHC device `/dev/ptpN` (before privileges are dropped).
pub fn open_phc(phc_index: i32) -> std::io::Result<std::fs::File> {
    std::fs::File::open(format!("/dev/ptp{phc_index}"))
}

/// Sample the offset between a PHC and the system clock.
pub fn sample_phc(phc: &std::fs::File) -> std::io::Result<PhcConversion> {
    // FD_TO_CLOCKID: dynamic POSIX clock id of the PHC.
    let clock = ((!(phc.as_raw_fd() as libc::clockid_t)) << 3) | 3;
    let read = |id| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        let r = unsafe { libc::clock_gettime(id, &mut ts) };
        (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    };
    let mut samples = [(0u64, 0u64, 0u64); 7];
    for s in samples.iter_mut() {
        let a = read(libc::CLOCK_REALTIME);
        let p = read(clock);
        let b = read(libc::CLOCK_REALTIME);
        match (a, p, b) {
            (Some(a), Some(p), Some(b)) => *s = (a, p, b),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    PhcConversion::from_samples(&samples)
        .ok_or_else(|| std::io::Error::other("no usable PHC sample"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let hdr = size_of::<libc::cmsghdr>();
        let mut v = Vec::new();
        v.extend_from_slice(&(hdr + data.len()).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        v.resize(align(v.len()), 0);
        v
    }

    fn ts(sec: i64, nsec: i64) -> Vec<u8> {
        let mut v = sec.to_ne_bytes().to_vec();
        v.extend_from_slice(&nsec.to_ne_bytes());
        v
    }

    /// A recorded hardware receive: software stamp, the deprecated slot, the raw PHC stamp.
    fn hardware_record() -> Vec<u8> {
        let mut data = ts(1_763_700_000, 123_456_789);
        data.extend(ts(0, 0));
        data.extend(ts(37, 500));
        let mut buf = cmsg(libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &data);
        let mut pkt = vec![0u8; 12];
        pkt[..4].copy_from_slice(&2i32.to_ne_bytes());
        pkt[8..12].copy_from_slice(&[192, 0, 2, 10]);
        buf.extend(cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &pkt));
        buf
    }

    #[test]
    fn parses_recorded_hardware_and_pktinfo() {
        let m = parse_control(&hardware_record());
        assert_eq!(m.software, Some(1_763_700_000_123_456_789));
        assert_eq!(m.hardware_raw, Some(37_000_000_500));
        assert_eq!(m.local_addr, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(m.ifindex, 2);
        let phc = PhcConversion {
            offset_ns: 1_763_699_963_000_000_000,
        };
        assert_eq!(
            pick(&m, TimestampSource::Hardware, &phc),
            Some(1_763_700_000_000_000_500)
        );
        assert_eq!(
            pick(&m, TimestampSource::Software, &phc),
            Some(1_763_700_000_123_456_789)
        );
        assert_eq!(pick(&m, TimestampSource::User, &phc), None);
        // Hardware mode without a hardware stamp on this packet falls back to software.
        let mut sw_only = m;
        sw_only.hardware_raw = None;
        assert_eq!(
            pick(&sw_only, TimestampSource::Hardware, &phc),
            sw_only.software
        );
    }

    #[test]
    fn ipv6_pktinfo_and_garbage() {
        let mut d = "2001:db8::5".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        d.extend_from_slice(&7u32.to_ne_bytes());
        let m = parse_control(&cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &d));
        assert_eq!(m.local_addr, Some("2001:db8::5".parse().unwrap()));
        assert_eq!(m.ifindex, 7);
        // Truncated, zero-length and random buffers never panic.
        let rec = hardware_record();
        for n in 0..rec.len() {
            let _ = parse_control(&rec[..n]);
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut buf = vec![0u8; (x % 200) as usize];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = parse_control(&buf);
        }
    }

    #[test]
    fn pktinfo_round_trip() {
        for addr in ["198.51.100.1", "2001:db8::9"] {
            let meta = RecvMeta {
                local_addr: Some(addr.parse().unwrap()),
                ifindex: 3,
                ..Default::default()
            };
            let mut buf = [0u8; 64];
            let n = write_pktinfo(&meta, &mut buf);
            assert!(n > 0);
            let hdr = size_of::<libc::cmsghdr>();
            match meta.local_addr.unwrap() {
                // in_pktinfo.ipi_spec_dst selects the source address.
                IpAddr::V4(a) => assert_eq!(&buf[hdr + 4..hdr + 8], &a.octets()),
                IpAddr::V6(_) => assert_eq!(parse_control(&buf[..n]).local_addr, meta.local_addr),
            }
        }
        assert_eq!(write_pktinfo(&RecvMeta::default(), &mut [0u8; 64]), 0);
        let meta = RecvMeta {
            local_addr: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(write_pktinfo(&meta, &mut [0u8; 8]), 0);
    }

    #[test]
    fn phc_offset_uses_tightest_sample() {
        let c =
            PhcConversion::from_samples(&[(100, 10, 200), (1000, 950, 1010), (5, 0, 500)]).unwrap();
        assert_eq!(c.offset_ns, 1005 - 950);
        assert_eq!(c.to_system(1000), 1055);
        assert!(PhcConversion::from_samples(&[]).is_none());
    }

    #[test]
    fn software_timestamps_on_loopback_and_no_hardware_on_lo() {
        use std::net::UdpSocket;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        // The loopback interface has no PHC: hardware must be refused so the server falls back.
        assert!(enable_hardware(&sock, "lo").is_err());
        enable(&sock, false, true).unwrap();
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel turns receive stamping on through deferred work: the first
        // packets after enabling may arrive unstamped (the worker then stamps them
        // in user space and counts it). Retry until a stamped one arrives.
        let mut stamped = None;
        for _ in 0..50 {
            let before = crate::clock_state::now_nanos();
            tx.send_to(b"hello", addr).unwrap();
            let mut data = [0u8; 64];
            let mut ctrl = [0u8; 256];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            // SAFETY: msghdr points at buffers that live for the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = ctrl.len();
            // SAFETY: recvmsg on our own socket with valid buffers.
            let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
            assert_eq!(n, 5);
            let m = parse_control(&ctrl[..msg.msg_controllen]);
            let after = crate::clock_state::now_nanos();
            if m.software.is_some() {
                stamped = Some((before, m, after));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (before, m, after) = stamped.expect("kernel software timestamp");
        let sw = m.software.unwrap();
        assert!(
            sw + 1_000_000 >= before && sw <= after,
            "{before} {sw} {after}"
        );
        assert_eq!(m.local_addr, Some("127.0.0.1".parse().unwrap()));
        assert!(m.hardware_raw.is_none());
    }
}
