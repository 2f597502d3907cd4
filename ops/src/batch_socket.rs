//! Batched UDP I/O (`recvmmsg`/`sendmmsg`) with buffers allocated once: the
//! time server's workers and the echo baseline of the benchmark move
//! datagrams through this one type, so both measure the same socket path.
//!
//! Receive: [`RxBatch`] holds `batch` slots of data, control messages and
//! peer addresses; one `recvmmsg` (`MSG_WAITFORONE`: block for the first,
//! take what else is queued) fills them. Send: the caller writes responses
//! into [`TxBatch`] slots and queues them; [`TxBatch::send`] sends every
//! queued datagram, retrying the rest of the batch after `EINTR` and
//! skipping only a datagram the kernel refused.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Slots of one direction: data, control and address per datagram.
struct Slots {
    buf_len: usize,
    ctrl_len: usize,
    data: Vec<u8>,
    ctrl: Vec<u8>,
    addr: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov`/`hdr` only ever point into this
// struct's own heap buffers (set right before each system call), so moving
// the struct to another thread moves what they point to with it.
unsafe impl Send for Slots {}

impl Slots {
    fn new(batch: usize, buf_len: usize, ctrl_len: usize) -> Self {
        Self {
            buf_len,
            ctrl_len,
            data: vec![0; batch * buf_len],
            ctrl: vec![0; batch * ctrl_len],
            // SAFETY: all-zero is a valid value of these plain C structs.
            addr: vec![unsafe { zeroed() }; batch],
            // SAFETY: as above.
            iov: vec![unsafe { zeroed() }; batch],
            // SAFETY: as above.
            hdr: vec![unsafe { zeroed() }; batch],
        }
    }

    /// Point header `i` at its slot: `len` bytes of data, `ctrl` bytes of
    /// control, the address with `name_len`.
    fn point(&mut self, i: usize, len: usize, ctrl: usize, name_len: u32) {
        self.iov[i] = libc::iovec {
            iov_base: self.data[i * self.buf_len..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let h = &mut self.hdr[i].msg_hdr;
        h.msg_name = (&mut self.addr[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = name_len;
        h.msg_iov = &mut self.iov[i];
        h.msg_iovlen = 1;
        h.msg_control = if ctrl > 0 {
            self.ctrl[i * self.ctrl_len..].as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
        h.msg_controllen = ctrl;
        h.msg_flags = 0;
        self.hdr[i].msg_len = 0;
    }
}

/// Datagrams received by one [`RxBatch::recv`].
pub struct RxBatch {
    slots: Slots,
    received: usize,
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Its bytes (at most the slot's size).
    pub data: &'a [u8],
    /// The control messages the kernel attached (timestamps, destination).
    pub control: &'a [u8],
    pub peer: &'a libc::sockaddr_storage,
    /// Length of `peer` as the kernel filled it.
    pub peer_len: u32,
    /// Longer than the slot: `data` is cut.
    pub truncated: bool,
}

impl RxBatch {
    /// `batch` slots of `buf_len` bytes and `ctrl_len` bytes of control each.
    pub fn new(batch: usize, buf_len: usize, ctrl_len: usize) -> Self {
        Self {
            slots: Slots::new(batch.max(1), buf_len, ctrl_len),
            received: 0,
        }
    }

    /// Wait for datagrams (`MSG_WAITFORONE`); how many arrived. A receive
    /// timeout or a signal is an error (`WouldBlock`, `Interrupted`), after
    /// which the batch is empty.
    pub fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let s = &mut self.slots;
        let n = s.hdr.len();
        for i in 0..n {
            s.point(
                i,
                s.buf_len,
                s.ctrl_len,
                size_of::<libc::sockaddr_storage>() as u32,
            );
        }
        self.received = 0;
        // SAFETY: every header points into this batch's own buffers, sized as declared.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                s.hdr.as_mut_ptr(),
                n as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = r as usize;
        Ok(self.received)
    }

    /// How many datagrams the last `recv` returned.
    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Datagram `i` of the last `recv` (`i < len()`).
    pub fn get(&self, i: usize) -> Datagram<'_> {
        let s = &self.slots;
        let h = &s.hdr[i];
        let len = (h.msg_len as usize).min(s.buf_len);
        let ctrl = h.msg_hdr.msg_controllen.min(s.ctrl_len);
        Datagram {
            data: &s.data[i * s.buf_len..i * s.buf_len + len],
            control: &s.ctrl[i * s.ctrl_len..i * s.ctrl_len + ctrl],
            peer: &s.addr[i],
            peer_len: h.msg_hdr.msg_namelen,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}

/// Datagrams to send, queued in order.
pub struct TxBatch {
    slots: Slots,
    queued: usize,
    /// Per queued datagram: (length, control length, address length).
    lens: Vec<(usize, usize, u32)>,
}

/// What one [`TxBatch::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    pub sent: usize,
    /// Datagrams the kernel refused (each skipped, the rest still sent).
    pub errors: usize,
}

impl TxBatch {
    pub fn new(batch: usize, buf_len: usize, ctrl_len: usize) -> Self {
        let batch = batch.max(1);
        Self {
            slots: Slots::new(batch, buf_len, ctrl_len),
            queued: 0,
            lens: vec![(0, 0, 0); batch],
        }
    }

