//! cargo-fuzz target `vtd_dma`: see [`irvmm_fuzz::vtd_dma`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::vtd_dma::run(data));
