use super::*;

const MINIMAL: &str = r#"
[tls]
certificate_chain = "/etc/nts/chain.pem"
private_key = "/etc/nts/key.pem"
[cookie_keys]
root_secret_file = "/var/lib/nts/root.key"
"#;

fn check(text: &str) -> Result<Settings> {
    Config::parse(text, Path::new("test.toml"))?.validate()
}

#[test]
fn minimal_config_gets_defaults() {
    let s = check(MINIMAL).unwrap();
    assert_eq!(s.config.server.listen, vec!["[::]:4460".parse().unwrap()]);
    assert_eq!(s.schedule, KeySchedule::default());
    assert_eq!(s.algorithms.len(), 2);
    assert_eq!(s.handshake_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_keys_are_named() {
    let e = check(&format!(
        "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n"
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    let e = check(&format!("bogus_top = 1\n{MINIMAL}")).unwrap_err();
    assert!(format!("{e:#}").contains("bogus_top"), "{e:#}");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (
            "[server]\nhandshake_timeout = -1\n",
            "server.handshake_timeout",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nmax_connections = 8\nmax_connections_per_address = 9\n",
            "server.max_connections_per_address",
        ),
        (
            "[server]\nipv6_prefix_length = 8\n",
            "server.ipv6_prefix_length",
        ),
        (
            "[server]\nipv4_prefix_length = 33\n",
            "server.ipv4_prefix_length",
        ),
        ("[server]\nlisten = []\n", "server.listen"),
        ("[server]\ndrain_delay = -1\n", "server.drain_delay"),
        ("[ntp]\nport = 0\n", "ntp.port"),
        ("[ntp]\nserver = \"\"\n", "ntp.server"),
        ("[log]\nlevel = \"infoo\"\n", "log.level"),
    ];
    for (extra, key) in cases {
        let e = check(&format!("{extra}{MINIMAL}")).unwrap_err();
        assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
    }
    let e = check(&MINIMAL.replace(
        "root_secret_file = \"/var/lib/nts/root.key\"",
        "root_secret_file = \"/x\"\naead_algorithms = [\"AES-GCM\"]",
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("cookie_keys.aead_algorithms"));
    let e = check(&MINIMAL.replace(
        "root_secret_file = \"/var/lib/nts/root.key\"",
        "root_secret_file = \"/x\"\nrotation_period = 0",
    ))
    .unwrap_err();
    assert!(format!("{e:#}").contains("cookie_keys.rotation_period"));
    // Wrong type is reported with the key by the TOML parser.
    let e = check(&format!("[server]\nmax_connections = \"many\"\n{MINIMAL}")).unwrap_err();
    assert!(format!("{e:#}").contains("max_connections"), "{e:#}");
}

const KEY_SYNC: &str = r#"
[key_sync]
listen = "127.0.0.1:4461"
client_ca = "/ca.pem"
certificate_chain = "/c.pem"
private_key = "/k.pem"
"#;

#[test]
fn key_sync_limits_default_and_are_checked() {
    let s = check(&format!("{MINIMAL}{KEY_SYNC}")).unwrap();
    assert_eq!(
        (s.key_sync_slots.capacity, s.key_sync_slots.per_prefix),
        (64, 8)
    );
    assert_eq!(s.key_sync_handshake_timeout, Duration::from_secs(5));
    assert_eq!((s.ke_slots.capacity, s.ke_slots.per_prefix), (1024, 16));
    let k = s.config.key_sync.unwrap();
    assert!(k.allowed_networks.is_empty());
    assert_eq!(k.max_streams_per_connection, 16);
    let s = check(&format!(
        "{MINIMAL}{KEY_SYNC}allowed_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n"
    ))
    .unwrap();
    assert_eq!(s.config.key_sync.unwrap().allowed_networks.len(), 2);
    for (extra, key) in [
        (
            "max_handshakes_per_address = 0",
            "key_sync.max_handshakes_per_address",
        ),
        (
            "max_handshakes_per_address = 65",
            "key_sync.max_handshakes_per_address",
        ),
        ("handshake_timeout = 0", "key_sync.handshake_timeout"),
        ("handshake_timeout = 61", "key_sync.handshake_timeout"),
        (
            "max_streams_per_connection = 0",
            "key_sync.max_streams_per_connection",
        ),
        ("allowed_networks = [\"10.0.0.0/33\"]", "allowed_networks"),
        (
            "max_registrations_per_certificate = 0",
            "key_sync.max_registrations_per_certificate",
        ),
        (
            "advertise_domains = [\"a b\"]",
            "key_sync.advertise_domains",
        ),
        (
            "revoked_certificates = [\"AB:CD\"]",
            "key_sync.revoked_certificates",
        ),
    ] {
        let e = check(&format!("{MINIMAL}{KEY_SYNC}{extra}\n")).unwrap_err();
        assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
    }
}

const ACME: &str = r#"
[acme]
domains = ["NTS.example.net"]
contact = ["ops@example.net", "mailto:noc@example.net"]
cache_dir = "/var/lib/nts/acme"
[cookie_keys]
root_secret_file = "/var/lib/nts/root.key"
"#;

#[test]
fn acme_defaults() {
    let s = check(ACME).unwrap();
    let a = s.acme.unwrap();
    assert_eq!(a.domains, vec!["nts.example.net"]);
    assert_eq!(
        a.contact,
        vec!["mailto:ops@example.net", "mailto:noc@example.net"]
    );
    assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
    assert_eq!(a.challenge, ChallengeType::TlsAlpn01);
    // KE on 4460: TLS-ALPN-01 gets its own listener on 443.
    assert_eq!(a.challenge_listener, Some("[::]:443".parse().unwrap()));
    assert!(!a.ke_answers_tls_alpn);
    assert_eq!(a.retry_min, Duration::from_secs(60));
    let s = check(&format!("[server]\nlisten = [\"0.0.0.0:443\"]\n{ACME}")).unwrap();
    let a = s.acme.unwrap();
    assert!(a.ke_answers_tls_alpn);
    assert_eq!(a.challenge_listener, None);
    let s = check(&ACME.replace("[acme]", "[acme]\nstaging = true")).unwrap();
    assert_eq!(s.acme.unwrap().directory, LETS_ENCRYPT_STAGING);
    let s = check(&ACME.replace("[acme]", "[acme]\nchallenge = \"http-01\"")).unwrap();
    let a = s.acme.unwrap();
    assert_eq!(a.http_listener, Some("[::]:80".parse().unwrap()));
    assert_eq!(a.challenge_listener, None);
}

#[test]
fn tls_xor_acme() {
    let e = check("[cookie_keys]\nroot_secret_file = \"/x\"\n").unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("tls.certificate_chain") && msg.contains("acme.domains"),
        "{msg}"
    );
    let both = format!("{ACME}\n[tls]\ncertificate_chain = \"/a\"\nprivate_key = \"/b\"\n");
    let e = check(&both).unwrap_err();
    assert!(format!("{e:#}").contains("both configured"), "{e:#}");
}

#[test]
fn acme_bad_values_are_named() {
    let cases = [
        ("domains = [\"*.example.net\"]", "acme.domains"),
        ("domains = [\"192.0.2.1\"]", "acme.domains"),
        ("domains = []", "acme.domains"),
        ("domains = [\"bad_name.example\"]", "acme.domains"),
    ];
    for (line, key) in cases {
        let text = ACME.replace("domains = [\"NTS.example.net\"]", line);
        let e = check(&text).unwrap_err();
        assert!(format!("{e:#}").contains(key), "{line}: {e:#}");
    }
    let extra = [
        ("contact = [\"nobody\"]", "acme.contact"),
        (
            "staging = true\ndirectory = \"https://ca/dir\"",
            "acme.staging",
        ),
        ("directory = \"http://ca/dir\"", "acme.directory"),
        ("http_listen = \"127.0.0.1:80\"", "acme.http_listen"),
        (
            "challenge = \"http-01\"\nchallenge_listen = \"127.0.0.1:443\"",
            "acme.challenge_listen",
        ),
        ("challenge = \"dns-01\"", "challenge"),
        ("retry_min = 0", "acme.retry_min"),
        ("retry_min = 100\nretry_max = 10", "acme.retry_max"),
        ("renew_before = -1", "acme.renew_before"),
        ("cache_poll_interval = 0", "acme.cache_poll_interval"),
    ];
    for (line, key) in extra {
        let text = ACME
            .replace(
                "contact = [\"ops@example.net\", \"mailto:noc@example.net\"]\n",
                "",
            )
            .replace("[acme]", &format!("[acme]\n{line}"));
        let e = check(&text).unwrap_err();
        assert!(format!("{e:#}").contains(key), "{line}: {e:#}");
    }
    let e = check(
        &ACME.replace("[acme]", "[server]\nlisten = [\"127.0.0.1:80\"]\n[acme]\nchallenge = \"http-01\"\nhttp_listen = \"127.0.0.1:80\""),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("acme.http_listen"), "{e:#}");
}

#[test]
fn proxy_trusted_networks_are_cidr_lists_off_by_default() {
    let s = check(MINIMAL).unwrap();
    assert!(s.config.server.proxy_trusted_networks.is_empty());
    let with =
        format!("[server]\nproxy_trusted_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n{MINIMAL}");
    let s = check(&with).unwrap();
    assert_eq!(s.config.server.proxy_trusted_networks.len(), 2);
    for bad in [
        "\"10.0.0.0/33\"",
        "\"10.0.0.1\"",
        "\"fd00::/129\"",
        "\"bogus\"",
    ] {
        let text = format!("[server]\nproxy_trusted_networks = [{bad}]\n{MINIMAL}");
        let e = check(&text).unwrap_err();
        assert!(
            format!("{e:#}").contains("proxy_trusted_networks"),
            "{bad}: {e:#}"
        );
    }
}
