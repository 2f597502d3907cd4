use super::*;

/// The data lines, update, expiry and hash of the IERS list of
/// 2025-01-08 (as shipped in Debian's tzdata 2025b), comments left out.
const LIST: &str = "#$\t3960835200
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

#[test]
fn parses_and_verifies_the_real_list() {
    let l = LeapSecondsList::parse(LIST).unwrap();
    assert_eq!(l.entries.len(), 28);
    assert_eq!(l.updated_ntp, 3_960_835_200);
    assert_eq!(format_unix(l.expires_unix()), "2026-06-28 00:00:00 UTC");
    // 2016-12-31 23:59:60 was the last leap.
    let midnight_2017 = 3_692_217_600 - NTP_UNIX_OFFSET;
    assert_eq!(format_unix(midnight_2017), "2017-01-01 00:00:00 UTC");
    assert_eq!(l.leap_at(midnight_2017), LeapStatus::Insert);
    assert_eq!(l.leap_at(midnight_2017 - 86_400), LeapStatus::None);
    assert_eq!(l.tai_utc_at(midnight_2017 - 1), Some(36));
    assert_eq!(l.tai_utc_at(midnight_2017), Some(37));
    assert_eq!(l.tai_utc_at(0), None);
    assert!(l.is_valid_at(1.7e9));
    assert!(!l.is_valid_at(l.expires_unix() as f64));
}

