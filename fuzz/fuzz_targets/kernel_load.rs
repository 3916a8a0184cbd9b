//! cargo-fuzz target `kernel_load`: see [`irvmm_fuzz::kernel_load`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::kernel_load::run(data));
