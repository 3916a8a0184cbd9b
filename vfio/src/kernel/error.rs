//! Why a host device could not be opened for passthrough, as one line the user can act on.
//!
//! The VMM prints the Display text after `--device vfio,path=...:` and exits 2, so every
//! variant says what is wrong and what to do about it, naming the device, the IOMMU group,
//! the file or the module parameter involved.

use thiserror::Error;

/// A host device that cannot be passed through yet, and what to do about it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelOpenError {
    /// The path given does not exist.
    #[error(
        "{path} does not exist: give the sysfs path of a PCI function, e.g. \
         /sys/bus/pci/devices/0000:01:00.0 (`lspci -D` lists the addresses)"
    )]
    NotFound {
        /// The path as given.
        path: String,
    },
    /// The path exists but is not a PCI function.
    #[error(
        "{path} is not a PCI device: give the sysfs path of a PCI function, e.g. \
         /sys/bus/pci/devices/0000:01:00.0"
    )]
    NotPci {
        /// The path as given.
        path: String,
    },
    /// The device is bound to another driver, or to none.
    #[error("{bdf} is {bound}, not to vfio-pci; bind it with: {how}")]
    NotBound {
        /// The device.
        bdf: String,
        /// "bound to e1000e" or "bound to no driver".
        bound: String,
        /// The shell commands that bind it to vfio-pci.
        how: String,
    },
    /// The device has no IOMMU group: the host runs without an IOMMU.
    #[error(
        "{bdf} has no IOMMU group, so the host runs without an IOMMU: enable VT-d or AMD-Vi \
         in the firmware and boot the host with intel_iommu=on on Intel (AMD's IOMMU is on \
         unless amd_iommu=off or iommu=off is given)"
    )]
    NoIommuGroup {
        /// The device.
        bdf: String,
    },
    /// Other devices of the group are bound to host drivers.
    #[error(
        "IOMMU group {group} of {bdf} is not viable: {blockers} must also be bound to vfio-pci \
         (or unbound from their drivers), because a group goes to one owner as a whole; \
         `ls /sys/kernel/iommu_groups/{group}/devices` lists it"
    )]
    GroupNotViable {
        /// The group.
        group: u32,
        /// The device asked for.
        bdf: String,
        /// The other devices and their drivers.
        blockers: String,
    },
    /// A VFIO device node is missing.
    #[error(
        "{path} does not exist: load the VFIO modules (modprobe vfio-pci vfio_iommu_type1) \
         and bind the device to vfio-pci"
    )]
    NodeMissing {
        /// The node.
        path: String,
    },
    /// A VFIO device node exists but this user may not open it read-write.
    #[error(
        "{path} is not accessible read-write to this user (uid {uid}): run as root, or give \
         the user the node (e.g. a udev rule or chown for /dev/vfio/*) and a locked-memory \
         limit covering guest RAM (ulimit -l)"
    )]
    NoAccess {
        /// The node.
        path: String,
        /// The effective user id.
        uid: u32,
    },
    /// Another process holds the group.
    #[error(
        "IOMMU group {group} of {bdf} is in use by another process (another VM?): stop it, \
         or pass through another device"
    )]
    GroupBusy {
        /// The group.
        group: u32,
        /// The device.
        bdf: String,
    },
    /// The device itself is already open (in this or another process).
    #[error("{bdf} is already open (given twice, or used by another process): pass it once")]
    DeviceBusy {
        /// The device.
        bdf: String,
    },
    /// `vfio_iommu_type1` refused the group because the host does not isolate MSIs.
    #[error(
        "the host refused to attach IOMMU group {group} of {bdf} because it cannot isolate \
         the device's MSIs (no interrupt remapping): enable interrupt remapping (VT-d/AMD-Vi \
         with IR, no intremap=off), or accept a device that can forge interrupts by setting \
         the vfio_iommu_type1 module parameter allow_unsafe_interrupts=1 \
         (echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts)"
    )]
    UnsafeInterrupts {
        /// The group.
        group: u32,
        /// The device.
        bdf: String,
    },
    /// The host refused the group for another reason.
    #[error(
        "the host refused to attach IOMMU group {group} of {bdf} to the VM's VFIO container \
         ({detail}); the kernel log (dmesg) says why"
    )]
    AttachRefused {
        /// The group.
        group: u32,
        /// The device.
        bdf: String,
        /// The error as far as it is known.
        detail: String,
    },
    /// Anything else the host answered; not expected on a working VFIO host.
    #[error("{bdf}: {op} failed: {detail}")]
    Host {
        /// The device (or "VFIO" before one is known).
        bdf: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        detail: String,
    },
}
