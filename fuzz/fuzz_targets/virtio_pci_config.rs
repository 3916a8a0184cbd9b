//! cargo-fuzz target `virtio_pci_config`: see [`irvmm_fuzz::virtio_pci_config`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::virtio_pci_config::run(data));
