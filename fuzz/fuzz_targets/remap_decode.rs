//! cargo-fuzz target `remap_decode`: see [`irvmm_fuzz::remap_decode`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::remap_decode::run(data));
