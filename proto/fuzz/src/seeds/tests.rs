//! The committed seeds are what this module builds, and reach deep paths.

use super::*;

/// The seeds reach the deep paths of each target, and the committed seed
/// files are what this module builds (regenerate with `cargo run --example gen_seeds`).
#[test]
fn seeds_are_valid_and_committed() {
    for (name, data) in ntp_packet() {
        let d = crate::ntp_packet::check(&data);
        assert!(d.header, "{name}");
        if name.starts_with("nts_request") {
            assert!(d.cookie_opened && d.authenticated, "{name}: {d:?}");
        }
        if name.starts_with("nts_response") {
            assert!(d.authenticated && d.inner_fields > 0, "{name}: {d:?}");
        }
    }
    for (name, data) in ke_record() {
        assert!(crate::ke_record::check(&data) >= 3, "{name}");
    }
    for (name, data) in ke_request() {
        let r = crate::ke_request::check(&data);
        assert!(matches!(r, Ok(Some(_))), "{name}: {r:?}");
    }
    for (name, data) in ke_response() {
        let r = crate::ke_response::check(&data);
        if name.starts_with("ok") || name == "warning" {
            assert!(matches!(r, Ok(Some(_))), "{name}: {r:?}");
        } else {
            assert!(r.is_err(), "{name}: {r:?}");
        }
    }
    for (name, data) in cookie_open() {
        let opened = crate::cookie_open::check_open(&data);
        assert_eq!(opened, name.starts_with("genuine"), "{name}");
        crate::cookie_open::check(&data);
    }
    for (name, data) in ntp_server() {
        check_ntp_server_seed(name, &data);
    }
    for (name, data) in ntp_client() {
        check_ntp_client_seed(name, &data);
    }
    for (name, data) in nts_roles() {
        let o = crate::nts_roles::check(&data);
        assert_eq!(
            o.answered,
            name.starts_with("genuine") || name.starts_with("mutated"),
            "{name}: {o:?}"
        );
        assert_eq!(o.naked, name.starts_with("own"), "{name}: {o:?}");
        assert_eq!(o.mutated, name.starts_with("mutated"), "{name}: {o:?}");
        if name == "mutated_uid_length" || name == "mutated_duplicate_uid" {
            assert!(o.both_refused_fields, "{name}: {o:?}");
        }
        if name == "mutated_nonce_15" {
            assert!(o.auth_refused_by_both, "{name}: {o:?}");
        }
    }
    for (name, data) in nts_source() {
        let accepted = crate::nts_source::check(&data);
        assert!(accepted >= 1, "{name}: reaches an accepted answer");
    }
    for (name, data) in conversation() {
        assert!(crate::conversation::check(&data) >= 1, "{name}: measures");
    }
    for (name, data) in aead_siv() {
        let o = crate::aead_siv::check(&data);
        assert!(
            o.plaintext_len > 0 || name.starts_with("authenticator"),
            "{name}: {o:?}"
        );
    }
    for (name, data) in leap_list() {
        let o = crate::leap_list::check(&data);
        assert!(o.accepted, "{name}: {o:?}");
        assert_eq!(o.rehashed, name == "bad_hash", "{name}: {o:?}");
    }
    for (name, data) in drift_record() {
        assert_eq!(
            crate::drift_record::check(&data),
            name != "extra_line",
            "{name}"
        );
    }
    for (name, data) in root_secret() {
        assert_eq!(crate::root_secret::check(&data), name != "short", "{name}");
    }
    for (name, data) in saved_association() {
        assert!(crate::saved_association::check(&data), "{name}");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, seeds) in all() {
        for (name, data) in seeds {
            let path = dir.join(target).join(name);
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(committed, data, "{} is stale", path.display());
        }
    }
}

fn check_ntp_server_seed(name: &str, data: &[u8]) {
    use nts_proto::cookie::CookieError;
    use nts_proto::ntp_server::{DropReason, Response};
    let o = crate::ntp_server::check(data);
    let expect_cookies = match name {
        "nts_256_0" | "nts_512_0" => Some(1),
        "nts_256_1" | "nts_512_1" | "nts_v3" => Some(2),
        "nts_256_7" | "nts_512_7" => Some(8),
        "nts_old_key" => Some(3),
        "nts_encrypted_fields" => Some(4),
        _ => None,
    };
    if name == "nts_legacy_mac_after_auth" || name == "nts_short_nonce" {
        // Bytes after the authenticator would be unauthenticated: refused.
        assert_eq!(o.normal, Err(DropReason::MalformedNts), "{name}");
        return;
    }
    if let Some(n) = expect_cookies {
        assert_eq!(
            o.normal,
            Ok(Response::Nts {
                len: o.normal.unwrap().len(),
                cookies: n
            }),
            "{name}"
        );
        assert_eq!(o.rate_kiss, Err(DropReason::RateLimitedNts), "{name}");
        if name != "nts_encrypted_fields" {
            // Nothing encrypted: re-sealing gives back the same request.
            assert_eq!(o.resealed, Some(o.normal), "{name}");
        }
        return;
    }
    match name {
        "plain" | "plain_v3" => {
            assert_eq!(o.normal, Ok(Response::Plain(48)), "{name}");
            assert_eq!(o.rate_kiss, Ok(Response::Rate(48)), "{name}");
        }
        "bad_tag" => assert_eq!(o.normal, Err(DropReason::AuthenticationFailed)),
        "wrong_key_id" => assert!(
            matches!(
                o.normal,
                Ok(Response::Nak {
                    why: CookieError::Key(_),
                    ..
                })
            ),
            "{name}: {o:?}"
        ),
        "forged_cookie" => assert!(
            matches!(
                o.normal,
                Ok(Response::Nak {
                    why: CookieError::Authentication,
                    ..
                })
            ),
            "{name}: {o:?}"
        ),
        other => panic!("no expectation for ntp_server seed {other}"),
    }
}

fn check_ntp_client_seed(name: &str, data: &[u8]) {
    use nts_proto::ntp_client::ResponseCheckError as E;
    let o = crate::ntp_client::check(data);
    let cookies = |r: &Result<nts_proto::ntp_client::CheckedResponse, E>| {
        r.as_ref().map(|c| c.cookies.len()).ok()
    };
    match name {
        "nts_256_0" => assert_eq!(cookies(&o.aes256), Some(1), "{name}: {o:?}"),
        "nts_256_7" => assert_eq!(cookies(&o.aes256), Some(8), "{name}: {o:?}"),
        "nts_512_1" => assert_eq!(cookies(&o.aes512), Some(2), "{name}: {o:?}"),
        "nak" => assert_eq!(o.aes256, Err(E::NtsNak), "{name}"),
        "rate_nts" | "rate_plain" => {
            assert_eq!(o.plain, Err(E::Kiss(kiss::RATE)), "{name}")
        }
        "plain" => assert!(o.plain.as_ref().is_ok_and(|c| !c.authenticated), "{name}"),
        "authenticated_deny" => assert_eq!(o.aes256, Err(E::Kiss(kiss::DENY)), "{name}"),
        other => panic!("no expectation for ntp_client seed {other}"),
    }
    if name.starts_with("nts_") {
        assert!(o.authenticated() && o.plain.is_ok(), "{name}: {o:?}");
    }
}

/// Replay the corpus the fuzzer has grown, if any (crash artifacts are replayed
/// with `cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-...`).
#[test]
fn replay_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in all() {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in dir.flatten() {
            let data = std::fs::read(entry.path()).unwrap_or_default();
            crate::run(target, &data);
        }
    }
}
