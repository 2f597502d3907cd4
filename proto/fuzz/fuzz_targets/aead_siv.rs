#![no_main]
//! See `nts_proto_fuzz::aead_siv` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nts_proto_fuzz::run("aead_siv", data);
});
