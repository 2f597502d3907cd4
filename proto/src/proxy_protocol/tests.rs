use super::*;

fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | cmd);
    h.push(fam);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn header(buf: &[u8]) -> Header {
    match parse(buf).unwrap() {
        Parsed::Header(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn v1_tcp4_and_tcp6() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4460\r\n\x16\x03\x01";
    let h = header(line);
    assert_eq!(h.len, line.len() - 3);
    assert_eq!(
        h.relayed,
        Relayed::Client {
            source: "192.0.2.7:56324".parse().unwrap(),
            destination: "198.51.100.1:4460".parse().unwrap(),
        }
    );
    let h = header(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 4460\r\n");
    assert!(
        matches!(h.relayed, Relayed::Client { source, .. } if source == "[2001:db8::7]:1".parse().unwrap())
    );
    assert_eq!(header(b"PROXY UNKNOWN\r\n").relayed, Relayed::Unknown);
    assert_eq!(
        header(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n").relayed,
        Relayed::Unknown
    );
}

#[test]
fn v1_refuses_what_the_specification_does_not_write() {
    for bad in [
        &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4460 9\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
        b"PROXY \xff\r\n",
    ] {
        assert!(
            matches!(parse(bad), Err(ProxyError::V1Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN, b'x');
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    long.extend_from_slice(b"\r\n");
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
}

#[test]
fn v2_inet_inet6_local_and_unknown_families() {
    let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 0x11, 0x6c];
    body.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // a TLV, skipped
    let buf = v2(1, 0x11, &body);
    let h = header(&buf);
    assert_eq!(h.len, buf.len());
    assert_eq!(
        h.relayed,
        Relayed::Client {
            source: "192.0.2.7:56324".parse().unwrap(),
            destination: "198.51.100.1:4460".parse().unwrap(),
        }
    );
    let mut body6 = Vec::new();
    body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    body6.extend_from_slice(&[0, 1, 0x11, 0x6c]);
    assert!(
        matches!(header(&v2(1, 0x21, &body6)).relayed, Relayed::Client { source, .. } if source == "[2001:db8::7]:1".parse().unwrap())
    );
    assert_eq!(header(&v2(0, 0x00, &[])).relayed, Relayed::Unknown);
    assert_eq!(header(&v2(0, 0x11, &body)).relayed, Relayed::Unknown);
    assert_eq!(header(&v2(1, 0x00, &[])).relayed, Relayed::Unknown);
    assert_eq!(header(&v2(1, 0x12, &body)).relayed, Relayed::Unknown);
    assert_eq!(header(&v2(1, 0x31, &[0; 216])).relayed, Relayed::Unknown);
}

#[test]
fn v2_refusals() {
    let mut bad_version = v2(1, 0x11, &[0; 12]);
    bad_version[12] = 0x11;
    assert_eq!(parse(&bad_version), Err(ProxyError::V2Version(1)));
    assert_eq!(parse(&v2(2, 0x11, &[0; 12])), Err(ProxyError::V2Command(2)));
    assert_eq!(
        parse(&v2(1, 0x11, &[0; 11])),
        Err(ProxyError::V2ShortAddresses(11))
    );
    assert_eq!(
        parse(&v2(1, 0x21, &[0; 35])),
        Err(ProxyError::V2ShortAddresses(35))
    );
    // Families and transports the specification does not define are invalid
    // in a PROXY command (a LOCAL header's family is discarded with its block).
    for fam in [0x41, 0x13, 0x03, 0xf1] {
        assert_eq!(parse(&v2(1, fam, &[0; 36])), Err(ProxyError::V2Family(fam)));
        assert_eq!(header(&v2(0, fam, &[])).relayed, Relayed::Unknown);
    }
    let mut huge = v2(1, 0x11, &[0; 12]);
    huge[14..16].copy_from_slice(&600u16.to_be_bytes());
    assert_eq!(parse(&huge), Err(ProxyError::V2TooLong(616)));
}

#[test]
fn incomplete_headers_say_how_much_more_is_needed() {
    let full = v2(1, 0x11, &[1; 12]);
    for cut in 1..full.len() {
        match parse(&full[..cut]).unwrap() {
            Parsed::Incomplete { need } => {
                assert!(need > cut && need <= full.len(), "{cut}: {need}")
            }
            other => panic!("{cut}: {other:?}"),
        }
    }
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 4460\r\n";
    for cut in 1..line.len() {
        match parse(&line[..cut]).unwrap() {
            Parsed::Incomplete { need } => {
                assert!(need > cut && need <= V1_MAX_LEN, "{cut}: {need}")
            }
            other => panic!("{cut}: {other:?}"),
        }
    }
}

#[test]
fn a_tls_client_hello_or_other_bytes_are_no_header() {
    assert_eq!(parse(&[0x16, 0x03, 0x01, 0x02, 0x00]), Ok(Parsed::Absent));
    assert_eq!(parse(b"PROXX"), Ok(Parsed::Absent));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Ok(Parsed::Absent));
    assert_eq!(parse(b""), Ok(Parsed::Absent));
}

#[test]
fn what_starts_like_a_header() {
    assert!(starts_like_header(b"P"));
    assert!(starts_like_header(b"PROXY TCP4 "));
    assert!(starts_like_header(&V2_SIGNATURE[..5]));
    assert!(starts_like_header(&v2(0, 0, &[])));
    assert!(!starts_like_header(b""));
    assert!(!starts_like_header(&[0x16, 0x03, 0x01]));
    assert!(!starts_like_header(b"PROXX"));
}

#[test]
fn only_trusted_balancers_may_name_the_client() {
    let peer: SocketAddr = "10.0.0.5:40000".parse().unwrap();
    let client: SocketAddr = "192.0.2.7:56324".parse().unwrap();
    let relayed = Header {
        relayed: Relayed::Client {
            source: client,
            destination: "10.0.0.9:4460".parse().unwrap(),
        },
        len: 28,
    };
    let local = Header {
        relayed: Relayed::Unknown,
        len: 16,
    };
    assert_eq!(admit(peer, true, Some(&relayed)), Ok(client));
    assert_eq!(admit(peer, true, Some(&local)), Ok(peer));
    assert_eq!(admit(peer, true, None), Err(Refusal::Missing));
    assert_eq!(admit(peer, false, Some(&relayed)), Err(Refusal::Untrusted));
    assert_eq!(admit(peer, false, Some(&local)), Err(Refusal::Untrusted));
    assert_eq!(admit(peer, false, None), Ok(peer));
}