#[test]
fn a_tampered_list_is_refused() {
    let e = LeapSecondsList::parse(&LIST.replace("3692217600\t37", "3692217600\t36"));
    assert!(
        matches!(e, Err(LeapListError::BadStep { line: 30, step: 0 })),
        "{e:?}"
    );
    let e = LeapSecondsList::parse(&LIST.replace("#@\t3991593600", "#@\t3991593601"));
    assert!(
        matches!(e, Err(LeapListError::HashMismatch { .. })),
        "{e:?}"
    );
    // Leading zeros of a hash group may be dropped (NIST did).
    let text = "#$ 1\n#@ 2\n100 10\n#h 1 2 3 4 5\n";
    let e = LeapSecondsList::parse(text).unwrap_err();
    assert!(
        e.to_string().contains("00000001000000020000000300000004"),
        "{e}"
    );
    for (text, want) in [
        ("#@ 2\n#h 1 2 3 4 5\n100 10\n", "no #$"),
        ("#$ 1\n#h 1 2 3 4 5\n100 10\n", "no #@"),
        ("#$ 1\n#@ 2\n100 10\n", "no #h"),
        ("#$ 1\n#@ 2\n#h 1 2 3 4 5\n", "no leap entries"),
        ("#$ x\n", "line 1"),
        ("#$ 1\n#@ 2\n100\n", "line 3"),
        ("#$ 1\n#@ 2\n100 -1\n", "line 3"),
        ("#$ 1\n#@ 2\n100 10\n90 11\n", "increasing"),
        ("#$ 1\n#@ 2\n#h 1 2 3 4\n", "five groups"),
        ("#$ 1\n#@ 2\n#h 1 2 3 4 zz\n", "five groups"),
        ("#$ 1\n#$ 2\n", "twice"),
    ] {
        let e = LeapSecondsList::parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn the_majority_of_selected_sources_decides() {
    use LeapIndicator::*;
    assert_eq!(vote(&[]), LeapStatus::None);
    assert_eq!(vote(&[InsertSecond]), LeapStatus::Insert);
    assert_eq!(vote(&[InsertSecond, NoWarning]), LeapStatus::None);
    assert_eq!(
        vote(&[InsertSecond, InsertSecond, NoWarning]),
        LeapStatus::Insert
    );
    assert_eq!(
        vote(&[DeleteSecond, DeleteSecond, DeleteSecond, InsertSecond]),
        LeapStatus::Delete
    );
    assert_eq!(
        vote(&[InsertSecond, Unsynchronized, Unsynchronized]),
        LeapStatus::None
    );
}

#[test]
fn the_flag_is_up_only_on_the_last_day_of_a_month() {
    // 2026-12-31 00:00:00 UTC and the midnight after it.
    let dec31 = 1_798_675_200;
    let jan1 = dec31 + 86_400;
    assert_eq!(format_unix(jan1), "2027-01-01 00:00:00 UTC");
    let d = |t: f64, armed| decide(t, None, LeapStatus::Insert, armed);
    assert_eq!(d(dec31 as f64 - 1.0, false).status, LeapStatus::None);
    let mid_month = d((dec31 - 10 * 86_400) as f64, false);
    assert_eq!(mid_month.status, LeapStatus::None);
    assert_eq!(mid_month.announced, LeapStatus::Insert);
    assert_eq!(mid_month.at_unix, Some(jan1));
    let on = d(dec31 as f64 + 3.0, false);
    assert_eq!(on.status, LeapStatus::Insert);
    assert_eq!(on.source, LeapSource::Sources);
    // Not newly set in the last seconds; kept if already set.
    assert_eq!(d(jan1 as f64 - 5.0, false).status, LeapStatus::None);
    assert_eq!(d(jan1 as f64 - 5.0, true).status, LeapStatus::Insert);
    assert_eq!(d(jan1 as f64 + 1.0, true).status, LeapStatus::Insert);
    assert_eq!(d(jan1 as f64 + 2.5, true).status, LeapStatus::None);
    // June 30 too, and any month end; not other days.
    let jun30 = 1_782_777_600;
    assert_eq!(format_unix(jun30), "2026-06-30 00:00:00 UTC");
    assert_eq!(d(jun30 as f64 + 100.0, false).status, LeapStatus::Insert);
    assert_eq!(d(jun30 as f64 - 86_300.0, false).status, LeapStatus::None);
    let feb28 = 1_772_236_800;
    assert_eq!(format_unix(feb28), "2026-02-28 00:00:00 UTC");
    assert_eq!(
        decide(feb28 as f64 + 100.0, None, LeapStatus::Delete, false).status,
        LeapStatus::Delete
    );
    assert_eq!(arm_time(jan1), dec31);
}

#[test]
fn a_valid_list_overrides_the_sources() {
    let l = LeapSecondsList::parse(LIST).unwrap();
    // 2016-12-31: the list says insert, whatever the sources say.
    let dec31_2016 = 3_692_217_600 - NTP_UNIX_OFFSET - 86_400;
    let r = decide(dec31_2016 as f64 + 60.0, Some(&l), LeapStatus::None, false);
    assert_eq!((r.status, r.source), (LeapStatus::Insert, LeapSource::List));
    // 2025-12-31 (within the list's validity): no leap, though the
    // sources say so.
    let dec31_2025 = 1_767_139_200;
    assert_eq!(format_unix(dec31_2025), "2025-12-31 00:00:00 UTC");
    let r = decide(
        dec31_2025 as f64 + 60.0,
        Some(&l),
        LeapStatus::Insert,
        false,
    );
    assert_eq!(r, LeapDecision::default());
    // 2026-12-31: the list has expired, the sources decide.
    let r = decide(1_798_675_260.0, Some(&l), LeapStatus::Insert, false);
    assert_eq!(
        (r.status, r.source),
        (LeapStatus::Insert, LeapSource::Sources)
    );
}

#[test]
fn dates_for_people() {
    assert_eq!(
        format_leap_second(1_798_761_600, LeapStatus::Insert),
        "2026-12-31 23:59:60 UTC"
    );
    assert_eq!(
        format_leap_second(1_798_761_600, LeapStatus::Delete),
        "2026-12-31 23:59:59 UTC"
    );
    assert_eq!(
        format_unix_f64(1_798_761_599.25),
        "2026-12-31 23:59:59.250 UTC"
    );
    let ts = NtpTimestamp::from_unix(1_798_761_600, 500_000_000);
    assert_eq!(format_ntp(ts, 1_750_000_000), "2027-01-01 00:00:00.500 UTC");
    assert!(format_unix(i64::MAX).contains("out of range"));
    assert_eq!(format_unix_f64(f64::NAN), "NaN");
}

/// A time past i64 seconds (with a hash that matches, so the list would
/// be accepted) is refused: `expires_unix` and the queries do signed
/// arithmetic on it, which overflowed (found by the leap_list fuzz target).
#[test]
fn times_beyond_i64_seconds_are_refused() {
    for (updated, expires, entry) in [
        ("1", "9223372036854775808", "100"),
        ("1", "2", "18446744073709551615"),
    ] {
        let mut h = Sha1::new();
        h.update(format!("{updated}{expires}{entry}10").as_bytes());
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let groups: Vec<&str> = (0..5).map(|i| &hex[i * 8..i * 8 + 8]).collect();
        let text = format!(
            "#$ {updated}\n#@ {expires}\n{entry} 10\n#h {}\n",
            groups.join(" ")
        );
        let e = LeapSecondsList::parse(&text);
        assert!(
            matches!(e, Err(LeapListError::BadLine { .. })),
            "{text}: {e:?}"
        );
    }
}
