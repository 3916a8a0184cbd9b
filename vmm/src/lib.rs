//! irvmm's VM lifecycle: KVM VM and vCPUs, guest memory, boot, ACPI, interrupt routes,
//! buses and device wiring.

pub mod acpi;
