//! Steering each client address to one worker: a classic BPF program attached
//! to a `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_CBPF`) that picks the
//! socket from a keyed hash of the source address only (IPv6: its /64), never
//! the source port. Every datagram of one client then reaches the same worker,
//! whose rate-limit table sees all of that client's traffic: the limit holds
//! whatever the number of workers and whatever the client does with its
//! ports. Without it the kernel hashes the 4-tuple and a client changing its
//! source port is limited once per worker.
//!
//! The program is built here as plain data; [`steer`] is the same hash in
//! Rust, and the unit tests run the program through a small interpreter to
//! prove they agree.

use std::net::IpAddr;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_ALU: u16 = 0x04;
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const ST: u16 = 0x02; // BPF_ST: M[k] = A
const LD_MEM: u16 = 0x60; // BPF_LD (0) | BPF_MEM: A = M[k]
const ALU_XOR_K: u16 = BPF_ALU | 0xa0;
const ALU_XOR_X: u16 = BPF_ALU | 0xa0 | 0x08;
const ALU_MUL_K: u16 = BPF_ALU | 0x20;
const ALU_RSH_K: u16 = BPF_ALU | 0x70;
const ALU_MOD_K: u16 = BPF_ALU | 0x90;
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A
/// Loads at this offset and above address the network (IP) header.
const NET_OFF: i32 = -0x100000;

/// Secret hash parameters, so that nobody can choose addresses that all land on one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteeringKey {
    xor: [u32; 2],
    /// Odd multipliers.
    mul: [u32; 3],
}

impl SteeringKey {
    /// A key from 20 random bytes.
    pub fn from_random(fill: &mut dyn FnMut(&mut [u8])) -> Self {
        let mut b = [0u8; 20];
        fill(&mut b);
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            xor: [w(0), w(4)],
            mul: [w(8) | 1, w(12) | 1, w(16) | 1],
        }
    }
}

fn insn(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn finish(key: &SteeringKey, workers: u32) -> [Insn; 9] {
    [
        insn(TAX, 0),
        insn(ALU_RSH_K, 15),
        insn(ALU_XOR_X, 0),
        insn(ALU_MUL_K, key.mul[2]),
        insn(TAX, 0),
        insn(ALU_RSH_K, 13),
        insn(ALU_XOR_X, 0),
        insn(ALU_MOD_K, workers),
        insn(RET_A, 0),
    ]
}

/// The program for an IPv4 (`v6 = false`) or IPv6 socket group of `workers` sockets.
pub fn program(v6: bool, key: &SteeringKey, workers: u32) -> Vec<Insn> {
    let workers = workers.max(1);
    let mut p = if v6 {
        // Source address at bytes 8..24 of the IPv6 header; its /64 is 8..16.
        vec![
            insn(LD_W_ABS, (NET_OFF + 8) as u32),
            insn(ALU_XOR_K, key.xor[0]),
            insn(ALU_MUL_K, key.mul[0]),
            insn(ST, 0),
            insn(LD_W_ABS, (NET_OFF + 12) as u32),
            insn(ALU_XOR_K, key.xor[1]),
            insn(ALU_MUL_K, key.mul[1]),
            insn(TAX, 0),
            insn(LD_MEM, 0),
            insn(ALU_XOR_X, 0),
        ]
    } else {
        // Source address at bytes 12..16 of the IPv4 header.
        vec![
            insn(LD_W_ABS, (NET_OFF + 12) as u32),
            insn(ALU_XOR_K, key.xor[0]),
            insn(ALU_MUL_K, key.mul[0]),
        ]
    };
    p.extend_from_slice(&finish(key, workers));
    p
}

fn mix(a: u32, key: &SteeringKey, workers: u32) -> u32 {
    let a = a ^ (a >> 15);
    let a = a.wrapping_mul(key.mul[2]);
    let a = a ^ (a >> 13);
    a % workers.max(1)
}

/// Whether client addresses must be steered to one worker each: wherever a
/// worker keeps per-client state, which is the rate limiter's table and the
/// interleaved-mode table (a client's next request must find its previous
/// transmit timestamp). One worker needs no steering.
pub fn needed(workers: usize, rate_limit: bool, interleaved: bool) -> bool {
    workers > 1 && (rate_limit || interleaved)
}

/// The worker [`program`] sends `addr` to (IPv4-mapped IPv6 counts as IPv4).
pub fn steer(addr: IpAddr, key: &SteeringKey, workers: u32) -> u32 {
    let v4 = |a: u32| (a ^ key.xor[0]).wrapping_mul(key.mul[0]);
    match addr {
        IpAddr::V4(a) => mix(v4(u32::from(a)), key, workers),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => mix(v4(u32::from(m)), key, workers),
            None => {
                let o = a.octets();
                let w0 = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
                let w1 = u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
                let h0 = (w0 ^ key.xor[0]).wrapping_mul(key.mul[0]);
                let h1 = (w1 ^ key.xor[1]).wrapping_mul(key.mul[1]);
                mix(h0 ^ h1, key, workers)
            }
        },
    }
}

