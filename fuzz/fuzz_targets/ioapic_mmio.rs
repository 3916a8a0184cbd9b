//! cargo-fuzz target `ioapic_mmio`: see [`irvmm_fuzz::ioapic_mmio`] for the input format and the
//! invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| irvmm_fuzz::ioapic_mmio::run(data));
