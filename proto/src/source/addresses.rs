//! Where a source sends its requests: every resolved address of its time
//! server, IPv6 and IPv4 alternating, never one of the client's own host's,
//! tried in turn when one stops answering.

use std::net::{IpAddr, SocketAddr};

/// Why a negotiated time server is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("NTS-KE sent this client to a time server on its own host ({0}): disciplining a clock from itself is a loop (nts.allow_own_host allows it)")]
pub struct OwnHost(pub IpAddr);

/// The negotiated time server's addresses this client may use: never one of
/// its own host's addresses (`own`, loopback excluded: development stacks
/// and tests run there), since a node's agent handed its node's own time
/// server would steer its clock by itself. With `allow_own` everything goes.
/// An error when nothing is left: the shell counts it as a failed key
/// exchange, and the next one (round robin at the KE) names another server.
pub fn usable_server_addresses(
    addrs: Vec<SocketAddr>,
    own: &[IpAddr],
    allow_own: bool,
) -> Result<Vec<SocketAddr>, OwnHost> {
    if allow_own {
        return Ok(addrs);
    }
    let is_own = |a: &SocketAddr| {
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a.ip(), IpAddr::V4),
            v4 => v4,
        };
        !ip.is_loopback() && own.contains(&ip)
    };
    let first_own = addrs.iter().find(|a| is_own(a)).map(SocketAddr::ip);
    let usable: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_own(a)).collect();
    match (usable.is_empty(), first_own) {
        (true, Some(ip)) => Err(OwnHost(ip)),
        _ => Ok(usable),
    }
}

/// IPv6 and IPv4 addresses alternating (IPv6 first), duplicates removed, so
/// that a broken address family costs one poll, not all of them.
pub fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    let (v6, v4): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .filter(|a| seen.insert(*a))
        .partition(|a| a.is_ipv6());
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

/// The resolved addresses of a time server and the one in use; a timeout
/// moves to the next, so every address is tried, not only the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBook {
    addrs: Vec<SocketAddr>,
    index: usize,
}

impl AddressBook {
    /// Replace the list; the current address is kept when it is still in it.
    pub fn set(&mut self, addrs: Vec<SocketAddr>) {
        if addrs == self.addrs {
            return;
        }
        let current = self.current();
        self.index = current
            .and_then(|c| addrs.iter().position(|a| *a == c))
            .unwrap_or(0);
        self.addrs = addrs;
    }

    pub fn clear(&mut self) {
        self.addrs.clear();
        self.index = 0;
    }

    pub fn current(&self) -> Option<SocketAddr> {
        self.addrs.get(self.index).copied()
    }

    pub fn all(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The current address did not answer: use the next one.
    pub fn rotate(&mut self) {
        if !self.addrs.is_empty() {
            self.index = (self.index + 1) % self.addrs.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_without_duplicates() {
        let got = interleave_families(vec![
            a("192.0.2.1:123"),
            a("192.0.2.2:123"),
            a("[2001:db8::1]:123"),
            a("192.0.2.1:123"),
            a("192.0.2.3:123"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:123"),
                a("192.0.2.1:123"),
                a("192.0.2.2:123"),
                a("192.0.2.3:123")
            ]
        );
        assert!(interleave_families(Vec::new()).is_empty());
    }

    #[test]
    fn every_address_takes_its_turn_and_a_new_list_keeps_the_current_one() {
        let mut b = AddressBook::default();
        assert_eq!(b.current(), None);
        b.rotate();
        b.set(vec![
            a("192.0.2.1:123"),
            a("192.0.2.2:123"),
            a("192.0.2.3:123"),
        ]);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(b.current().unwrap());
            b.rotate();
        }
        assert_eq!(seen, b.all());
        b.rotate();
        assert_eq!(b.current(), Some(a("192.0.2.2:123")));
        b.set(vec![a("192.0.2.2:123"), a("192.0.2.9:123")]);
        assert_eq!(b.current(), Some(a("192.0.2.2:123")), "kept");
        b.set(vec![a("192.0.2.7:123")]);
        assert_eq!(b.current(), Some(a("192.0.2.7:123")));
    }

    #[test]
    fn a_time_server_on_the_clients_own_host_is_not_used() {
        let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(
            usable_server_addresses(vec![a("10.0.0.5:123")], &own, false),
            Err(OwnHost("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            usable_server_addresses(vec![a("[::ffff:10.0.0.5]:123")], &own, false).map_err(|_| ()),
            Err(())
        );
        // Another address of the same server is still fine; told to, everything is.
        assert_eq!(
            usable_server_addresses(vec![a("[fd00::5]:123"), a("10.0.0.9:123")], &own, false),
            Ok(vec![a("10.0.0.9:123")])
        );
        assert_eq!(
            usable_server_addresses(vec![a("10.0.0.5:123")], &own, true),
            Ok(vec![a("10.0.0.5:123")])
        );
        // Loopback is never treated as the own host (development, tests).
        let lo = vec!["127.0.0.1".parse().unwrap()];
        assert!(usable_server_addresses(vec![a("127.0.0.1:4123")], &lo, false).is_ok());
        assert_eq!(
            usable_server_addresses(Vec::new(), &own, false),
            Ok(Vec::new())
        );
    }
}
