//! cargo-fuzz target `amd_mmio`: see [`irvmm_fuzz::amd_mmio`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::amd_mmio::run(data));
