//! Receive timestamps from the kernel (`SO_TIMESTAMPING`), from the NIC where
//! it can, and the destination address of each datagram (`IP_PKTINFO`), read
//! out of the control messages that `recvmmsg` returns.
//!
//! Control-message parsing is a pure function over bytes so that the hardware
//! path, which no machine here can exercise, is tested with recorded messages.

use std::os::fd::AsRawFd;

use nts_ops::socket_timestamps::SOF_TIMESTAMPING_RAW_HARDWARE;
pub use nts_ops::socket_timestamps::{enable, parse_control, write_pktinfo, Nanos, RecvMeta};

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

const SIOCSHWTSTAMP: libc::c_ulong = 0x89b0;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GET_TS_INFO: u32 = 0x41;
const HWTSTAMP_TX_OFF: i32 = 0;
const HWTSTAMP_TX_ON: i32 = 1;
const SOF_TIMESTAMPING_TX_HARDWARE: u32 = 1 << 0;
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

/// What NIC timestamping could be turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareTimestamping {
    /// The NIC's PTP hardware clock, `/dev/ptpN`.
    pub phc_index: i32,
    /// The NIC stamps transmitted packets too (for interleaved mode).
    pub transmit: bool,
}

/// Turn on NIC timestamping for `interface` (receive, and transmit where the
/// NIC can) and find its PHC. Fails (EOPNOTSUPP and friends) where the NIC
/// cannot stamp received packets.
pub fn enable_hardware(
    sock: &socket2::Socket,
    interface: &str,
) -> std::io::Result<HardwareTimestamping> {
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
    let tx_capable = info.tx_types & (1 << HWTSTAMP_TX_ON) != 0
        && info.so_timestamping & SOF_TIMESTAMPING_TX_HARDWARE != 0;
    let tx_choices: &[i32] = if tx_capable {
        &[HWTSTAMP_TX_ON, HWTSTAMP_TX_OFF]
    } else {
        &[HWTSTAMP_TX_OFF]
    };
    for &tx_type in tx_choices {
        for filter in [HWTSTAMP_FILTER_NTP_ALL, HWTSTAMP_FILTER_ALL] {
            let mut cfg = HwtstampConfig {
                flags: 0,
                tx_type,
                rx_filter: filter,
            };
            let mut req = ifreq(interface, &mut cfg as *mut _ as *mut libc::c_void)?;
            // SAFETY: SIOCSHWTSTAMP reads and updates the hwtstamp_config it points to.
            if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSHWTSTAMP, &mut req) } == 0 {
                return Ok(HardwareTimestamping {
                    phc_index: info.phc_index,
                    transmit: tx_type == HWTSTAMP_TX_ON,
                });
            }
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
    use std::mem::size_of;
    use std::net::{IpAddr, Ipv6Addr};

    use nts_ops::socket_timestamps::cmsg_bytes as cmsg;

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
        enable(&sock, false, Some(false)).unwrap();
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