/// Attach `program` to the reuseport group of `sock` (any member; it applies to all).
pub fn attach(sock: &socket2::Socket, program: &[Insn]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut filter: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prog points at `filter`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &prog as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_follows_per_worker_client_state() {
        assert!(!needed(1, true, true));
        assert!(needed(2, true, false));
        assert!(needed(2, false, true));
        assert!(!needed(4, false, false));
    }

    /// Runs the instructions [`program`] uses over an IP header.
    fn run(p: &[Insn], ip_header: &[u8]) -> u32 {
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        for i in p {
            match i.code {
                LD_W_ABS => {
                    let off = (i.k as i32 - NET_OFF) as usize;
                    a = u32::from_be_bytes(ip_header[off..off + 4].try_into().unwrap());
                }
                ST => m[i.k as usize] = a,
                LD_MEM => a = m[i.k as usize],
                ALU_XOR_K => a ^= i.k,
                ALU_XOR_X => a ^= x,
                ALU_MUL_K => a = a.wrapping_mul(i.k),
                ALU_RSH_K => a >>= i.k,
                ALU_MOD_K => a %= i.k,
                TAX => x = a,
                RET_A => return a,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
        panic!("no return")
    }

    fn key(seed: u8) -> SteeringKey {
        let mut n = seed;
        SteeringKey::from_random(&mut |b: &mut [u8]| {
            for x in b {
                n = n.wrapping_mul(31).wrapping_add(7);
                *x = n;
            }
        })
    }

    #[test]
    fn program_matches_the_rust_hash_and_ignores_ports() {
        let k = key(3);
        for workers in [1u32, 2, 3, 8, 64] {
            let p4 = program(false, &k, workers);
            let p6 = program(true, &k, workers);
            for i in 0..2000u32 {
                let v4 = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
                let mut h4 = [0u8; 28]; // IPv4 header and UDP ports
                h4[12..16].copy_from_slice(&v4.octets());
                h4[20..22].copy_from_slice(&(i as u16).to_be_bytes());
                let got = run(&p4, &h4);
                assert!(got < workers);
                assert_eq!(got, steer(IpAddr::V4(v4), &k, workers));

                let v6 = std::net::Ipv6Addr::from(
                    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                );
                let mut h6 = [0u8; 48];
                h6[8..24].copy_from_slice(&v6.octets());
                let got = run(&p6, &h6);
                assert_eq!(got, steer(IpAddr::V6(v6), &k, workers));
                // Only the /64 matters.
                let mut other = v6.octets();
                other[15] ^= 0xff;
                assert_eq!(got, steer(IpAddr::V6(other.into()), &k, workers));
            }
        }
    }

    #[test]
    fn spreads_addresses_evenly() {
        let k = key(9);
        let mut counts = [0u32; 8];
        for i in 0..80_000u32 {
            counts[steer(IpAddr::V4((0x7f00_0000 + i).into()), &k, 8) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn keys_differ() {
        assert_ne!(key(1), key(2));
        let k = key(1);
        assert!(k.mul.iter().all(|m| m % 2 == 1));
    }
}
