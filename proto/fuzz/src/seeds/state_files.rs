//! Seeds for the targets over the client's state files: the leap-seconds
//! list, the drift record, the saved association and the cookie root secret.

use super::Seed;
use crate::{c2s_key, s2c_key};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::clock::drift::DriftRecord;
use nts_proto::clock::leap::LeapSecondsList;
use nts_proto::key_ring::RootSecret;
use nts_proto::source::nts::Association;
use nts_proto::source::SavedAssociation;

/// The IERS list of 2025-01-08 as Debian's tzdata 2025b ships it, most
/// comments left out.
const IERS_LIST: &str = "#\tLeap second list, from the IERS
#$\t3960835200
#@\t3991593600
2272060800\t10\t# 1 Jan 1972
2287785600\t11
2303683200\t12
2335219200\t13
2366755200\t14
2398291200\t15
2429913600\t16
2461449600\t17
2492985600\t18
2524521600\t19
2571782400\t20
2603318400\t21
2634854400\t22
2698012800\t23
2776982400\t24
2840140800\t25
2871676800\t26
2918937600\t27
2950473600\t28
2982009600\t29
3029443200\t30
3076704000\t31
3124137600\t32
3345062400\t33
3439756800\t34
3550089600\t35
3644697600\t36
3692217600\t37\t# 1 Jan 2017
#
#h\t49db2447 571e5e1b 2f002a53 9c8da8e4 39b8e49e

";

pub fn leap_list() -> Vec<Seed> {
    let list = LeapSecondsList::parse(IERS_LIST).expect("the IERS list parses");
    let mut short = list.clone();
    short.entries.truncate(3);
    let mut negative = list.clone();
    negative.entries.truncate(2);
    negative.entries[1].tai_utc = negative.entries[0].tai_utc - 1;
    vec![
        ("iers_2025", IERS_LIST.as_bytes().to_vec()),
        ("canonical", crate::leap_list::canonical(&list).into_bytes()),
        ("short", crate::leap_list::canonical(&short).into_bytes()),
        (
            "negative_leap",
            crate::leap_list::canonical(&negative).into_bytes(),
        ),
        // Accepted syntax, wrong hash.
        ("bad_hash", b"#$ 1\n#@ 2\n100 10\n#h 1 2 3 4 5\n".to_vec()),
    ]
}

pub fn drift_record() -> Vec<Seed> {
    let r = DriftRecord {
        frequency_ppm: -12.345678,
        uncertainty_ppm: 0.25,
        written_unix: Some(1_700_000_000),
    };
    let two = DriftRecord {
        frequency_ppm: 499.5,
        uncertainty_ppm: 0.0,
        written_unix: None,
    };
    vec![
        ("written", r.to_text().into_bytes()),
        ("two_fields", two.to_text().into_bytes()),
        (
            "comments",
            b"# chrony-like\n\n  3.5 0.1  # trailing\n".to_vec(),
        ),
        ("extra_line", b"1 0.1\n2 0.1\n".to_vec()),
    ]
}

fn association(aead: AeadAlgorithm, cookies: u8) -> SavedAssociation {
    SavedAssociation {
        association: Association {
            aead,
            c2s: c2s_key(aead),
            s2c: s2c_key(aead),
            ntp_host: "time.example.net".into(),
            ntp_port: 123,
            established: nts_proto::time::UnixTime::from_secs(1_700_000_000),
        },
        cookies: (0..cookies).map(|i| vec![i; 100]).collect(),
    }
}

pub fn saved_association() -> Vec<Seed> {
    let mut v6 = association(AeadAlgorithm::AesSivCmac256, 1);
    v6.association.ntp_host = "2001:db8::123".into();
    v6.association.ntp_port = 4123;
    vec![
        (
            "aes256_8",
            association(AeadAlgorithm::AesSivCmac256, 8)
                .to_text()
                .into_bytes(),
        ),
        (
            "aes512_2",
            association(AeadAlgorithm::AesSivCmac512, 2)
                .to_text()
                .into_bytes(),
        ),
        (
            "no_cookies",
            association(AeadAlgorithm::AesSivCmac256, 0)
                .to_text()
                .into_bytes(),
        ),
        ("ipv6_port", v6.to_text().into_bytes()),
    ]
}

pub fn root_secret() -> Vec<Seed> {
    let secret = RootSecret::from_bytes(&[0xa5; 32]).expect("32 bytes");
    vec![
        ("written", secret.to_file_text().into_bytes()),
        (
            "upper_spaced",
            format!("  {}\r\n", "AB".repeat(32)).into_bytes(),
        ),
        ("short", b"abcd\n".to_vec()),
    ]
}
