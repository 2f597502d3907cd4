//! Binding TCP listeners the same way on every host: a wildcard IPv6 address
//! (`[::]`) is explicitly dual stack (IPV6_V6ONLY off), so IPv4 and IPv6
//! clients reach it whatever `net.ipv6.bindv6only` says; a specific IPv6
//! address is IPv6 only.

use std::net::SocketAddr;

/// Bind a listening TCP socket on `addr` (non-blocking, SO_REUSEADDR, backlog 1024).
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        sock.set_only_v6(!v6.ip().is_unspecified())?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// [`bind_tcp`] as a tokio listener (call inside a runtime).
pub fn bind_tokio(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(bind_tcp(addr)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_v6_takes_ipv4_too() {
        let Ok(l) = bind_tcp("[::]:0".parse().unwrap()) else {
            return; // no IPv6 on this host
        };
        let port = l.local_addr().unwrap().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 reaches [::]");
        std::net::TcpStream::connect(("::1", port)).expect("IPv6 reaches [::]");
        let v6only = bind_tcp("[::1]:0".parse().unwrap()).unwrap();
        let port = v6only.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
