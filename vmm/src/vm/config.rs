//! What a VM is built from: [`VmConfig`] and the choices it names.

use std::path::PathBuf;
use std::time::Duration;

use crate::cpuid::FeatureOverride;
use crate::topology::Topology;

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// Standard output (and standard input as the guest's keyboard).
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (the UART still exists).
    Off,
}

/// The local APIC mode vCPUs start in, as firmware would leave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// x2APIC when any APIC ID is 255 or above (a guest parsing the MADT in xAPIC mode
    /// ignores such CPUs), xAPIC otherwise.
    Auto,
    /// xAPIC (only APIC IDs below 255 are usable).
    XApic,
    /// x2APIC ("enabled by BIOS").
    X2Apic,
}

/// The guest-visible IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuKind {
    /// None.
    None,
    /// Intel VT-d with interrupt remapping (x2APIC mode capable).
    Intel,
    /// AMD-Vi with interrupt remapping (x2APIC mode and guest virtual APIC capable), no DMA
    /// translation.
    Amd,
}

/// Emulated PCI devices the user can add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciDeviceKind {
    /// The `edu` test device (QEMU's public spec): MSI.
    Edu,
    /// irvmm's MSI-X variant of `edu` with 256 vectors.
    EduMsix,
}

/// A PCI device on bus 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// An emulated device.
    Emulated(PciDeviceKind),
    /// A passed-through device.
    Passthrough(crate::passthrough::PassthroughConfig),
}

/// Everything needed to start a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image (PVH ELF or bzImage).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU topology.
    pub topology: Topology,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// COM1 backend.
    pub serial: SerialMode,
    /// `--cpu-features` overrides.
    pub cpu_features: Vec<FeatureOverride>,
    /// Offer the paravirtual extended destination ID.
    pub ext_dest_id: bool,
    /// The KVM device node (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Local APIC mode at start-up.
    pub apic_mode: ApicMode,
    /// The guest-visible IOMMU.
    pub iommu: IommuKind,
    /// PCI devices, placed on bus 0 in order (device 1, 2, ...).
    pub devices: Vec<DeviceConfig>,
    /// virtio-blk disks (`--disk`), placed after the devices.
    pub disks: Vec<virtio::DiskConfig>,
    /// virtio-net devices on taps (`--net`), placed after the disks.
    pub nets: Vec<virtio::NetConfig>,
    /// The virtio console (`--console`).
    pub console: crate::virtio::ConsoleMode,
    /// A virtio-rng device (`--rng`).
    pub rng: bool,
    /// The guest's pvpanic devices.
    pub pvpanic: PvPanicConfig,
    /// What a guest reset does.
    pub on_reset: ResetAction,
    /// Stop the VM (status [`crate::VmOutcome::Timeout`]) once this much time has passed
    /// since it started (restarts included).
    pub timeout: Option<Duration>,
    /// KVM's halt-polling limit for this VM in nanoseconds (`KVM_CAP_HALT_POLL`); `None`
    /// keeps the host's default (the `halt_poll_ns` module parameter).
    pub halt_poll_ns: Option<u32>,
}

/// What a guest-initiated reset does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetAction {
    /// The VMM exits with the reset status.
    #[default]
    Exit,
    /// The guest starts again from scratch: the VM is torn down and built anew.
    Restart,
}

/// Which pvpanic devices the guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvPanicConfig {
    /// QEMU's ISA device at I/O port 0x505, described in the DSDT as `QEMU0001`.
    pub isa: bool,
    /// QEMU's PCI function 1b36:0011 on bus 0 (after the `--device` list, before the virtio
    /// devices).
    pub pci: bool,
}

impl Default for PvPanicConfig {
    /// The ISA device only (what `-device pvpanic` gives a QEMU x86 guest); the PCI function
    /// would move the `--device` numbering if it came first, so it is opt-in.
    fn default() -> Self {
        PvPanicConfig {
            isa: true,
            pci: false,
        }
    }
}
