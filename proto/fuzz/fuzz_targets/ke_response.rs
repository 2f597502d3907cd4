#![no_main]
//! See `nts_proto_fuzz::ke_response` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nts_proto_fuzz::run("ke_response", data);
});
