#![no_main]
//! See `nts_proto_fuzz::conversation` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nts_proto_fuzz::run("conversation", data);
});
