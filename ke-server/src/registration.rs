//! What a time server may claim when it registers over key sync: the
//! `server_id` it registers must be bound to a name in the client certificate
//! it presented, the certificate must not be revoked, and the address it
//! advertises must be one a client can use and one the operator allows
//! ([`Policy`]). A time-server certificate holds every cookie key, so a
//! stolen one must at least not be able to send clients anywhere it likes.
//! Pure checks, no I/O: the gRPC service calls them on every Register,
//! Report and WatchKeys.

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
    #[error("client certificate {0} is listed in key_sync.revoked_certificates")]
    Revoked(String),
    #[error("advertised host {0:?} is not allowed: not one of the certificate's names, nor inside key_sync.advertise_networks / advertise_domains")]
    AddressNotAllowed(String),
}

impl RegistrationError {
    /// Metric label: `identity`, `revoked` or `address`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::IdentityMismatch { .. }
            | Self::NoCertificate
            | Self::BadCertificate
            | Self::BadServerId => "identity",
            Self::Revoked(_) => "revoked",
            _ => "address",
        }
    }
}

/// What the operator allows a registration to claim (`[key_sync]` keys).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// SHA-256 fingerprints of leaf certificates that get nothing.
    pub revoked: Vec<[u8; 32]>,
    /// IP literals allowed to be advertised besides the certificate's own IP names.
    pub networks: Vec<ipnet::IpNet>,
    /// DNS names allowed (the name itself and names under it), lowercase.
    pub domains: Vec<String>,
}

impl Policy {
    /// No network and no domain configured: any usable address may be advertised.
    pub fn allows_any_address(&self) -> bool {
        self.networks.is_empty() && self.domains.is_empty()
    }

    fn allows(&self, host: &str, names: &[String]) -> bool {
        if self.allows_any_address() {
            return true;
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return names.contains(&ip.to_string())
                || self.networks.iter().any(|n| n.contains(&ip));
        }
        names.contains(&host)
            || self.domains.iter().any(|d| {
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            })
    }
}

/// The SHA-256 fingerprint of a certificate, as `openssl x509 -fingerprint
/// -sha256` prints it (colon-separated upper-case hex).
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// Parse a fingerprint written with or without colons, any case.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

fn show_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The names of a peer's leaf certificate, unless it is revoked.
pub fn peer_names(leaf_der: &[u8], policy: &Policy) -> Result<Vec<String>, RegistrationError> {
    let fp = fingerprint(leaf_der);
    if policy.revoked.contains(&fp) {
        return Err(RegistrationError::Revoked(show_fingerprint(&fp)));
    }
    certificate_names(leaf_der)
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
/// Names compare case-insensitively. Returns the name `server_id` is bound to.
pub fn check_identity(server_id: &str, names: &[String]) -> Result<String, RegistrationError> {
    if server_id.is_empty()
        || server_id.len() > 256
        || !server_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RegistrationError::BadServerId);
    }
    let id = server_id.to_ascii_lowercase();
    let bound = names.iter().find(|n| {
        !n.is_empty()
            && (id == **n
                || id
                    .strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with(':') && rest.len() > 1))
    });
    if let Some(name) = bound {
        Ok(name.clone())
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

/// Every check a registration (or report) from a peer with `peer_leaf` must
/// pass. Returns the certificate name the registration is bound to.
pub fn check(
    info: &TimeServerInfo,
    peer_leaf: Option<&[u8]>,
    policy: &Policy,
) -> Result<String, RegistrationError> {
    let leaf = peer_leaf.ok_or(RegistrationError::NoCertificate)?;
    let names = peer_names(leaf, policy)?;
    let bound = check_identity(&info.server_id, &names)?;
    check_advertised(info)?;
    let hosts = std::iter::once(info.ntp_host.as_str())
        .chain(info.alternates.iter().map(|a| a.host.as_str()));
    for host in hosts {
        if !policy.allows(host, &names) {
            return Err(RegistrationError::AddressNotAllowed(
                host.chars().take(64).collect(),
            ));
        }
    }
    Ok(bound)
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
        let any = Policy::default();
        assert_eq!(
            check(&info, Some(cert.der()), &any).as_deref(),
            Ok("time-server")
        );
        assert_eq!(
            check(&info, None, &any),
            Err(RegistrationError::NoCertificate)
        );
        let other = TimeServerInfo {
            server_id: "other:4123".into(),
            ..info.clone()
        };
        assert!(matches!(
            check(&other, Some(cert.der()), &any),
            Err(RegistrationError::IdentityMismatch { .. })
        ));
        let wildcard = TimeServerInfo {
            ntp_host: "0.0.0.0".into(),
            ..info.clone()
        };
        assert!(matches!(
            check(&wildcard, Some(cert.der()), &any),
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
            check(&alt, Some(cert.der()), &any),
            Err(RegistrationError::BadPort(0))
        );
        assert!(certificate_names(b"junk").is_err());
    }

    #[test]
    fn policy_limits_advertised_addresses_and_refuses_revoked_certificates() {
        let p = rcgen::CertificateParams::new(vec![
            "ts.example.net".to_string(),
            "192.0.2.9".to_string(),
        ])
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let policy = Policy {
            networks: vec!["198.51.100.0/24".parse().unwrap()],
            domains: vec!["time.example.net".into()],
            ..Policy::default()
        };
        let at = |host: &str| TimeServerInfo {
            server_id: "ts.example.net:1".into(),
            ntp_host: host.into(),
            ntp_port: 123,
            ..Default::default()
        };
        for ok in [
            "192.0.2.9",          // the certificate's own IP name
            "ts.example.net",     // its own DNS name
            "198.51.100.77",      // inside a network
            "a.time.example.net", // under a domain
            "Time.Example.Net.",
        ] {
            assert!(check(&at(ok), Some(cert.der()), &policy).is_ok(), "{ok}");
        }
        for bad in ["203.0.113.1", "evil.net", "xtime.example.net", "192.0.2.10"] {
            assert!(
                matches!(
                    check(&at(bad), Some(cert.der()), &policy),
                    Err(RegistrationError::AddressNotAllowed(_))
                ),
                "{bad}"
            );
        }
        let mut alt = at("192.0.2.9");
        alt.alternates = vec![NtpEndpoint {
            host: "2001:db8::1".into(),
            port: 123,
        }];
        assert!(
            check(&alt, Some(cert.der()), &policy).is_err(),
            "alternates too"
        );
        // Revoked by fingerprint, written as openssl prints it.
        let fp = show_fingerprint(&fingerprint(cert.der()));
        assert_eq!(parse_fingerprint(&fp), Some(fingerprint(cert.der())));
        assert_eq!(
            parse_fingerprint(&fp.to_lowercase().replace(':', "")),
            Some(fingerprint(cert.der()))
        );
        assert_eq!(parse_fingerprint("AB:CD"), None);
        let revoking = Policy {
            revoked: vec![fingerprint(cert.der())],
            ..Policy::default()
        };
        let e = check(&at("192.0.2.9"), Some(cert.der()), &revoking).unwrap_err();
        assert_eq!(e.reason(), "revoked");
        assert!(e.to_string().contains(&fp), "{e}");
    }
}
