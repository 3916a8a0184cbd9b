//! irvmm's VM lifecycle: KVM VM and vCPUs, guest memory, boot, ACPI, interrupt routes,
//! buses and device wiring.
//!
//! The entry point is [`run`]: it checks a [`VmConfig`], builds the [`Vm`] and runs it until
//! the guest stops (again after each reset with `--on-reset restart`), returning a
//! [`VmOutcome`].

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod console;
pub mod cpuid;
pub mod interrupt;
pub mod iommu;
pub mod layout;
pub mod memory;
pub mod passthrough;
pub mod platform;
pub mod topology;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use topology::{Topology, TopologyError};

/// The `--disk` configuration (from the virtio crate).
pub use ::virtio::block as virtio_disk;
/// The `--net` configuration (from the virtio crate).
pub use ::virtio::net as virtio_net;
pub use virtio::ConsoleMode;
pub use vm::{
    run, ApicMode, DeviceConfig, Error, IommuKind, PciDeviceKind, PvPanicConfig, ResetAction,
    SerialMode, Vm, VmConfig, VmOutcome,
};
