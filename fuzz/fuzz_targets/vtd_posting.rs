//! cargo-fuzz target `vtd_posting`: see [`irvmm_fuzz::vtd_posting`] for the input format and
//! the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::vtd_posting::run(data));
