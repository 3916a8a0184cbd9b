//! cargo-fuzz target `vtd_mmio`: see [`irvmm_fuzz::vtd_mmio`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::vtd_mmio::run(data));
