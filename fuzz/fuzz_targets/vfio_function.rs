//! cargo-fuzz target `vfio_function`: see [`irvmm_fuzz::vfio_function`] for the input format
//! and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::vfio_function::run(data));
