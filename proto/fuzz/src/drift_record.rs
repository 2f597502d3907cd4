//! `drift_record`: `DriftRecord::parse` over any text (the client's drift
//! file). An accepted record is in range (frequency within ±500 ppm,
//! uncertainty 0 to 500 ppm, both finite); its text form (`to_text`) parses
//! back to a record within the printed precision, and that one's text is the
//! same text (the file does not drift from write to write).

use nts_proto::clock::drift::DriftRecord;

/// Whether the input was accepted.
pub fn check(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(r) = DriftRecord::parse(text) else {
        return false;
    };
    assert!(
        r.frequency_ppm.is_finite() && r.frequency_ppm.abs() <= 500.0,
        "{r:?}"
    );
    assert!(r.uncertainty_ppm.is_finite(), "{r:?}");
    assert!((0.0..=500.0).contains(&r.uncertainty_ppm), "{r:?}");
    let written = r.to_text();
    let back = DriftRecord::parse(&written)
        .unwrap_or_else(|e| panic!("{r:?} written as {written:?} is refused: {e}"));
    assert!(
        (back.frequency_ppm - r.frequency_ppm).abs() < 1e-6,
        "{r:?} -> {back:?}"
    );
    assert!(
        (back.uncertainty_ppm - r.uncertainty_ppm).abs() < 1e-6,
        "{r:?} -> {back:?}"
    );
    assert_eq!(back.written_unix, r.written_unix);
    assert_eq!(back.to_text(), written, "text changes from write to write");
    true
}
