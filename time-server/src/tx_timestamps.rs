//! Transmit timestamps for interleaved mode: the kernel (or the NIC) stamps a
//! response when it leaves and loops a copy back on the socket's error queue
//! with the stamp; the copy's NTP receive field names the table entry the
//! stamp belongs to ([`nts_proto::interleaved::TransmitTable`]).
//!
//! Only responses to clients that use interleaved mode are stamped: the
//! request comes per datagram, as a control message on `sendmmsg`, so basic
//! clients cost nothing. The looped-back copy starts at the link-layer header,
//! the network header or the payload depending on the device; finding the
//! NTP header in it is a pure function, tested on recorded packets.

use crate::timestamping::{PhcConversion, TimestampSource};
use nts_ops::socket_timestamps::{parse_control, write_cmsg, Nanos};
use nts_proto::ntp_packet::{NtpTimestamp, HEADER_LEN};
use std::mem::zeroed;

const SOF_TIMESTAMPING_TX_HARDWARE: u32 = 1 << 0;
const SOF_TIMESTAMPING_TX_SOFTWARE: u32 = 1 << 1;

/// Bytes of control buffer [`write_request`] needs.
pub const REQUEST_CMSG_LEN: usize = 24;

/// Write the control message that asks for a transmit timestamp of one
/// datagram (software, and hardware where the NIC stamps). Returns its length,
/// 0 when `out` has no room.
pub fn write_request(hardware: bool, out: &mut [u8]) -> usize {
    let mut flags = SOF_TIMESTAMPING_TX_SOFTWARE;
    if hardware {
        flags |= SOF_TIMESTAMPING_TX_HARDWARE;
    }
    write_cmsg(
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        &flags.to_ne_bytes(),
        out,
    )
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

/// UDP payload of an IP packet at the start of `data`.
fn ip_udp_payload(data: &[u8]) -> Option<&[u8]> {
    let (header_len, total, protocol) = match data.first()? >> 4 {
        4 if data.len() >= 20 => {
            let ihl = (data[0] & 0x0f) as usize * 4;
            (ihl, be16(&data[2..]), data[9])
        }
        6 if data.len() >= 40 => (40, 40 + be16(&data[4..]), data[6]),
        _ => return None,
    };
    if protocol != libc::IPPROTO_UDP as u8 || header_len < 20 || total < header_len + 8 {
        return None;
    }
    let udp = data.get(header_len..header_len + 8)?;
    let udp_len = be16(&udp[4..]);
    if udp_len < 8 || header_len + udp_len > total {
        return None;
    }
    let end = (header_len + udp_len).min(data.len());
    data.get(header_len + 8..end)
}

/// The UDP payload of a packet looped back on the error queue.
pub fn looped_payload(data: &[u8]) -> Option<&[u8]> {
    if let Some(p) = ip_udp_payload(data) {
        return Some(p);
    }
    // Ethernet, with any 802.1Q / 802.1ad tags.
    let mut at = 12;
    loop {
        match be16(data.get(at..at + 2)?) {
            0x8100 | 0x88a8 => at += 4,
            0x0800 | 0x86dd => return ip_udp_payload(&data[at + 2..]),
            _ => return None,
        }
    }
}

/// The receive timestamp field of our own response: the table key its
/// transmit timestamp belongs to. None for anything that is not a whole
/// server-mode NTP header.
pub fn response_key(payload: &[u8]) -> Option<NtpTimestamp> {
    let h = payload.get(..HEADER_LEN)?;
    if h[0] & 7 != 4 {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[32..40]);
    Some(NtpTimestamp(u64::from_be_bytes(b)))
}

/// One stamp read back: which response, when it left, and from which clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentStamp {
    pub key: NtpTimestamp,
    pub nanos: Nanos,
    pub hardware: bool,
}

/// Interpret one error-queue message (its data and control buffer).
pub fn sent_stamp(data: &[u8], control: &[u8], phc: &PhcConversion) -> Option<SentStamp> {
    let meta = parse_control(control);
    let key = response_key(looped_payload(data)?)?;
    match (meta.hardware_raw, meta.software) {
        (Some(raw), _) => Some(SentStamp {
            key,
            nanos: phc.to_system(raw),
            hardware: true,
        }),
        (None, Some(sw)) => Some(SentStamp {
            key,
            nanos: sw,
            hardware: false,
        }),
        (None, None) => None,
    }
}

const ERRQ_BATCH: usize = 8;
const ERRQ_DATA: usize = 320;
const ERRQ_CTRL: usize = 256;

