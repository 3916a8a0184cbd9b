//! cargo-fuzz target `vfio_user_client`: see [`irvmm_fuzz::vfio_user_client`] for the input format
//! and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::vfio_user_client::run(data));
