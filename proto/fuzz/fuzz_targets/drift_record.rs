#![no_main]
//! See `nts_proto_fuzz::drift_record` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nts_proto_fuzz::run("drift_record", data);
});
