//! What a time server may claim when it registers over key sync: the
//! `server_id` it registers must be bound to a name in the client certificate
//! it presented, and the address it advertises must be one a client can use.
//! Pure checks, no I/O: the gRPC service calls them on every Register and
//! Report.

use nts_proto::key_sync::pb::{NtpEndpoint, TimeServerInfo};
use std::net::IpAddr;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate is not parsable X.509")]
    BadCertificate,
    #[error("server_id {server_id:?} is not bound to the client certificate (names: {names})")]
    IdentityMismatch { server_id: String, names: String },
    #[error("server_id must be 1 to 256 printable ASCII characters")]
    BadServerId,
    #[error("advertised host {0:?} is not a usable address or DNS name")]
    BadHost(String),
    #[error("advertised port {0} is not between 1 and 65535")]
    BadPort(u32),
    #[error("too many alternate addresses ({0}; at most {MAX_ALTERNATES})")]
    TooManyAlternates(usize),
}

/// Most alternate addresses one time server may advertise.
pub const MAX_ALTERNATES: usize = 4;

/// The names a client certificate vouches for: DNS and IP subject alternative
/// names, and the subject common names.
pub fn certificate_names(leaf_der: &[u8]) -> Result<Vec<String>, RegistrationError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|_| RegistrationError::BadCertificate)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            let s = s.to_ascii_lowercase();
            if !names.contains(&s) {
                names.push(s);
            }
        }
    }
    Ok(names)
}

/// A `server_id` is bound to a certificate when it is one of the certificate's
/// names, or such a name followed by `:` and an instance suffix (several time
/// servers on one host, e.g. `ntp1.example.net:123`, share one certificate).
/// Names compare case-insensitively.
pub fn check_identity(server_id: &str, names: &[String]) -> Result<(), RegistrationError> {
    if server_id.is_empty()
        || server_id.len() > 256
        || !server_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RegistrationError::BadServerId);
    }
    let id = server_id.to_ascii_lowercase();
    let bound = names.iter().any(|n| {
        !n.is_empty()
            && (id == *n
                || id
                    .strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with(':') && rest.len() > 1))
    });
    if bound {
        Ok(())
    } else {
        Err(RegistrationError::IdentityMismatch {
            server_id: server_id.to_string(),
            names: names.join(", "),
        })
    }
}

/// A host a client can send NTP to: an IP literal that is neither unspecified,
/// multicast nor broadcast, or a DNS name (letters, digits, hyphens, dots; no
/// wildcard).
pub fn check_host(host: &str) -> Result<(), RegistrationError> {
    let bad = || RegistrationError::BadHost(host.chars().take(64).collect());
    if let Ok(ip) = host.parse::<IpAddr>() {
        let unusable = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        return if unusable { Err(bad()) } else { Ok(()) };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    // An all-numeric name that is not an address (e.g. "1.2.3") is refused too.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if labels_ok && !numeric {
        Ok(())
    } else {
        Err(bad())
    }
}

pub fn check_port(port: u32) -> Result<u16, RegistrationError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(RegistrationError::BadPort(port)),
    }
}

/// Check the advertised addresses (main and alternates) of a registration.
pub fn check_advertised(info: &TimeServerInfo) -> Result<(), RegistrationError> {
    check_host(&info.ntp_host)?;
    check_port(info.ntp_port)?;
    if info.alternates.len() > MAX_ALTERNATES {
        return Err(RegistrationError::TooManyAlternates(info.alternates.len()));
    }
    for NtpEndpoint { host, port } in &info.alternates {
        check_host(host)?;
        check_port(*port)?;
    }
    Ok(())
}

/// Every check a registration (or report) from a peer with `peer_leaf` must pass.
pub fn check(info: &TimeServerInfo, peer_leaf: Option<&[u8]>) -> Result<(), RegistrationError> {
    let leaf = peer_leaf.ok_or(RegistrationError::NoCertificate)?;
    let names = certificate_names(leaf)?;
    check_identity(&info.server_id, &names)?;
    check_advertised(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn identity_is_a_name_or_name_colon_suffix() {
        let n = names(&["ntp1.example.net", "192.0.2.7"]);
        assert!(check_identity("ntp1.example.net", &n).is_ok());
        assert!(check_identity("NTP1.example.net:123", &n).is_ok());
        assert!(check_identity("192.0.2.7:4123", &n).is_ok());
        for bad in [
            "ntp2.example.net",
            "ntp1.example.net.evil",
            "ntp1.example.networks",
            "ntp1.example.net:",
            "example.net",
        ] {
            assert!(
                matches!(
                    check_identity(bad, &n),
                    Err(RegistrationError::IdentityMismatch { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(check_identity("", &n), Err(RegistrationError::BadServerId));
        assert_eq!(
            check_identity("a b", &n),
            Err(RegistrationError::BadServerId)
        );
        assert!(check_identity("x", &[String::new()]).is_err());
    }

    #[test]
    fn hosts_and_ports() {
        for good in [
            "127.0.0.1",
            "::1",
            "2001:db8::5",
            "ntp.example.net",
            "ntp.example.net.",
            "a-b.c",
        ] {
            assert!(check_host(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.1.1",
            "ff02::101",
            "*.example.net",
            "-a.example",
            "a..b",
            "ex ample",
            "1.2.3",
            "[::1]",
            "host:123",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
        assert_eq!(check_port(123), Ok(123));
        assert!(check_port(0).is_err());
        assert!(check_port(65_536).is_err());
    }

    #[test]
    fn names_come_from_the_certificate() {
        let mut p = rcgen::CertificateParams::new(vec![
            "ts.example.net".to_string(),
            "192.0.2.9".to_string(),
        ])
        .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Time-Server");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let n = certificate_names(cert.der()).unwrap();
        assert_eq!(n, names(&["ts.example.net", "192.0.2.9", "time-server"]));
        let info = TimeServerInfo {
            server_id: "time-server:4123".into(),
            ntp_host: "192.0.2.9".into(),
            ntp_port: 4123,
            ..Default::default()
        };
        assert!(check(&info, Some(cert.der())).is_ok());
        assert_eq!(check(&info, None), Err(RegistrationError::NoCertificate));
        let other = TimeServerInfo {
            server_id: "other:4123".into(),
            ..info.clone()
        };
        assert!(matches!(
            check(&other, Some(cert.der())),
            Err(RegistrationError::IdentityMismatch { .. })
        ));
        let wildcard = TimeServerInfo {
            ntp_host: "0.0.0.0".into(),
            ..info.clone()
        };
        assert!(matches!(
            check(&wildcard, Some(cert.der())),
            Err(RegistrationError::BadHost(_))
        ));
        let alt = TimeServerInfo {
            alternates: vec![NtpEndpoint {
                host: "2001:db8::9".into(),
                port: 0,
            }],
            ..info
        };
        assert_eq!(
            check(&alt, Some(cert.der())),
            Err(RegistrationError::BadPort(0))
        );
        assert!(certificate_names(b"junk").is_err());
    }
}
