//! cargo-fuzz target `virtio_queue`: see [`irvmm_fuzz::virtio_queue`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::virtio_queue::run(data));