    /// How many datagrams are queued; the next one goes into slot `queued()`.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.queued == self.lens.len()
    }

    /// The data and control buffers of the next slot, to write a datagram into.
    pub fn next_slot(&mut self) -> (&mut [u8], &mut [u8]) {
        let s = &mut self.slots;
        let i = self.queued.min(self.lens.len() - 1);
        (
            &mut s.data[i * s.buf_len..(i + 1) * s.buf_len],
            &mut s.ctrl[i * s.ctrl_len..(i + 1) * s.ctrl_len],
        )
    }

    /// Queue what was written into [`next_slot`](Self::next_slot): `len`
    /// bytes and `ctrl_len` bytes of control, to `peer` (`peer_len` bytes).
    /// Ignored when the batch is full.
    pub fn queue(
        &mut self,
        len: usize,
        ctrl_len: usize,
        peer: &libc::sockaddr_storage,
        peer_len: u32,
    ) {
        if self.is_full() {
            return;
        }
        let i = self.queued;
        self.slots.addr[i] = *peer;
        self.lens[i] = (
            len.min(self.slots.buf_len),
            ctrl_len.min(self.slots.ctrl_len),
            peer_len,
        );
        self.queued += 1;
    }

    /// Send everything queued (`sendmmsg`, as many calls as needed); the
    /// batch is empty afterwards.
    pub fn send(&mut self, fd: BorrowedFd<'_>) -> Sent {
        let n = self.queued;
        for i in 0..n {
            let (len, ctrl, name) = self.lens[i];
            self.slots.point(i, len, ctrl, name);
        }
        let hdr = &mut self.slots.hdr;
        let report = send_all(n, |from| {
            // SAFETY: headers [from, n) point into this batch's buffers, set up above.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdr[from..].as_mut_ptr(),
                    (n - from) as u32,
                    0,
                )
            };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        });
        self.queued = 0;
        report
    }
}

/// Send `total` datagrams through `send(from)`, which sends some of
/// `[from, total)` and says how many: after `EINTR` nothing was sent, so the
/// same datagrams are tried again; any other error is about the datagram at
/// `from` (an unreachable destination, say), which is counted and skipped.
pub fn send_all(total: usize, mut send: impl FnMut(usize) -> io::Result<usize>) -> Sent {
    let mut report = Sent::default();
    let mut from = 0;
    while from < total {
        match send(from) {
            Ok(n) if n > 0 => {
                let n = n.min(total - from);
                report.sent += n;
                from += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => {
                report.errors += 1;
                from += 1;
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A signal while sending (EINTR) sends nothing: the batch must be tried
    /// again from the same datagram, not skip it as a refused one.
    #[test]
    fn eintr_retries_the_rest_of_the_batch() {
        let mut calls = Vec::new();
        let mut script =
            vec![Ok(2), Err(io::Error::from_raw_os_error(libc::EINTR)), Ok(3)].into_iter();
        let r = send_all(5, |from| {
            calls.push(from);
            script.next().unwrap()
        });
        assert_eq!(calls, [0, 2, 2]);
        assert_eq!(r, Sent { sent: 5, errors: 0 });
    }

    #[test]
    fn a_refused_datagram_is_skipped_and_counted() {
        let mut calls = Vec::new();
        let mut script = vec![
            Ok(1),
            Err(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            Ok(0),
            Ok(9),
        ]
        .into_iter();
        let r = send_all(4, |from| {
            calls.push(from);
            script.next().unwrap()
        });
        assert_eq!(calls, [0, 1, 2, 3]);
        assert_eq!(
            r,
            Sent {
                sent: 1 + 1,
                errors: 2
            }
        );
    }

    #[test]
    fn moves_datagrams_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for m in [&b"one"[..], b"two", b"three-is-too-long"] {
            a.send_to(m, b.local_addr().unwrap()).unwrap();
        }
        let mut rx = RxBatch::new(4, 8, 64);
        let mut got = 0;
        let mut seen = Vec::new();
        while got < 3 {
            let n = rx.recv(b.as_fd()).unwrap();
            for i in 0..n {
                let d = rx.get(i);
                seen.push((d.data.to_vec(), d.truncated));
            }
            got += n;
        }
        assert_eq!(
            seen,
            [
                (b"one".to_vec(), false),
                (b"two".to_vec(), false),
                (b"three-is".to_vec(), true)
            ]
        );
        // Echo the first one back through a TxBatch.
        let n = rx.recv_nonblocking_for_test(&a, &b);
        assert_eq!(n, 1);
        let d = rx.get(0);
        let mut tx = TxBatch::new(2, 8, 0);
        let (buf, _) = tx.next_slot();
        buf[..d.data.len()].copy_from_slice(d.data);
        let (len, peer, peer_len) = (d.data.len(), *d.peer, d.peer_len);
        tx.queue(len, 0, &peer, peer_len);
        assert_eq!(tx.send(b.as_fd()), Sent { sent: 1, errors: 0 });
        a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut back = [0u8; 16];
        let (n, from) = a.recv_from(&mut back).unwrap();
        assert_eq!(&back[..n], b"ping");
        assert_eq!(from, b.local_addr().unwrap());
        assert_eq!(tx.queued(), 0);
    }

    impl RxBatch {
        /// Send "ping" from `a` to `b` and receive it on `b`.
        fn recv_nonblocking_for_test(
            &mut self,
            a: &std::net::UdpSocket,
            b: &std::net::UdpSocket,
        ) -> usize {
            a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
            self.recv(b.as_fd()).unwrap()
        }
    }
}