/// Buffers for reading the error queue, allocated once per worker.
pub struct ErrorQueue {
    data: Vec<[u8; ERRQ_DATA]>,
    ctrl: Vec<[u8; ERRQ_CTRL]>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

impl Default for ErrorQueue {
    fn default() -> Self {
        Self {
            data: vec![[0; ERRQ_DATA]; ERRQ_BATCH],
            ctrl: vec![[0; ERRQ_CTRL]; ERRQ_BATCH],
            // SAFETY: all-zero is a valid value for these plain C structs.
            iov: vec![unsafe { zeroed() }; ERRQ_BATCH],
            // SAFETY: all-zero is a valid value of this plain C struct.
            hdr: vec![unsafe { zeroed() }; ERRQ_BATCH],
        }
    }
}

impl ErrorQueue {
    /// Read every stamp waiting on `fd`'s error queue without blocking, and
    /// hand each to `on_stamp`; returns how many messages were read (stamps
    /// or not).
    pub fn drain(
        &mut self,
        fd: i32,
        source: TimestampSource,
        phc: &PhcConversion,
        mut on_stamp: impl FnMut(Option<SentStamp>),
    ) -> usize {
        let mut total = 0;
        loop {
            for i in 0..ERRQ_BATCH {
                self.iov[i] = libc::iovec {
                    iov_base: self.data[i].as_mut_ptr() as *mut libc::c_void,
                    iov_len: ERRQ_DATA,
                };
                let h = &mut self.hdr[i].msg_hdr;
                h.msg_name = std::ptr::null_mut();
                h.msg_namelen = 0;
                h.msg_iov = &mut self.iov[i];
                h.msg_iovlen = 1;
                h.msg_control = self.ctrl[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_controllen = ERRQ_CTRL;
                h.msg_flags = 0;
                self.hdr[i].msg_len = 0;
            }
            // SAFETY: every header points into buffers owned by self, sized as declared.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdr.as_mut_ptr(),
                    ERRQ_BATCH as u32,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                return total;
            }
            for i in 0..n as usize {
                let h = &self.hdr[i];
                let len = (h.msg_len as usize).min(ERRQ_DATA);
                let clen = h.msg_hdr.msg_controllen.min(ERRQ_CTRL);
                let mut s = sent_stamp(&self.data[i][..len], &self.ctrl[i][..clen], phc);
                if source != TimestampSource::Hardware {
                    // A raw NIC stamp is meaningless without the PHC conversion.
                    s = s.filter(|s| !s.hardware);
                }
                on_stamp(s);
            }
            total += n as usize;
            if (n as usize) < ERRQ_BATCH {
                return total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_ops::socket_timestamps::cmsg_bytes as cmsg;
    use std::mem::size_of;

    fn ntp_response(receive: u64) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x24; // LI 0, version 4, mode 4 (server)
        p[32..40].copy_from_slice(&receive.to_be_bytes());
        p.extend_from_slice(&[0xaa; 60]); // NTS fields, opaque here
        p
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = vec![0, 123, 0x9c, 0x40];
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn ipv4(payload: &[u8]) -> Vec<u8> {
        let u = udp(payload);
        let mut p = vec![0x45, 0xb8];
        p.extend_from_slice(&((20 + u.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        p.extend_from_slice(&u);
        p
    }

    fn ipv6(payload: &[u8]) -> Vec<u8> {
        let u = udp(payload);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(u.len() as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(&u);
        p
    }

    fn ethernet(ethertype: u16, vlan: bool, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    /// Loopback (Ethernet header of zeros), a NIC with and without a VLAN
    /// tag, a tunnel (no link layer), IPv4 and IPv6: the key is found.
    #[test]
    fn finds_the_response_in_every_framing() {
        let key = 0xe9a1_0000_1234_5679u64;
        let resp = ntp_response(key);
        let framings = [
            ethernet(0x0800, false, &ipv4(&resp)),
            ethernet(0x86dd, false, &ipv6(&resp)),
            ethernet(0x0800, true, &ipv4(&resp)),
            ethernet(0x86dd, true, &ipv6(&resp)),
            ipv4(&resp),
            ipv6(&resp),
        ];
        for f in &framings {
            let p = looped_payload(f).expect("payload");
            assert_eq!(p, &resp[..]);
            assert_eq!(response_key(p), Some(NtpTimestamp(key)));
            // Truncated copies still name the key while the NTP header is there.
            let cut = &f[..f.len() - resp.len() + 48];
            assert_eq!(
                response_key(looped_payload(cut).unwrap()),
                Some(NtpTimestamp(key))
            );
        }
        // Not UDP, not server mode, garbage and every truncation: no key, no panic.
        let mut tcp = ipv4(&resp);
        tcp[9] = 6;
        assert_eq!(looped_payload(&tcp), None);
        let mut client = resp.clone();
        client[0] = 0x23;
        assert_eq!(response_key(&client), None);
        for f in &framings {
            for n in 0..f.len() {
                let _ = looped_payload(&f[..n]).and_then(response_key);
            }
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut buf = vec![0u8; (x % 300) as usize];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = looped_payload(&buf).and_then(response_key);
        }
    }

    fn stamps(sw: (i64, i64), hw: (i64, i64)) -> Vec<u8> {
        let mut d = Vec::new();
        for (s, n) in [sw, (0, 0), hw] {
            d.extend_from_slice(&s.to_ne_bytes());
            d.extend_from_slice(&n.to_ne_bytes());
        }
        d
    }

    /// Recorded error-queue messages: the extended error (ENOMSG,
    /// SO_EE_ORIGIN_TIMESTAMPING) and the stamps; a hardware stamp is
    /// converted with the PHC offset, a software one taken as it is.
    #[test]
    fn reads_recorded_software_and_hardware_stamps() {
        let resp = ntp_response(0x1111_2222_3333_4445);
        let frame = ethernet(0x0800, false, &ipv4(&resp));
        let mut ee = vec![0u8; 16];
        ee[..4].copy_from_slice(&(libc::ENOMSG as u32).to_ne_bytes());
        ee[4] = 4; // SO_EE_ORIGIN_TIMESTAMPING
        let phc = PhcConversion {
            offset_ns: 1_000_000_000,
        };
        let mut sw = cmsg(
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            &stamps((1_764_000_000, 500), (0, 0)),
        );
        sw.extend(cmsg(libc::SOL_IP, libc::IP_RECVERR, &ee));
        assert_eq!(
            sent_stamp(&frame, &sw, &phc),
            Some(SentStamp {
                key: NtpTimestamp(0x1111_2222_3333_4445),
                nanos: 1_764_000_000_000_000_500,
                hardware: false
            })
        );
        let hw = cmsg(
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            &stamps((0, 0), (1_763_999_999, 700)),
        );
        assert_eq!(
            sent_stamp(&frame, &hw, &phc),
            Some(SentStamp {
                key: NtpTimestamp(0x1111_2222_3333_4445),
                nanos: 1_764_000_000_000_000_700,
                hardware: true
            })
        );
        // No stamp in the control messages, or no packet: nothing.
        assert_eq!(
            sent_stamp(&frame, &cmsg(libc::SOL_IP, libc::IP_RECVERR, &ee), &phc),
            None
        );
        assert_eq!(sent_stamp(&[], &sw, &phc), None);
    }

    #[test]
    fn request_cmsg_layout() {
        let mut buf = [0xffu8; 64];
        let n = write_request(true, &mut buf);
        assert_eq!(n, REQUEST_CMSG_LEN);
        let hdr = size_of::<libc::cmsghdr>();
        assert_eq!(
            u32::from_ne_bytes(buf[hdr..hdr + 4].try_into().unwrap()),
            SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_TX_HARDWARE
        );
        assert_eq!(write_request(false, &mut [0u8; 8]), 0);
    }

    /// The kernel really loops a stamped copy back on loopback, and only for
    /// the datagram that asked.
    #[test]
    fn loopback_stamps_only_the_datagram_that_asked() {
        use std::os::fd::AsRawFd;
        let server =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        server
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        crate::timestamping::enable(&server, false, None).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to: socket2::SockAddr = peer.local_addr().unwrap().into();
        let send = |payload: &[u8], stamp: bool| {
            let mut ctrl = [0u8; 64];
            let clen = if stamp {
                write_request(false, &mut ctrl)
            } else {
                0
            };
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            // SAFETY: msghdr points at buffers that live for the call.
            let mut msg: libc::msghdr = unsafe { zeroed() };
            msg.msg_name = to.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = to.len();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if clen > 0 {
                msg.msg_control = ctrl.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = clen;
            }
            // SAFETY: sendmsg on our own socket with valid buffers.
            let r = unsafe { libc::sendmsg(server.as_raw_fd(), &msg, 0) };
            assert_eq!(r as usize, payload.len());
        };
        let before = crate::clock_state::now_nanos();
        send(&ntp_response(0xaaaa_0000_0000_0001), false);
        send(&ntp_response(0xbbbb_0000_0000_0003), true);
        let mut q = ErrorQueue::default();
        let mut got = Vec::new();
        for _ in 0..50 {
            q.drain(
                server.as_raw_fd(),
                TimestampSource::Software,
                &PhcConversion::default(),
                |s| got.push(s),
            );
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let after = crate::clock_state::now_nanos();
        assert_eq!(got.len(), 1, "{got:?}");
        let s = got[0].expect("a stamp with the packet");
        assert_eq!(s.key, NtpTimestamp(0xbbbb_0000_0000_0003));
        assert!(!s.hardware);
        assert!(
            s.nanos >= before && s.nanos <= after,
            "{before} {} {after}",
            s.nanos
        );
    }
}
